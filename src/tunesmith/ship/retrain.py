"""``tunesmith retrain``: continue a deployed run on new labelled data, mixed with its old
training data, and judge the result on the old and the new test data. It works for every task
kind and asks the task, through its contract (tasks/contract.py), for each step:

1. ``read``: the new file, with the run's own data settings (the same format and columns as
   training: CoNLL or JSONL sentences, SQuAD JSON or JSONL questions, instruction records, ...).
2. Split into train, validation and test with the run's fractions and the task's split rules:
   stratified by label where the task stratifies, whole groups at a time where it has groups
   (``groups``: the questions on one context, the sentences of one document).
3. Mix the new training rows with a seeded sample of the run's old ones (its ``data/train.parquet``)
   so that ``old`` is their share. ``fit`` checks that the deployed model's label space stays:
   a new label or tag is refused (before the split: the deployed head has no output for it),
   and so is a mix without rows of a label the model knows.
4. ``write_records``: the mix, the new validation and test rows, and the run's old test rows, in
   files the task's data stage reads back, in a folder beside the new run (``RUN_DIR-vN-data``).
5. Train a new run directory (``RUN_DIR-v2``, ``-v3``, ...) with the run's config, starting from
   the deployed model (``RUN_DIR/model``: after a LoRA run, the merged model, on which the run's
   strategy then starts afresh) and reading those files.
6. Score the deployed and the retrained model on the old test split and on the new one with
   the task's own metric (``default_metric``) and everything else ``evaluate`` reports
   (``retrain/`` in the new run holds each evaluation); ``retrain.json`` says whether the new
   model is better on the new data and what it costs on the old.

Nothing is written into the deployed run directory.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunesmith.config import Config, apply_overrides, config_from_dict, load_config
from tunesmith.data.split import split_frame
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.final import score_file
from tunesmith.runs import RunDir, claim_output
from tunesmith.tasks import build_task, require_stage
from tunesmith.tasks.contract import Task
from tunesmith.tasks.run import load_run

GROUP = "__retrain_group__"
"""The column that carries ``Task.groups`` while the new rows are split."""


def next_version(run: Path) -> Path:
    """``name-vN`` beside ``run`` with the first N (from 2) that does not exist yet, nor its
    ``name-vN-data`` folder."""
    stem = re.sub(r"-v\d+$", "", run.name)
    version = 2
    while (run.parent / f"{stem}-v{version}").exists() or (run.parent / f"{stem}-v{version}-data").exists():
        version += 1
    return run.parent / f"{stem}-v{version}"


def retrain(run_dir: str | Path, data: str | Path, *, train: Callable, old_share: float = 0.5,
            out: str | Path | None = None, overrides: list[str] | None = None,
            console=None) -> dict[str, Any]:  # fmt: skip
    """Trains the new run and writes ``retrain.json`` in it; returns that report.

    Args:
        run_dir: the deployed run (finished, its files as ``hashes.json`` records them).
        data: new labelled data, in the format and columns the run was trained on.
        train: the function that trains the new run (``tunesmith.api.train``).
        old_share: the share of old training rows in the training mix (0 to below 1).
        out: the new run directory; by default ``RUN_DIR-vN`` beside the deployed run.
        overrides: ``key.sub=value`` strings applied to the run's config for the new run
            (``train.num_epochs=1``); model.name, the data files and runtime.output_dir are
            retrain's own.

    Raises:
        TunesmithError: an unfinished or changed run, bad new data (named by file and row), new
            data too small to split, or a mix that changes the model's label space.
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
    if not (run.data_dir / "train.parquet").is_file():
        raise TunesmithError(f"{run.data_dir / 'train.parquet'} is missing: retrain mixes the run's training rows "
                             "into the new ones")  # fmt: skip
    config = load_config(run.path / "config.yaml")
    saved = run.read_json("task.json")
    labels, task = saved["label_names"], build_task(config, saved)
    require_stage(task, "retrain", what=str(run.path))
    existed = staging.is_dir()  # an empty folder of the user's stays
    try:
        staged = stage_data(task, config, labels, run.data_dir, data, staging.resolve(), old_share)
        tree = new_config(config, run, staged.files, staged.settings, target.resolve(), overrides)
        result = train(config_from_dict(tree, f"retrain of {run.path}"), console=console)
    except BaseException:
        # Only its own files go, so that the same command can run again.
        for path in staging.iterdir() if existed else ():
            path.unlink()
        if not existed:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    files = staged.files
    metric, direction = task.default_metric
    tests = {"old_test": files.get("old_test"), "new_test": files["test"]}
    scores = score_runs({"deployed": run.path, "retrained": result.run_dir},
                        {name: file for name, file in tests.items() if file is not None},
                        staged.settings, out=result.run_dir / "retrain", metric=metric)  # fmt: skip
    report = {
        "deployed": str(run.path), "retrained": str(result.run_dir), "new_data": staged.source,
        "metric": metric, "direction": direction, "old_share": old_share, "rows": staged.rows,
        "files": {name: str(path) for name, path in files.items()},
        "scores": scores, **verdict(scores, metric, direction),
    }  # fmt: skip
    RunDir(result.run_dir).write_json("retrain.json", report)
    return report


