"""Countering class imbalance: loss weights, or resampling the training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunesmith.errors import TunesmithError


def resample(frame: pd.DataFrame, *, method: str, seed: int) -> pd.DataFrame:
    """Over- or undersamples a single-label training table to equal class counts.

    oversample draws extra rows (with replacement) for every class up to the largest;
    undersample keeps a random subset of every class down to the smallest.
    """
    if method not in ("oversample", "undersample"):
        return frame
    rng = np.random.default_rng(seed)
    groups = [group for _, group in frame.groupby("label", sort=True)]
    target = max(map(len, groups)) if method == "oversample" else min(map(len, groups))
    parts = []
    for group in groups:
        if method == "oversample":
            extra = rng.choice(len(group), size=target - len(group), replace=True)
            parts.append(pd.concat([group, group.iloc[extra]]))
        else:
            parts.append(group.iloc[rng.choice(len(group), size=target, replace=False)])
    balanced = pd.concat(parts)
    return balanced.iloc[rng.permutation(len(balanced))].reset_index(drop=True)


def class_weights(label_ids: np.ndarray, label_names: list[str], spec: str | dict[str, float]) -> list[float]:
    """Per-class loss weights: "balanced" gives n / (k * count_c); a dict names each weight.

    Raises:
        TunesmithError: the dict names a label the data lacks, or leaves one out.
    """
    if spec == "balanced":
        counts = np.bincount(label_ids, minlength=len(label_names)).astype(float)
        return (len(label_ids) / (len(label_names) * np.maximum(counts, 1.0))).tolist()
    unknown = sorted(set(spec) - set(label_names))
    missing = sorted(set(label_names) - set(spec))
    if unknown or missing:
        raise TunesmithError(
            "data.balance.class_weights must give one weight per label: "
            f"unknown {unknown}, missing {missing}; the labels are {label_names}"
        )
    return [float(spec[name]) for name in label_names]
