"""Metrics for sequence tasks, computed with scikit-learn and scipy."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    hamming_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)


def _prf(y_true, y_pred, average, labels=None) -> tuple[float, float, float]:
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, labels=labels, zero_division=0)
    return float(p), float(r), float(f)


def classification_metrics(predicted: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Accuracy; macro and weighted precision/recall/F1; per-class scores; confusion matrix."""
    ids = list(range(len(label_names)))
    result: dict[str, Any] = {"accuracy": float(accuracy_score(targets, predicted)), "count": len(targets)}
    for average in ("macro", "weighted"):
        p, r, f = _prf(targets, predicted, average, ids)
        result |= {f"{average}_precision": p, f"{average}_recall": r, f"{average}_f1": f}
    p, r, f, support = precision_recall_fscore_support(targets, predicted, labels=ids, average=None, zero_division=0)
    result["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(label_names)
    }
    result["confusion_matrix"] = confusion_matrix(targets, predicted, labels=ids).tolist()
    return result


def multilabel_metrics(predicted: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Micro/macro precision, recall and F1, subset accuracy, Hamming loss, per-label scores."""
    result: dict[str, Any] = {
        "subset_accuracy": float(accuracy_score(targets, predicted)),
        "hamming_loss": float(hamming_loss(targets, predicted)),
        "count": len(targets),
    }
    for average in ("micro", "macro", "weighted"):
        p, r, f = _prf(targets, predicted, average)
        result |= {f"{average}_precision": p, f"{average}_recall": r, f"{average}_f1": f}
    p, r, f, support = precision_recall_fscore_support(targets, predicted, average=None, zero_division=0)
    result["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(label_names)
    }
    return result


def regression_metrics(predicted: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """MSE, MAE, R² and Spearman's rank correlation."""
    rho = spearmanr(predicted, targets).statistic if len(targets) > 1 else float("nan")
    return {
        "mse": float(mean_squared_error(targets, predicted)),
        "mae": float(mean_absolute_error(targets, predicted)),
        "r2": float(r2_score(targets, predicted)) if len(targets) > 1 else float("nan"),
        "spearman": float(rho),
        "count": len(targets),
    }