@dataclass
class StagedData:
    """What :func:`stage_data` wrote for the new run."""

    files: dict[str, Path]
    """train (the mix), validation, test (the new rows') and old_test (the run's), by name."""
    settings: dict[str, Any]
    """The data settings that read them (``Task.write_records``)."""
    rows: dict[str, int]
    """How many rows of each kind the mix and the new held-out splits have."""
    source: str
    """The new data, as its manifest entry names it."""


def stage_data(task: Task, config: Config, labels: list[str], data_dir: Path, data: str | Path, staging: Path,
               old_share: float) -> StagedData:  # fmt: skip
    """Reads the new data, checks its labels, splits it, mixes in the run's old training rows
    (``data_dir``) and writes the new run's files and the old test rows into ``staging``.

    Raises:
        TunesmithError: bad new data (named by file and row), too few rows to split, or a label
            space other than the deployed model's.
    """
    new, entry = task.read(str(data), config.data)
    old_train = pd.read_parquet(data_dir / "train.parquet")
    check_new_labels(config, labels, entry["source"], new=new, old_train=old_train)
    splits = split_new(task, new, config)
    mixed, mixed_old = mix(splits["train"], old_train, old_share, seed=config.runtime.seed)
    check_mix_labels(config, labels, mixed)
    tables = {"train": mixed, "validation": splits["validation"], "test": splits["test"]}
    if (data_dir / "test.parquet").is_file():  # a run trained without a test split has no old test data
        tables["old_test"] = pd.read_parquet(data_dir / "test.parquet")
    files, settings = write_tables(task, staging, tables)
    rows = {"new_train": len(splits["train"]), "old_train_mixed_in": len(mixed_old),
            "new_validation": len(splits["validation"]), "new_test": len(splits["test"])}  # fmt: skip
    return StagedData(files, settings, rows, entry["source"])


def split_new(task: Task, frame: pd.DataFrame, config: Config) -> dict[str, pd.DataFrame]:
    """The new rows in train, validation and test (the run's fractions, or 0.1 and 0.2 where the
    run had files instead), by the task's rules: stratified where ``task.stratify``, whole groups
    at a time where ``task.groups`` gives them.

    Raises:
        TunesmithError: too few rows (or groups, or rows of a label) to hold out both splits.
    """
    groups = task.groups(frame)
    table = frame if groups is None else frame.assign(**{GROUP: groups})
    splits = split_frame(table, val_fraction=config.data.val_fraction or 0.1,
                         test_fraction=config.data.test_fraction or 0.2, seed=config.runtime.seed,
                         stratify=task.stratify, groups=None if groups is None else GROUP)  # fmt: skip
    return {name: split.drop(columns=GROUP, errors="ignore") for name, split in splits.items()}


