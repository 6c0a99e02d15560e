"""Zero-shot accuracy with no labelled rows: label descriptions against texts, two ways
(embedding cosine with MiniLM, log-likelihood of the answer with SmolLM2-135M-Instruct), beside
the majority-class and uniform-random baselines.

    .venv/bin/python benchmarks/zero_shot.py --dataset sst2 --methods embedding prompt
    .venv/bin/python benchmarks/zero_shot.py --dataset agnews --methods embedding prompt --rows 1000

Each method is an ordinary ``tunesmith train`` run with ``model.strategy: zero_shot`` whose
test split is the dataset's test file (SST-2: the 872 GLUE dev sentences; AG News: 7,600 rows or
a seeded ``--rows`` subset); nothing is trained. Random: the expected accuracy of a uniform
guess, 1/K. Majority: the share of the test file's most common label.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SETS = {  # train file, test file, text column, label column, header, descriptions by label
    "sst2": (DATA / "sst2" / "train.tsv", DATA / "sst2" / "test.tsv", "sentence", "label", 0,
             {"0": "negative", "1": "positive"}),
    "agnews": (DATA / "agnews" / "dev.tsv", DATA / "agnews" / "test.tsv", 0, 1, None,
               {"World": "world politics", "Sports": "sports", "Business": "business and economy",
                "Sci/Tech": "science and technology"}),
}  # fmt: skip
"""A run needs a training split: 200 rows of the train file stand in for it (zero-shot never
reads them)."""


def read(path: Path, text, label, header) -> pd.DataFrame:
    raw = pd.read_csv(path, sep="\t", quoting=3, header=header)
    return pd.DataFrame({"text": raw[text].astype(str), "label": raw[label].astype(str)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SETS), default="sst2")
    parser.add_argument("--methods", nargs="+", choices=["embedding", "prompt"], default=["embedding", "prompt"])
    parser.add_argument("--rows", type=int, default=None, help="a seeded subset of the test file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "zero_shot.json")
    args = parser.parse_args()
    train_path, path, text, label, header, descriptions = SETS[args.dataset]
    if not path.is_file():
        sys.exit(f"{path} not found: this benchmark needs ../shared/data beside the repository")
    import torch

    from tunesmith import api
    from tunesmith.config import config_from_dict

    torch.set_num_threads(args.threads)
    frame = read(path, text, label, header)
    if args.rows:
        frame = frame.sample(n=args.rows, random_state=0)
    shares = frame["label"].value_counts(normalize=True)
    results = {"dataset": args.dataset, "rows": len(frame), "random": 1 / len(descriptions),
               "majority": float(shares.iloc[0]), "majority_label": str(shares.index[0]), "methods": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        test, train = Path(folder) / "test.csv", Path(folder) / "train.csv"
        frame.to_csv(test, index=False)
        read(train_path, text, label, header).sample(n=200, random_state=0).to_csv(train, index=False)
        for method in args.methods:
            tree = {
                "data": {"train": str(train), "test": str(test), "val_fraction": 0.0},
                "task": {"labels": descriptions},
                "model": {"strategy": "zero_shot", "zero_shot": {"method": method}, "max_length": 128},
                "evaluation": {"baseline": False},
                "runtime": {"output_dir": str(Path(folder) / method), "progress": False},
            }  # fmt: skip
            started = time.perf_counter()
            found = api.train(config_from_dict(tree)).metrics["test"]
            interval = found["confidence_intervals"]["accuracy"]
            results["methods"][method] = {"accuracy": found["accuracy"], "low": interval["low"],
                                          "high": interval["high"], "macro_f1": found["macro_f1"],
                                          "seconds": time.perf_counter() - started}  # fmt: skip
            print(json.dumps({method: results["methods"][method]}), flush=True)
    results["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"{args.dataset}: {len(frame)} test rows, random {results['random']:.4f}, majority {results['majority']:.4f}, "
          f"load average {results['load_average'][0]:.2f}")  # fmt: skip
    for method, found in results["methods"].items():
        print(f"  {method}: accuracy {found['accuracy']:.4f} [{found['low']:.4f}, {found['high']:.4f}], "
              f"macro F1 {found['macro_f1']:.4f}, {found['seconds']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
