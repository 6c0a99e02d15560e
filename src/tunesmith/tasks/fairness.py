"""Per-slice metrics: how a classifier does for each value of a slice column (a group, a
source, a language), and the gaps between the best and the worst slice.

- accuracy gap: the largest minus the smallest slice accuracy;
- equal-opportunity difference: the largest minus the smallest true-positive rate of the
  positive label across slices (Hardt et al., 2016); for more than two labels, of the macro
  recall.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import f1_score, recall_score


def slice_metrics(predicted: np.ndarray, targets: np.ndarray, slices, label_names: list[str], *, column: str,
                  positive: str | None = None, min_rows: int = 1) -> dict[str, Any]:  # fmt: skip
    """Metrics per slice value and the gaps between slices.

    Args:
        positive: the label whose true-positive rate equal opportunity compares (binary tasks);
            None with two labels: the second label name (``label_names[1]``).
        min_rows: slices with fewer rows are listed but left out of the gaps.
    """
    predicted, targets = np.asarray(predicted), np.asarray(targets)
    values = np.asarray([str(v) for v in slices], dtype=object)
    binary = len(label_names) == 2
    if binary:
        positive = positive if positive is not None else label_names[1]
        if positive not in label_names:
            raise ValueError(f"evaluation.positive_label={positive!r} is not one of the labels {label_names}")
        positive_id = label_names.index(positive)
    per_slice: dict[str, dict[str, Any]] = {}
    for value in sorted(set(values.tolist())):
        members = values == value
        y, p = targets[members], predicted[members]
        entry: dict[str, Any] = {"count": int(members.sum()), "accuracy": float((y == p).mean())}
        entry["macro_f1"] = float(f1_score(y, p, average="macro", labels=sorted(set(y.tolist())), zero_division=0))
        if binary:
            positives = y == positive_id
            entry["true_positive_rate"] = float((p[positives] == positive_id).mean()) if positives.any() else None
            entry["positives"] = int(positives.sum())
        else:
            entry["macro_recall"] = float(recall_score(y, p, average="macro", labels=sorted(set(y.tolist())),
                                                       zero_division=0))  # fmt: skip
        per_slice[value] = entry
    counted = [e for e in per_slice.values() if e["count"] >= min_rows]
    report: dict[str, Any] = {"column": column, "slices": per_slice, "min_rows_for_gaps": min_rows}
    if len(counted) >= 2:
        accuracies = [e["accuracy"] for e in counted]
        report["accuracy_gap"] = float(max(accuracies) - min(accuracies))
        key = "true_positive_rate" if binary else "macro_recall"
        rates = [e[key] for e in counted if e.get(key) is not None]
        if len(rates) >= 2:
            report["equal_opportunity_difference"] = float(max(rates) - min(rates))
            report["equal_opportunity_of"] = f"true-positive rate of {positive!r}" if binary else "macro recall"
    return report


def markdown(report: dict[str, Any]) -> str:
    binary = any("true_positive_rate" in e for e in report["slices"].values())
    rate = "true-positive rate" if binary else "macro recall"
    lines = [f"| {report['column']} | rows | accuracy | macro F1 | {rate} |", "|---|---|---|---|---|"]
    for value, e in report["slices"].items():
        r = e.get("true_positive_rate", e.get("macro_recall"))
        lines.append(f"| {value} | {e['count']} | {e['accuracy']:.4f} | {e['macro_f1']:.4f} | "
                     + ("-" if r is None else f"{r:.4f}") + " |")  # fmt: skip
    gaps = []
    if "accuracy_gap" in report:
        gaps.append(f"largest accuracy gap {report['accuracy_gap']:.4f}")
    if "equal_opportunity_difference" in report:
        gaps.append(f"equal-opportunity difference ({report['equal_opportunity_of']}) "
                    f"{report['equal_opportunity_difference']:.4f}")  # fmt: skip
    return "\n".join(lines) + ("\n\n" + "; ".join(gaps).capitalize() + "." if gaps else "") + "\n"