def mix(new_train: pd.DataFrame, old_train: pd.DataFrame, old_share: float, *,
        seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The new training rows plus a seeded sample of the old ones (``old_share`` of the mix, or
    all of them when there are fewer), shuffled; and that sample."""
    wanted = round(len(new_train) * old_share / (1 - old_share))
    mixed_old = old_train.sample(n=min(wanted, len(old_train)), random_state=seed) if wanted else old_train.iloc[:0]
    mixed = pd.concat([new_train, mixed_old], ignore_index=True).sample(frac=1.0, random_state=seed)
    return mixed.reset_index(drop=True), mixed_old


def check_new_labels(config: Config, labels: list[str], source: str, *, new: pd.DataFrame,
                     old_train: pd.DataFrame) -> None:  # fmt: skip
    """Refuses new data with a label (class, tag) the deployed model does not have: the
    deployed head has no output for it (a head with as many outputs but other labels would load
    without a word). The old rows join the fit so that new rows of a single class pass.

    Raises:
        TunesmithError: naming the file, the labels and what to do.
    """
    seen = build_task(config)
    seen.fit(pd.concat([new, old_train], ignore_index=True))
    unknown = [name for name in seen.label_names if name not in labels]
    if unknown:
        raise TunesmithError(f"{source}: {unknown[:5]} are not labels of the deployed model ({labels}); retrain keeps "
                             "the model's labels: train a new run to add labels")  # fmt: skip


def check_mix_labels(config: Config, labels: list[str], mixed: pd.DataFrame) -> None:
    """Refuses a training mix without rows of a label the deployed model has: the new run would
    fit a smaller label space.

    Raises:
        TunesmithError: naming the labels and what to do.
    """
    fitted = build_task(config)
    try:
        fitted.fit(mixed)
    except TunesmithError as error:
        raise TunesmithError(f"the retraining mix: {error}; add rows of the other labels or raise --mix old") from None
    missing = [name for name in labels if name not in fitted.label_names]
    if missing:
        raise TunesmithError(
            f"the retraining mix has no rows of {missing[:5]}: add them to the new data or raise --mix old"
        )


def write_tables(task: Task, staging: Path, tables: dict[str, pd.DataFrame]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Writes each table where the new run's data stage reads it (``task.write_records``);
    returns the files by name and the data settings that read them."""
    staging.mkdir(parents=True, exist_ok=True)  # new, or empty as claimed
    files, settings = {}, {}
    for name, table in tables.items():
        files[name], settings = task.write_records(table, staging, name)
    return files, settings


def new_config(config: Config, run: RunDir, files: dict[str, Path], settings: dict[str, Any], target: Path,
               overrides: list[str] | None) -> dict[str, Any]:  # fmt: skip
    """The run's config as a tree (``overrides`` applied), starting from its model, reading the
    staged files as they are and writing to ``target``."""
    tree = config.model_dump(mode="json")
    if overrides:
        apply_overrides(tree, overrides)
    tree["model"]["name"] = str(run.model_dir.resolve())
    tree["data"].update(train=str(files["train"]), validation=str(files["validation"]), test=str(files["test"]),
                        max_rows=None, **settings)  # fmt: skip
    tree["runtime"]["output_dir"] = str(target)
    return tree


def score_runs(runs: dict[str, Path], tests: dict[str, Path], settings: dict[str, Any], *, out: Path,
               metric: str) -> dict[str, dict]:  # fmt: skip
    """Each run's scores on each test file, by run and test, as ``tunesmith evaluate`` scores a
    file; the evaluations are saved in ``out`` (``deployed_old_test.json``, ...)."""
    scores: dict[str, dict] = {}
    for name, path in runs.items():
        loaded = load_run(path)
        config = loaded.config.model_copy(update={"data": loaded.config.data.model_copy(update=settings)})
        scores[name] = {}
        for split, file in tests.items():
            metrics = score_file(loaded.run, config, loaded.task, loaded.model, loaded.tokenizer, file, out=out,
                                 stem=f"{name}_{split}")  # fmt: skip
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            scores[name][split] = {**numbers, "interval": metrics.get("confidence_intervals", {}).get(metric)}
        del loaded  # one model in memory at a time
    return scores


def verdict(scores: dict[str, dict], metric: str, direction: str) -> dict[str, Any]:
    """Whether the retrained model is better on the new test data, by how much, and what it
    gains (positive) or costs (negative) on the old; both in ``metric``'s units, positive where
    the retrained model is better (lower, for a "min" metric such as loss)."""
    sign = 1.0 if direction == "max" else -1.0

    def change(split: str) -> float | None:
        if split not in scores["deployed"]:
            return None
        return sign * (scores["retrained"][split][metric] - scores["deployed"][split][metric])

    gain, old = change("new_test"), change("old_test")
    retrained, deployed = scores["retrained"], scores["deployed"]
    better = "better" if gain > 0 else "not better"
    summary = (f"on the new test data the retrained model scores {metric} {retrained['new_test'][metric]:.4f} "
               f"against the deployed model's {deployed['new_test'][metric]:.4f} ({better}, "
               f"{'higher' if sign > 0 else 'lower'} is better)")  # fmt: skip
    if old is not None:
        summary += (f"; on the old test data {retrained['old_test'][metric]:.4f} against "
                    f"{deployed['old_test'][metric]:.4f} ({'a gain' if old >= 0 else 'a cost'} of "
                    f"{abs(old):.4f})")  # fmt: skip
    return {"better_on_new_test": bool(gain > 0), "gain_on_new_test": gain, "change_on_old_test": old,
            "summary": summary[0].upper() + summary[1:]}  # fmt: skip
