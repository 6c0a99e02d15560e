"""How far to trust a score: bootstrap confidence intervals, calibration (expected calibration
error and a reliability diagram) and temperature scaling.

The bootstrap resamples the evaluated rows with replacement and recomputes the metric each
time; the interval is the percentile range of those values. It measures the uncertainty that
comes from the size of the test set, not from training (repeat training over seeds for that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _classification_scores(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro/weighted precision, recall and F1 from a stack of confusion matrices
    (samples x true x predicted), as sklearn computes them with zero_division=0."""
    true_positive = np.diagonal(confusions, axis1=1, axis2=2).astype(float)
    support = confusions.sum(2).astype(float)
    predicted = confusions.sum(1).astype(float)
    total = support.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    weights = support / total[:, None]
    return {
        "accuracy": true_positive.sum(1) / total,
        "macro_precision": precision.mean(1), "macro_recall": recall.mean(1), "macro_f1": f1.mean(1),
        "weighted_precision": (precision * weights).sum(1), "weighted_recall": (recall * weights).sum(1),
        "weighted_f1": (f1 * weights).sum(1),
    }  # fmt: skip


def _regression_scores(predicted: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """MSE, MAE and R² per row of (samples x rows) arrays."""
    error = predicted - targets
    spread = ((targets - targets.mean(1, keepdims=True)) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(spread > 0, 1 - (error**2).sum(1) / spread, np.nan)
    return {"mse": (error**2).mean(1), "mae": np.abs(error).mean(1), "r2": r2}


def bootstrap_intervals(predicted: np.ndarray, targets: np.ndarray, *, kind: str, num_classes: int = 0,
                        samples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:  # fmt: skip
    """Percentile bootstrap intervals of the main metrics.

    Args:
        predicted: class ids (``kind="single_label"``) or values (``kind="regression"``).
        samples: bootstrap resamples of the rows.
        level: the interval's coverage (0.95: the 2.5th to 97.5th percentiles).

    Returns:
        {metric: {"estimate", "low", "high"}}.
    """
    predicted, targets = np.asarray(predicted), np.asarray(targets)
    n = len(targets)
    if n == 0 or samples <= 0:
        return {}
    rows = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    if kind == "single_label":
        cells = targets.astype(int) * num_classes + predicted.astype(int)
        shape = (num_classes, num_classes)
        full = np.bincount(cells, minlength=num_classes**2).reshape(1, *shape)
        resampled = np.stack([np.bincount(cells[r], minlength=num_classes**2).reshape(shape) for r in rows])
        estimates, draws = _classification_scores(full), _classification_scores(resampled)
    elif kind == "regression":
        estimates = _regression_scores(predicted[None, :].astype(float), targets[None, :].astype(float))
        draws = _regression_scores(predicted[rows].astype(float), targets[rows].astype(float))
    else:
        raise ValueError(f"no bootstrap intervals for {kind}")
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name, values in draws.items():
        finite = values[np.isfinite(values)]
        if not len(finite):
            continue
        low, high = np.percentile(finite, [tail, 100 - tail])
        intervals[name] = {"estimate": float(estimates[name][0]), "low": float(low), "high": float(high)}
    return intervals


def calibration_bins(probabilities: np.ndarray, targets: np.ndarray, bins: int = 15) -> tuple[float, list[dict]]:
    """Expected calibration error over ``bins`` equal-width confidence bins, and the bins.

    A row's confidence is its highest class probability, in bin ``(k/bins, (k+1)/bins]``.
    ECE = sum over bins of (rows in bin / all rows) x |accuracy in bin - mean confidence in bin|.
    """
    probabilities, targets = np.asarray(probabilities, dtype=float), np.asarray(targets)
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == targets).astype(float)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for k in range(bins):
        members = index == k
        count = int(members.sum())
        if not count:
            continue
        accuracy, mean_confidence = float(correct[members].mean()), float(confidence[members].mean())
        ece += count / len(targets) * abs(accuracy - mean_confidence)
        table.append({"low": k / bins, "high": (k + 1) / bins, "count": count, "accuracy": accuracy,
                      "confidence": mean_confidence})  # fmt: skip
    return float(ece), table


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=float) / temperature
    scaled -= scaled.max(1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(1, keepdims=True)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T)
    on held-out rows (Guo et al., 2017). T > 1 softens over-confident predictions; the predicted
    class never changes."""
    from scipy.optimize import minimize_scalar

    logits, targets = np.asarray(logits, dtype=float), np.asarray(targets, dtype=int)

    def nll(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        scaled = scaled - scaled.max(1, keepdims=True)
        log_z = np.log(np.exp(scaled).sum(1))
        return float((log_z - scaled[np.arange(len(targets)), targets]).mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def confidence_report(logits: np.ndarray, targets: np.ndarray, *, kind: str, samples: int, level: float, bins: int,
                      seed: int, temperature: float | None = None) -> dict[str, Any]:  # fmt: skip
    """What a split's metrics gain: ``confidence_intervals``, and for single-label scores ``ece``
    and ``calibration_bins`` (and their temperature-scaled versions).

    Args:
        kind: what the logits score, as :func:`bootstrap_intervals` takes it: "single_label"
            (class logits: intervals and calibration) or "regression" (one value per row:
            intervals); any other kind gains nothing.
        temperature: the fitted temperature, for the calibration after temperature scaling.
    """
    report: dict[str, Any] = {}
    if kind == "single_label":
        report["confidence_intervals"] = bootstrap_intervals(
            logits.argmax(1), targets, kind=kind, num_classes=logits.shape[1], samples=samples, level=level,
            seed=seed,
        )  # fmt: skip
        report["ece"], report["calibration_bins"] = calibration_bins(softmax(logits), targets, bins)
        if temperature is not None:
            report["temperature"] = temperature
            report["ece_temperature_scaled"], report["calibration_bins_temperature_scaled"] = calibration_bins(
                softmax(logits, temperature), targets, bins
            )
    elif kind == "regression":
        report["confidence_intervals"] = bootstrap_intervals(
            logits[:, 0], targets, kind=kind, samples=samples, level=level, seed=seed
        )
    if report.get("confidence_intervals") is not None:
        report["confidence_level"] = level
    return report


def bootstrap_sums(rows: np.ndarray, statistic: Callable[[np.ndarray], dict[str, np.ndarray]], *, samples: int,
                   level: float, seed: int) -> dict[str, dict[str, float]]:  # fmt: skip
    """Percentile bootstrap intervals of statistics that depend on column sums over rows (entity
    counts per sentence, scores per question): the rows are resampled with replacement, never
    the model re-run.

    Args:
        rows: one row of numbers per item (items x columns).
        statistic: from sums (resamples x columns) to {metric: values (resamples)}.
        samples: resamples; 0 turns the intervals off.
        level: the coverage (0.95: the 2.5th to 97.5th percentiles).
        seed: the resampling seed.

    Returns:
        {metric: {"estimate", "low", "high"}}, empty without rows or samples.
    """
    rows = np.asarray(rows, dtype=float)
    if not len(rows) or samples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    # One resample at a time, as how often it draws each row: samples x items x columns at once
    # would not fit in memory for a large test set.
    n = len(rows)
    sums = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) @ rows for _ in range(samples)])
    estimates, draws = statistic(rows.sum(0)[None, :]), statistic(sums)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name, values in draws.items():
        low, high = np.percentile(values, [tail, 100 - tail])
        intervals[name] = {"estimate": float(estimates[name][0]), "low": float(low), "high": float(high)}
    return intervals


def bootstrap_means(scores: dict[str, np.ndarray], *, samples: int, level: float, seed: int) -> dict[str, dict]:
    """Percentile bootstrap intervals of per-example means (ROUGE, exact match):
    ``{metric: {"estimate", "low", "high"}}``; empty when there is nothing to resample."""
    names = list(scores)
    if not names or not len(scores[names[0]]):
        return {}
    rows = np.stack([np.asarray(scores[n], dtype=float) for n in names], axis=1)
    count = len(rows)
    return bootstrap_sums(rows, lambda sums: {n: sums[:, i] / count for i, n in enumerate(names)},
                          samples=samples, level=level, seed=seed)  # fmt: skip
