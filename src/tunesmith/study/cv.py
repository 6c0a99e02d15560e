"""K-fold cross-validation: every fold is a full ``train`` run (data stage, training, test
evaluation, model card) on the other folds, tested on its own fold.

The training file is read and cleaned once, then split into K disjoint folds: stratified by
label for single-label tasks, by group when ``cv.group_column`` is set (a group never straddles
two folds), plain K-fold otherwise. Each fold's train and test rows are written under the CV
directory, so every fold run is an ordinary run directory that can be inspected, evaluated or
resumed on its own.
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
from tunesmith.errors import TunesmithError
from tunesmith.runs import claim_output
from tunesmith.tasks import build_task, require_stage
from tunesmith.tasks.classification import text_logits
from tunesmith.tasks.run import load_run


def _load(config: Config, task) -> pd.DataFrame:
    """The cleaned training table (text, label[, group]) the folds are cut from."""
    from tunesmith.data.load import read_table
    from tunesmith.data.prepare import load_examples
    from tunesmith.data.split import split_frame

    data = config.data
    frame, entry = load_examples(data.train, data, task, [], config.inspect.near_duplicate_similarity)
    group = config.cv.group_column
    if group is not None:
        raw = read_table(data.train, column_names=data.column_names, encoding_errors=data.encoding_errors).frame
        if group not in raw.columns:
            raise TunesmithError(
                f"cv.group_column={group!r} is not a column of {entry['source']}; columns: {list(raw.columns)}"
            )
        values = raw[group].to_numpy()[frame["row"].to_numpy() - 1]
        if pd.isna(values).any():
            raise TunesmithError(f"{entry['source']}: cv.group_column {group!r} is empty on some rows")
        frame = frame.assign(group=values)
    if data.max_rows is not None and len(frame) > data.max_rows:
        frame = split_frame(frame, val_fraction=0, test_fraction=1 - data.max_rows / len(frame),
                            seed=config.runtime.seed, stratify=task.stratify)["train"]  # fmt: skip
    return frame.reset_index(drop=True)


def assign_folds(frame: pd.DataFrame, folds: int, *, seed: int, stratify: bool) -> np.ndarray:
    """The fold (0..K-1) of every row: grouped when the frame has a ``group`` column,
    stratified by ``label`` when ``stratify``, plain shuffled K-fold otherwise.

    Raises:
        TunesmithError: fewer rows, groups or members of a class than folds.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if len(frame) < folds:
        raise TunesmithError(f"{folds} folds need at least {folds} rows; there are {len(frame)}")
    labels = frame["label"].astype(str).to_numpy()
    if stratify:
        counts = pd.Series(labels).value_counts()
        if counts.min() < folds:
            rare = ", ".join(f"{name!r} ({n})" for name, n in counts[counts < folds].items())
            raise TunesmithError(
                f"stratified {folds}-fold needs at least {folds} rows of every label; too few: {rare} "
                "(lower --folds, or drop or merge the rare labels)"
            )
    fold = np.full(len(frame), -1)
    if "group" in frame:
        groups = frame["group"].astype(str).to_numpy()
        if len(set(groups)) < folds:
            raise TunesmithError(f"{folds} folds need at least {folds} groups; there are {len(set(groups))}")
        splitter = (StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if stratify
                    else GroupKFold(folds, shuffle=True, random_state=seed))  # fmt: skip
        pieces = splitter.split(np.zeros(len(frame)), labels, groups)
    elif stratify:
        pieces = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(frame)), labels)
    else:
        pieces = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(frame)))
    for k, (_, held) in enumerate(pieces):
        fold[held] = k
    return fold


