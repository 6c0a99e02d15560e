"""``tunesmith retrain``: continue a deployed run on new labelled data, mixed with its old
training data, and judge the result on the old and the new test data.

The new data is cleaned like the original and split into train, validation and test (the
run's fractions). Training starts from the deployed model (``RUN_DIR/model``) on the new
training rows plus a seeded sample of the old ones, so that ``old`` is their share of the mix.
The result is a new run directory next to the old one (``RUN_DIR-v2``, ``-v3``, ...). Both the
deployed and the retrained model are then scored on the old test split and on the new one
(``retrain.json`` in the new run), and the report says whether the new model is better on the
new data and what it costs on the old.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from tunesmith.config import Config, config_from_dict, load_config
from tunesmith.data.prepare import load_examples
from tunesmith.data.split import split_frame
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, claim_output
from tunesmith.tasks import build_task, require_stage


def next_version(run: Path) -> Path:
    """``name-vN`` beside ``run`` with the first N (from 2) that does not exist yet, nor its
    ``name-vN-data`` folder."""
    stem = re.sub(r"-v\d+$", "", run.name)
    version = 2
    while (run.parent / f"{stem}-v{version}").exists() or (run.parent / f"{stem}-v{version}-data").exists():
        version += 1
    return run.parent / f"{stem}-v{version}"


def retrain(run_dir: str | Path, data: str | Path, *, train: Callable, evaluate: Callable, old_share: float = 0.5,
            out: str | Path | None = None, console=None) -> dict[str, Any]:  # fmt: skip
    """Trains the new run and writes ``retrain.json`` in it; returns that report.

    Args:
        train: the function that trains the new run (``tunesmith.api.train``).
        evaluate: the function that scores a run on a labelled file (``tunesmith.api.evaluate``).
    """
    if not 0 <= old_share < 1:
        raise TunesmithError(f"--mix old={old_share}: the old share must be at least 0 and below 1")
    run = RunDir.open(run_dir)
    target = claim_output(out if out is not None else next_version(run.path), kind="dir", what="--out", run=True)
    staging = claim_output(target.with_name(f"{target.name}-data"), kind="dir", what="--out",
                           note="retrain writes the new run's data files there")  # fmt: skip
    if not (run.path / "metrics.json").is_file():
        raise TunesmithError(f"{run.path} has not finished; retrain continues from a finished run")
    run.verify_hashes()
    config = load_config(run.path / "config.yaml")
    saved = run.read_json("task.json")
    labels, task = saved["label_names"], build_task(config, saved)
    require_stage(task, "retrain", what=str(run.path))
    new, entry = load_examples(str(data), config.data, task)
    unknown = sorted(set(new["label"].astype(str)) - set(labels))
    if unknown:
        raise TunesmithError(f"{entry['source']}: labels {unknown[:5]} are not labels of the deployed model ({labels})")
    seed = config.runtime.seed
    splits = split_frame(new[["text", "label"]], val_fraction=config.data.val_fraction or 0.1,
                         test_fraction=config.data.test_fraction or 0.2, seed=seed, stratify=task.stratify)  # fmt: skip
    old_train = pd.read_parquet(run.data_dir / "train.parquet")[["text", "label"]]
    mixed, mixed_old = _mix(splits["train"], old_train, old_share, seed=seed, labels=labels)
    files = _write_data(staging, mixed, splits)
    try:
        result = train(config_from_dict(_new_config(config, run, files, target), f"retrain of {run.path}"),
                       console=console)  # fmt: skip
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # only its own files: the same command can run again
        raise
    metric = config.train.metric or task.default_metric[0]
    scores = _scores(evaluate, {"deployed": run.path, "retrained": result.run_dir},
                     {"old_test": run.data_dir / "test.parquet", "new_test": files["test"]}, metric)  # fmt: skip
    new_gain = scores["retrained"]["new_test"][metric] - scores["deployed"]["new_test"][metric]
    report = {
        "deployed": str(run.path), "retrained": str(result.run_dir), "new_data": entry["source"], "metric": metric,
        "rows": {"new_train": len(splits["train"]), "old_train_mixed_in": len(mixed_old),
                 "new_validation": len(splits["validation"]), "new_test": len(splits["test"])},
        "old_share": old_share, "scores": scores, "better_on_new_test": bool(new_gain > 0), "gain_on_new_test": new_gain,
        "change_on_old_test": (scores["retrained"]["old_test"][metric] - scores["deployed"]["old_test"][metric])
        if "old_test" in scores["deployed"] else None,
    }  # fmt: skip
    (result.run_dir / "retrain.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _mix(new_train: pd.DataFrame, old_train: pd.DataFrame, old_share: float, *, seed: int,
         labels: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The new training rows plus a seeded sample of the old ones (``old_share`` of the mix),
    shuffled, and that sample; refuses a mix that lacks one of the model's labels."""
    wanted = round(len(new_train) * old_share / (1 - old_share))
    mixed_old = old_train.sample(n=min(wanted, len(old_train)), random_state=seed) if wanted else old_train.iloc[:0]
    mixed = pd.concat([new_train, mixed_old], ignore_index=True).sample(frac=1.0, random_state=seed)
    missing = sorted(set(labels) - set(mixed["label"].astype(str)))
    if missing:
        raise TunesmithError(
            f"the retraining mix has no rows of {missing}: add them to the new data or raise --mix old"
        )
    return mixed, mixed_old


def _write_data(staging: Path, mixed: pd.DataFrame, splits: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """Writes the new run's train (the mix), validation and test files into ``staging``; returns
    their paths by split."""
    staging.mkdir(parents=True, exist_ok=True)  # the files the new run's config.yaml names
    files = {
        "train": staging / "train.parquet",
        "validation": staging / "validation.parquet",
        "test": staging / "test.parquet",
    }
    mixed.to_parquet(files["train"], index=False)
    splits["validation"].to_parquet(files["validation"], index=False)
    splits["test"].to_parquet(files["test"], index=False)
    return files


def _new_config(config: Config, run: RunDir, files: dict[str, Path], target: Path) -> dict[str, Any]:
    """The run's config as a tree, starting from its model, reading the staged files as they are
    and writing to ``target``."""
    tree = config.model_dump(mode="json")
    tree["model"]["name"] = str(run.model_dir.resolve())
    tree["data"].update(train=str(files["train"]), validation=str(files["validation"]), test=str(files["test"]),
                        text_column="text", label_column="label", column_names=None, max_rows=None, slice_column=None)  # fmt: skip
    tree["runtime"]["output_dir"] = str(target)
    return tree


def _scores(evaluate: Callable, runs: dict[str, Path], tests: dict[str, Path], metric: str) -> dict[str, dict]:
    """Each run's ``metric``, accuracy and interval on each test file that exists, by run and test."""
    scores = {}
    for name, path in runs.items():
        scores[name] = {}
        for split, file in tests.items():
            if file.is_file():
                evaluated = evaluate(path, file, log=lambda message: None)  # both named test: test-2.json
                scores[name][split] = {metric: evaluated[metric], "accuracy": evaluated["accuracy"],
                                       "interval": evaluated.get("confidence_intervals", {}).get(metric)}  # fmt: skip
    return scores
