"""The baseline beside every score (evaluation.baseline): what the pretrained model gives with
no fine-tuning. A linear probe (scikit-learn's logistic or ridge regression) is fitted on the
frozen pretrained model's mean-pooled embeddings of the training split and scored on the same
validation and test rows by the task's own metrics, so metrics.json, the report and the card say
how much the fine-tune added. Kinds that answer the probe (``tasks.contract.Probed``) get one;
at most ``evaluation.baseline_rows`` training rows (a seeded sample) keep it cheap. A table
(``tasks.contract.TableBaselined``) gets its own instead: gradient boosting on its columns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tunesmith.config import Config
from tunesmith.data.prepare import PreparedData
from tunesmith.errors import TunesmithError
from tunesmith.tasks.contract import Probed, TableBaselined, Task
from tunesmith.train.fit import Fitted

METHOD = "linear probe on the frozen pretrained model's mean-pooled embeddings"


def probe_baseline(config: Config, task: Task, data: PreparedData, fitted: Fitted,
                   log: Callable[[str], None]) -> dict[str, Any] | None:  # fmt: skip
    """The probe's scores per held-out split, or None where the run has no baseline (turned
    off, a kind without a probe, or no held-out split). The baseline only explains the run: a
    probe that cannot be fitted is logged as a warning and left out, and the run finishes."""
    features = fitted.encoded.features
    held_out = [split for split in ("validation", "test") if features.get(split)]
    tabled = isinstance(task, TableBaselined)
    probed = tabled or (isinstance(task, Probed) and task.baseline_probe)
    if not (config.evaluation.baseline and probed and held_out and features.get("train")):
        return None
    try:
        if tabled:
            return task.table_baseline(data.splits, seed=config.runtime.seed)
        return _probe(config, task, data, fitted, held_out)
    except (ValueError, RuntimeError, TunesmithError) as error:  # e.g. a model that cannot be loaded again
        log(f"WARNING: no baseline for this run: {type(error).__name__}: {str(error).splitlines()[0]}")
        return None


def _probe(config: Config, task: Task, data: PreparedData, fitted: Fitted, held_out: list[str]) -> dict[str, Any]:
    features = fitted.encoded.features
    rows = len(features["train"])
    rng = np.random.default_rng(config.runtime.seed)
    picked = np.sort(rng.choice(rows, size=min(rows, config.evaluation.baseline_rows), replace=False))
    base, _ = task.load_model(fitted.resolved, None)
    base.eval()

    def embedded(split: str, index: np.ndarray | None = None) -> np.ndarray:
        frame = data.splits[split] if index is None else data.splits[split].iloc[index]
        return task.embed(base, fitted.processor, task.monitor_inputs(frame))

    train = embedded("train", picked)
    train_features = [features["train"][i] for i in picked]
    found: dict[str, Any] = {"method": METHOD, "model": config.model.name, "train_rows": len(picked)}
    for split in held_out:
        found[split] = task.probe_scores(train, train_features, embedded(split), features[split],
                                         seed=config.runtime.seed)  # fmt: skip
    return found


def gain_line(metrics: dict[str, Any], metric: str) -> str | None:
    """ "test macro_f1: this run 0.8512, baseline 0.7102 (+0.1410)" for the run's main metric on
    test (validation when there is no test split), or None without a baseline."""
    row = next((r for r in comparison_rows(metrics) if r["metric"] == metric), None)
    if row is None:
        return None
    return (
        f"{row['split']} {metric}: this run {row['this run']:.4f}, baseline {row['baseline']:.4f} ({row['gain']:+.4f})"
    )


def log_baseline(metrics: dict[str, Any], metric: str, log: Callable[[str], None]) -> None:
    line = gain_line(metrics, metric)
    if line:
        log(f"Baseline ({metrics['baseline']['method']}, {metrics['baseline']['train_rows']:,} training rows): {line}")


def comparison_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric of the baseline's split (test, else validation): this run's score, the
    baseline's and the gain."""
    baseline = metrics.get("baseline") or {}
    split = "test" if "test" in baseline else "validation"
    rows = []
    for name, base in baseline.get(split, {}).items():
        tuned = metrics.get(split, {}).get(name)
        if isinstance(base, float) and isinstance(tuned, float) and name != "confidence_level":
            rows.append({"split": split, "metric": name, "this run": tuned, "baseline": base, "gain": tuned - base})
    return rows
