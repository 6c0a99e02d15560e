"""K-fold cross-validation: every fold is a full ``train`` run (data stage, training, test
evaluation, model card) on the other folds, tested on its own fold.

Every task kind goes the same way, through the task contract (tasks/contract.py): the task
reads the training file (``read``), says which rows belong together (``groups``: questions on
one context, sentences of one document; or the column cv.group_column names, joined by
``source_rows``), and writes each fold's rows back in a form its data stage reads
(``write_records``). The rows are split into K disjoint folds: by group when there are groups
(a group never straddles two folds), stratified by label for single-label tasks, plain K-fold
otherwise. Each fold's train and test files are written under the CV directory, so every fold
run is an ordinary run directory that can be inspected, evaluated or resumed on its own. The
summary gives the mean and standard deviation of every test metric the task reports.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.config import Config, config_from_dict
from tunesmith.data.label_errors import FitFold, label_error_training
from tunesmith.data.load import read_table
from tunesmith.data.split import split_frame
from tunesmith.errors import TunesmithError
from tunesmith.runs import claim_output
from tunesmith.tasks import build_task, require_stage
from tunesmith.tasks.contract import Task
from tunesmith.tasks.run import load_run


def read_rows(config: Config, task: Task) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """The training rows the folds are cut from (cut to data.max_rows), each row's group (None
    when rows stand alone), and the training source's name.

    Raises:
        TunesmithError: a bad training file (naming the row), or a bad cv.group_column.
    """
    data = config.data
    frame, entry = task.read(data.train, data)
    source = entry["source"]
    groups = column_groups(config, task, frame, source) if config.cv.group_column else task.groups(frame)
    if data.max_rows is not None and len(frame) > data.max_rows:
        kept = _sample(frame, data.max_rows, seed=config.runtime.seed, stratify=task.stratify)
        frame, groups = frame.iloc[kept], None if groups is None else groups[kept]
    return frame.reset_index(drop=True), groups, source


def _sample(frame: pd.DataFrame, count: int, *, seed: int, stratify: bool) -> np.ndarray:
    """The sorted positions of ``count`` rows: a stratified sample when ``stratify`` (as the
    data stage cuts a single-label table), else a plain seeded one."""
    positions = pd.DataFrame({"position": np.arange(len(frame))})
    if stratify:
        positions["label"] = frame["label"].astype(str).to_numpy()
        kept = split_frame(positions, val_fraction=0, test_fraction=1 - count / len(frame), seed=seed,
                           stratify=True)["train"]  # fmt: skip
    else:
        kept = positions.sample(n=count, random_state=seed)
    return np.sort(kept["position"].to_numpy())


def column_groups(config: Config, task: Task, frame: pd.DataFrame, source: str) -> np.ndarray:
    """Each row's value of cv.group_column, read from the training table at the row the task
    read it from.

    Raises:
        TunesmithError: the task's source is not a table, the column is missing or empty on a row.
    """
    column, data = config.cv.group_column, config.data
    rows = task.source_rows(frame)
    if rows is None:
        raise TunesmithError(
            f"cv.group_column={column!r}: {source} is read as {task.kind} records, not as rows of a table, so "
            "there is no column to group by; remove cv.group_column (the folds keep the rows the task groups, "
            "e.g. the questions on one context, together)"
        )
    raw = read_table(data.train, column_names=data.column_names, encoding_errors=data.encoding_errors).frame
    if column not in raw.columns:
        raise TunesmithError(f"cv.group_column={column!r} is not a column of {source}; columns: {list(raw.columns)}")
    values = raw[column].to_numpy()[rows]
    empty = np.flatnonzero(pd.isna(values))
    if empty.size:
        raise TunesmithError(f"{source}, row {int(rows[empty[0]]) + 1}: cv.group_column {column!r} is empty "
                             f"({empty.size} rows are); give every row a group")  # fmt: skip
    return np.asarray([str(v) for v in values])


def assign_folds(count: int, folds: int, *, seed: int, labels: np.ndarray | None = None,
                 groups: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The fold (0..K-1) of each of ``count`` rows: grouped when ``groups`` are given (and then
    stratified by ``labels`` as far as groups allow), stratified by ``labels`` when given, plain
    shuffled K-fold otherwise.

    Raises:
        TunesmithError: fewer rows, groups or members of a class than folds.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if count < folds:
        raise TunesmithError(f"{folds} folds need at least {folds} rows; there are {count}")
    if labels is not None:
        counts = pd.Series(labels).value_counts()
        if counts.min() < folds:
            rare = ", ".join(f"{name!r} ({n})" for name, n in counts[counts < folds].items())
            raise TunesmithError(
                f"stratified {folds}-fold needs at least {folds} rows of every label; too few: {rare} "
                "(lower --folds, or drop or merge the rare labels)"
            )
    rows = np.zeros(count)
    if groups is not None:
        found = len(set(groups.tolist()))
        if found < folds:
            raise TunesmithError(f"{folds} folds need at least {folds} groups of rows that stay together (the "
                                 f"task's own, or cv.group_column's); there are {found}: lower --folds")  # fmt: skip
        splitter = (StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if labels is not None
                    else GroupKFold(folds, shuffle=True, random_state=seed))  # fmt: skip
        pieces = splitter.split(rows, labels, groups)
    elif labels is not None:
        pieces = StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, labels)
    else:
        pieces = KFold(folds, shuffle=True, random_state=seed).split(rows)
    fold = np.full(count, -1)
    for k, (_, held) in enumerate(pieces):
        fold[held] = k
    return fold


NOT_METRICS = ("count", "confidence_level")
"""Numbers of a split's metrics that are settings or sizes, not scores to average."""
BREAKDOWNS = ("per_class", "per_type", "per_tag")
"""Per-class (or per-entity-type, per-tag) scores of a split, summarised as ``name/score``."""


