"""How fast `tunesmith --help` answers, against a bare Python start and the import of
the heavy stack it avoids loading (torch + transformers):

    .venv/bin/python benchmarks/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "tunesmith --help": [sys.executable, "-m", "tunesmith.cli", "--help"],
    "import torch, transformers": [sys.executable, "-c", "import torch, transformers.modeling_utils"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cli_startup.json")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():  # alternate to share the machine's noise
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        print(f"{name:<28} median {median:.3f}s  (min {min(seconds[name]):.3f}s)")
    ratio = medians["import torch, transformers"] / medians["tunesmith --help"]
    print(f"tunesmith --help answers {ratio:.1f}x faster than importing the stack it defers")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seconds": seconds, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
