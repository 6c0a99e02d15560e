"""A 12-trial Optuna study on an SST-2 subset, with and without pruning, against the default
config: best validation accuracy, test accuracy with its 95% bootstrap interval, total time.

    .venv/bin/python benchmarks/tune_sst2.py

Runs three commands in turn (each a fresh process): the default config (`tunesmith train`), the
study with the median pruner and the same study without pruning (`tunesmith tune`). Writes
benchmarks/out/tune_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "benchmarks" / "sst2_tune.yaml"
CLI = [sys.executable, "-m", "tunesmith.cli"]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def test_scores(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    ci = metrics["test"]["confidence_intervals"]["accuracy"]
    return {"validation_accuracy": metrics["validation"]["accuracy"], "test_accuracy": metrics["test"]["accuracy"],
            "test_accuracy_ci95": [ci["low"], ci["high"]], "run": str(run.relative_to(ROOT))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "tune_sst2")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    result = {"config": str(CONFIG.relative_to(ROOT))}
    seconds = timed([*CLI, "train", str(CONFIG), "--set", f"runtime.output_dir={args.out / 'default'}"])
    result["default"] = {**test_scores(args.out / "default"), "seconds": seconds}
    for name, pruner in (("pruned", "median"), ("unpruned", "none")):
        directory = args.out / name
        seconds = timed([*CLI, "tune", str(CONFIG), "--out", str(directory), "--set", f"tune.pruner={pruner}"])
        study = json.loads((directory / "study.json").read_text())
        best = Path(study["best"]["run"])
        result[name] = {"seconds": seconds, "complete": study["complete"], "pruned": study["pruned"],
                        "best_trial": study["best"]["number"], "best_params": study["best"]["params"],
                        **test_scores(best)}  # fmt: skip
    result["time_pruned_over_unpruned"] = result["pruned"]["seconds"] / result["unpruned"]["seconds"]
    (ROOT / "benchmarks" / "out" / "tune_sst2.json").write_text(json.dumps(result, indent=2))
    print("| setup | trials (complete / pruned) | wall time | best val acc | its test acc (95% CI) |")
    print("|---|---|---|---|---|")
    for name in ("default", "pruned", "unpruned"):
        r = result[name]
        trials = "1" if name == "default" else f"{r['complete']} / {r['pruned']}"
        low, high = r["test_accuracy_ci95"]
        print(f"| {name} | {trials} | {r['seconds']:.0f} s | {r['validation_accuracy']:.4f} | "
              f"{r['test_accuracy']:.4f} ({low:.4f}-{high:.4f}) |")  # fmt: skip
    print(f"pruned / unpruned wall time: {result['time_pruned_over_unpruned']:.2f}")


if __name__ == "__main__":
    main()