def summarize(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation (ddof=1) and per-fold values of every scalar test metric, and
    of every per-class (per entity type, per tag) score."""
    summary: dict[str, Any] = {}

    def add(name: str, values: list[float]) -> None:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return
        summary[name] = {
            "mean": float(np.mean(finite)),
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
            "folds": values,
        }

    def scalar(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    scalars = sorted({k for m in fold_metrics for k, v in m.items() if scalar(v) and k not in NOT_METRICS})
    for name in scalars:
        add(name, [m.get(name) for m in fold_metrics])
    for breakdown in BREAKDOWNS:
        parts = [m.get(breakdown) or {} for m in fold_metrics]
        for label in sorted({c for part in parts for c in part}):
            scores = sorted({s for part in parts for s, v in part.get(label, {}).items()
                             if scalar(v) and s not in ("support", "count")})  # fmt: skip
            for score in scores:
                add(f"{label}/{score}", [part.get(label, {}).get(score) for part in parts])
    return summary


def run_cv(config: Config, out: Path, *, train: Callable, folds: int | None = None,
           console=None) -> dict[str, Any]:  # fmt: skip
    """Cross-validates ``config`` into the new directory ``out``: ``out/fold-K`` run directories,
    ``out/folds.parquet`` (every row with its fold and group), ``out/cv.json`` (per-metric
    mean ± std and per-fold values, the task's own metric first) and ``out/cv.md``.

    Args:
        train: the function that runs one fold (``tunesmith.api.train``, or a wrapper of it).
        folds: overrides ``cv.folds``.

    Raises:
        TunesmithError: a task kind cv does not cover, data.test set, bad data, too few rows or
            groups for the folds, or ``out`` is not new.
    """
    if folds is not None:
        config = config.model_copy(update={"cv": config.cv.model_copy(update={"folds": folds})})
    k = config.cv.folds
    task = build_task(config)
    require_stage(task, "cv")
    if config.data.test is not None:
        raise TunesmithError(
            f"data.test={config.data.test!r}: cross-validation tests every fold on its own held-out rows; "
            "remove data.test (or evaluate that file with `tunesmith evaluate` afterwards)"
        )
    out = claim_output(out, kind="dir", what="--out")
    frame, groups, source = read_rows(config, task)
    labels = frame["label"].astype(str).to_numpy() if task.stratify else None
    fold = assign_folds(len(frame), k, seed=config.runtime.seed, labels=labels, groups=groups)
    out.mkdir(parents=True, exist_ok=True)  # new, or empty as claimed
    table = frame.assign(fold=fold) if groups is None else frame.assign(fold=fold, group=groups)
    table.to_parquet(out / "folds.parquet", index=False)
    log = (lambda message: console.print(message, markup=False, highlight=False)) if console else print
    results = []
    base = config.model_dump(mode="json")
    for i in range(k):
        fold_dir, data_dir = out / f"fold-{i}", out / "data" / f"fold-{i}"
        data_dir.mkdir(parents=True)
        train_file, keys = task.write_records(frame[fold != i], data_dir, "train")
        test_file, _ = task.write_records(frame[fold == i], data_dir, "test")
        tree = json.loads(json.dumps(base))
        tree["data"].update(train=str(train_file), test=str(test_file), max_rows=None, **keys)
        tree["runtime"]["output_dir"] = str(fold_dir)
        log(f"Fold {i + 1} of {k}: {int((fold != i).sum())} rows to train on, {int((fold == i).sum())} to test")
        result = train(config_from_dict(tree, f"fold {i}"), console=console)
        results.append({"fold": i, "run": str(fold_dir), "test": result.metrics.get("test", {})})
    metric = config.train.metric or task.default_metric[0]
    summary = summarize([r["test"] for r in results])
    summary = {name: summary[name] for name in sorted(summary, key=lambda name: name != metric)}
    grouped = config.cv.group_column or (None if groups is None else f"the {task.kind} task's groups")
    report = {"folds": k, "source": source, "metric": metric, "grouped_by": grouped,
              "groups": None if groups is None else len(set(groups.tolist())), "stratified": task.stratify,
              "rows": len(frame), "summary": summary,
              "runs": [{"fold": r["fold"], "run": r["run"]} for r in results]}  # fmt: skip
    (out / "cv.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "cv.md").write_text(markdown(report), encoding="utf-8")
    return report


def fold_classifier(config: Config, *, train: Callable) -> FitFold:
    """The training of one fold for the finetune label-error method (``data.label_errors``): a
    single-label run of ``config``'s model with its label-error training settings, on all of the
    fold's rows (no validation split), scored on the held-out texts.

    Args:
        train: the function that runs the fold (``tunesmith.api.train``).
    """
    settings = label_error_training(config)

    def fit(texts: list[str], labels: list[int], held: list[str], output_dir: str) -> tuple[list, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="tunesmith-data-") as scratch:
            train_file = Path(scratch) / "train.parquet"
            pd.DataFrame({"text": list(texts), "label": list(labels)}).to_parquet(train_file)
            tree: dict[str, Any] = {
                "data": {"train": str(train_file), "test_fraction": 0.0, "val_fraction": 0.0},
                "task": {"type": "single_label"},
                "model": {"name": config.model.name, "strategy": "full", **settings["model"]},
                "train": settings["train"],
                "runtime": {"seed": config.runtime.seed, "output_dir": output_dir, "progress": False},
            }  # fmt: skip
            result = train(config_from_dict(tree))
        loaded = load_run(result.run_dir)
        names = list(loaded.task.label_names)
        # The task's own predict (no validation split, so no temperature): every class's score.
        rows = loaded.task.predict(loaded.model, loaded.tokenizer, list(held))
        return names, np.asarray([[row["scores"][name] for name in names] for row in rows], dtype=float)

    return fit


def markdown(report: dict[str, Any]) -> str:
    """cv.md: how the folds were cut, and mean, std and per-fold value of every test metric."""
    if report["grouped_by"]:
        how = f"grouped by {report['grouped_by']} ({report['groups']} groups; no group in two folds)"
    else:
        how = "stratified by label" if report["stratified"] else "shuffled"
    lines = [f"# {report['folds']}-fold cross-validation", "",
             f"{report['rows']} rows of {report['source']}; folds {how}. The task's metric: {report['metric']}.",
             "", "| metric | mean | std | per fold |", "|---|---|---|---|"]  # fmt: skip
    for name, values in report["summary"].items():
        per_fold = ", ".join("-" if v is None else f"{v:.4f}" for v in values["folds"])
        lines.append(f"| {name} | {values['mean']:.4f} | {values['std']:.4f} | {per_fold} |")
    lines += ["", "Fold runs:", ""] + [
        f"- fold {r['fold']}: [{r['run']}]({Path(r['run']).name}/README.md)" for r in report["runs"]
    ]
    return "\n".join(lines) + "\n"
