"""Few-shot learning curves: tunesmith's contrastive strategy against a standard full fine-tune
on the same rows, N rows per class, several seeds; SetFit's own numbers come from
benchmarks/setfit_anchor.py on the same rows and seeds.

    .venv/bin/python benchmarks/few_shot.py --dataset sst2 --shots 8 16 --seeds 0 1 2

Rows: ``--shots`` rows of every label, drawn from the train file with numpy's default_rng(seed)
(``sample_per_class``, the same draw as setfit_anchor.py); no validation split (few labels leave
none to spare); scored on the dataset's test file (SST-2: the 872 GLUE dev sentences; AG News:
7,600 rows, or a seeded --test-rows subset; SMS Spam: 1,000 seeded rows of its one file, the pool
being the rest less any text that is also a test row). Writes a JSON of every run and prints mean ± std.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SETS = {  # train file, test file, text column, label column, header
    "sst2": (DATA / "sst2" / "train.tsv", DATA / "sst2" / "test.tsv", "sentence", "label", 0),
    "agnews": (DATA / "agnews" / "dev.tsv", DATA / "agnews" / "test.tsv", 0, 1, None),
    # One file: the test rows are a seeded 1,000 (SMS_TEST_SEED), the rest is the pool to draw from.
    "sms_spam": (DATA / "sms_spam" / "SMSSpamCollection.tsv", None, "SMS", "Label", 0),
}
SMS_TEST_SEED, SMS_TEST_ROWS = 1234, 1000
METHODS = {
    # SetFit's defaults: one pass over 20 iterations of pairs, batch 16, rate 2e-5 (unset: the strategy's own).
    "contrastive": {"model": {"strategy": "contrastive"}, "train": {"batch_size": 16}},
    # A standard fine-tune: tunesmith's defaults (rate 1e-4, batch 16), with passes enough for a few rows.
    "full": {"model": {"strategy": "full"}, "train": {"batch_size": 16, "num_epochs": 20}},
}


def read(dataset: str, which: int) -> pd.DataFrame:
    """The pool to draw training rows from (``which`` 0) or the test rows (1)."""
    path, text, label, header = SETS[dataset][which] or SETS[dataset][0], *SETS[dataset][2:]
    frame = pd.read_csv(path, sep="\t", quoting=3, header=header)
    frame = pd.DataFrame({"text": frame[text].astype(str), "label": frame[label].astype(str)})
    if SETS[dataset][1] is not None:
        return frame
    # A single file: seeded test rows; the pool leaves out every text that also occurs in them.
    test_at = np.random.default_rng(SMS_TEST_SEED).choice(len(frame), SMS_TEST_ROWS, replace=False)
    test = frame.iloc[np.sort(test_at)].reset_index(drop=True)
    pool = frame.drop(index=test_at)
    return test if which else pool[~pool["text"].isin(set(test["text"]))].reset_index(drop=True)


def sample_per_class(frame: pd.DataFrame, label_col: str, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of every label (labels in sorted order), drawn with default_rng(seed)."""
    rng = np.random.default_rng(seed)
    parts = [group.iloc[rng.choice(len(group), size=n, replace=False)] for _, group in frame.groupby(label_col)]
    return pd.concat(parts).reset_index(drop=True)


def one_run(method: str, train: pd.DataFrame, test_path: Path, seed: int, workdir: Path) -> dict:
    from tunesmith import api
    from tunesmith.config import config_from_dict

    train_path = workdir / f"train-{method}-{seed}-{len(train)}.csv"
    train.to_csv(train_path, index=False)
    tree = {
        "data": {"train": str(train_path), "test": str(test_path), "val_fraction": 0.0},
        "model": {"max_length": 64},
        "runtime": {"output_dir": str(workdir / f"run-{method}-{seed}-{len(train)}"), "progress": False,
                    "seed": seed, "log_every_steps": 1000},
        "evaluation": {"confidence_level": 0.95},
    }  # fmt: skip
    for section, values in METHODS[method].items():
        tree.setdefault(section, {}).update(values)
    started = time.perf_counter()
    result = api.train(config_from_dict(tree), console=None)
    seconds = time.perf_counter() - started
    test = result.metrics["test"]
    interval = test["confidence_intervals"]["accuracy"]
    return {"accuracy": test["accuracy"], "low": interval["low"], "high": interval["high"],
            "macro_f1": test.get("macro_f1"), "seconds": seconds}  # fmt: skip


def write(out: Path, test_rows: int, results: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load_average": os.getloadavg(), "test_rows": test_rows, "runs": results}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SETS), default="sst2")
    parser.add_argument("--shots", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["contrastive", "full"])
    parser.add_argument(
        "--test-rows",
        type=int,
        default=None,
        help="a seeded subset of the test file (the same rows as setfit_anchor.py)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "few_shot.json")
    args = parser.parse_args()
    if not SETS[args.dataset][0].is_file():
        sys.exit(f"{SETS[args.dataset][0]} not found: this benchmark needs ../shared/data beside the repository")
    import torch

    torch.set_num_threads(args.threads)
    train_all, test = read(args.dataset, 0), read(args.dataset, 1)
    if args.test_rows:
        # The subset setfit_anchor.py scores: default_rng(1234), in file order.
        keep = np.sort(np.random.default_rng(1234).choice(len(test), args.test_rows, replace=False))
        test = test.iloc[keep].reset_index(drop=True)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        test_path = workdir / "test.csv"
        test.to_csv(test_path, index=False)
        for shots in args.shots:
            for seed in args.seeds:
                rows = sample_per_class(train_all, "label", shots, seed)
                for method in args.methods:  # alternated within each seed
                    run = one_run(method, rows, test_path, seed, workdir)
                    results.append({"dataset": args.dataset, "shots": shots, "seed": seed, "method": method, **run})
                    print(json.dumps(results[-1]), flush=True)
                    write(args.out, len(test), results)  # after every run, so a stopped run keeps what it did
    frame = pd.DataFrame(results)
    summary = frame.groupby(["shots", "method"]).agg(mean=("accuracy", "mean"), std=("accuracy", "std"),
                                                      f1=("macro_f1", "mean"), f1_std=("macro_f1", "std"),
                                                      seconds=("seconds", "mean"), runs=("seed", "count"))  # fmt: skip
    print(f"{args.dataset}, test rows {len(test)}, load average {os.getloadavg()[0]:.2f}")
    print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