def summarize(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation (ddof=1) and per-fold values of every scalar test metric, and
    of every per-class score."""
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

    scalars = sorted({k for m in fold_metrics for k, v in m.items() if isinstance(v, (int, float)) and k != "count"})
    for name in scalars:
        add(name, [m.get(name) for m in fold_metrics])
    classes = sorted({c for m in fold_metrics for c in m.get("per_class", {})})
    for label in classes:
        for score in ("precision", "recall", "f1"):
            add(f"{label}/{score}", [m.get("per_class", {}).get(label, {}).get(score) for m in fold_metrics])
    return summary


def run_cv(config: Config, out: Path, *, train: Callable, folds: int | None = None,
           console=None) -> dict[str, Any]:  # fmt: skip
    """Cross-validates ``config`` into the new directory ``out``: ``out/fold-K`` run directories,
    ``out/cv.json`` (per-metric mean ± std and per-fold values) and ``out/cv.md``.

    Args:
        train: the function that runs one fold (``tunesmith.api.train``, or a wrapper of it).
        folds: overrides ``cv.folds``.
    """
    if folds is not None:
        config = config.model_copy(update={"cv": config.cv.model_copy(update={"folds": folds})})
    k = config.cv.folds
    require_stage(build_task(config), "cv")
    if config.data.test is not None:
        raise TunesmithError(
            f"data.test={config.data.test!r}: cross-validation tests every fold on its own held-out rows; "
            "remove data.test (or evaluate that file with `tunesmith evaluate` afterwards)"
        )
    out = claim_output(out, kind="dir", what="--out")
    task = build_task(config)
    frame = _load(config, task)
    fold = assign_folds(frame, k, seed=config.runtime.seed, stratify=task.stratify)
    out.mkdir(parents=True, exist_ok=True)  # new, or empty as claimed
    frame.assign(fold=fold).to_parquet(out / "folds.parquet", index=False)
    log = (lambda message: console.print(message, markup=False, highlight=False)) if console else print
    results = []
    base = config.model_dump(mode="json")
    for i in range(k):
        fold_dir = out / f"fold-{i}"
        data_dir = out / "data" / f"fold-{i}"
        data_dir.mkdir(parents=True)
        columns = ["text", "label"]
        frame.loc[fold != i, columns].to_parquet(data_dir / "train.parquet", index=False)
        frame.loc[fold == i, columns].to_parquet(data_dir / "test.parquet", index=False)
        tree = json.loads(json.dumps(base))
        tree["data"].update(train=str(data_dir / "train.parquet"), test=str(data_dir / "test.parquet"),
                            text_column="text", label_column="label", column_names=None, max_rows=None)  # fmt: skip
        tree["runtime"]["output_dir"] = str(fold_dir)
        log(f"Fold {i + 1} of {k}: {int((fold != i).sum())} rows to train on, {int((fold == i).sum())} to test")
        result = train(config_from_dict(tree, f"fold {i}"), console=console)
        results.append({"fold": i, "run": str(fold_dir), "test": result.metrics.get("test", {})})
    summary = summarize([r["test"] for r in results])
    report = {"folds": k, "grouped_by": config.cv.group_column, "stratified": task.stratify,
              "rows": len(frame), "summary": summary, "runs": [{"fold": r["fold"], "run": r["run"]} for r in results]}  # fmt: skip
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
        logits = text_logits(loaded.model, loaded.tokenizer, [" ".join(str(t).split()) for t in held],
                             max_length=loaded.config.model.max_length)  # fmt: skip
        return list(loaded.task.label_names), loaded.task.probabilities(logits)

    return fit


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# {report['folds']}-fold cross-validation", "",
             f"{report['rows']} rows; folds {'grouped by ' + report['grouped_by'] if report['grouped_by'] else 'stratified by label' if report['stratified'] else 'shuffled'}.",
             "", "| metric | mean | std | per fold |", "|---|---|---|---|"]  # fmt: skip
    for name, values in report["summary"].items():
        per_fold = ", ".join("-" if v is None else f"{v:.4f}" for v in values["folds"])
        lines.append(f"| {name} | {values['mean']:.4f} | {values['std']:.4f} | {per_fold} |")
    lines += ["", "Fold runs:", ""] + [
        f"- fold {r['fold']}: [{r['run']}]({Path(r['run']).name}/README.md)" for r in report["runs"]
    ]
    return "\n".join(lines) + "\n"
