"""Seeded train/validation/test splits, stratified by label where the task allows it."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from tunesmith.errors import TunesmithError


def _carve(frame: pd.DataFrame, fraction: float, seed: int, stratify: pd.Series | None, groups: str | None = None):
    if groups is not None:  # whole groups (e.g. all questions on one paragraph) go one way
        import numpy as np

        target = max(1, round(len(frame) * fraction))
        sizes = frame.groupby(groups, sort=False).size()
        order = sizes.index[np.random.default_rng(seed).permutation(len(sizes))]
        held_groups, held_rows = [], 0
        for group in order:  # whole groups, in a seeded order, until the row target is reached
            if held_rows >= target:
                break
            if held_rows + sizes[group] > 2 * target:
                continue  # a group that would overshoot the target twice over waits for smaller ones
            held_groups.append(group)
            held_rows += int(sizes[group])
        held = frame[groups].isin(held_groups)
        if not held.any() or (~held).sum() < target:
            raise TunesmithError(f"cannot hold out about {fraction:.0%} of the rows in whole {groups}s and keep the "
                                 f"rest for training ({sizes.size} {groups}s left, the largest with {sizes.max()} of "
                                 f"{len(frame)} rows); give explicit data.validation / data.test files")  # fmt: skip
        return frame[~held], frame[held]
    size = max(1, round(len(frame) * fraction))
    if stratify is not None:
        size = max(size, stratify.nunique())
    if size >= len(frame):
        raise TunesmithError(
            f"Only {len(frame)} rows: too few to hold out {fraction:.0%} for evaluation; "
            "add data or give explicit data.validation / data.test files"
        )
    return train_test_split(frame, test_size=size, random_state=seed, stratify=stratify)


def split_frame(
    frame: pd.DataFrame,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool,
    groups: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Splits one table into train/validation/test.

    Args:
        frame: table with a ``label`` column.
        val_fraction: share of all rows for validation (0 for none).
        test_fraction: share of all rows for test (0 for none).
        seed: the split's random seed.
        stratify: keep label proportions equal across splits (single-label tasks).
        groups: a column whose values never straddle splits (fractions then count groups).

    Raises:
        TunesmithError: a class is too small to appear in every split.
    """
    if stratify:
        counts = frame["label"].value_counts()
        needed = 1 + (val_fraction > 0) + (test_fraction > 0)
        small = counts[counts < needed]
        if len(small):
            raise TunesmithError(
                f"Labels {sorted(map(str, small.index))} have fewer than {needed} examples, too few "
                "to appear in every split; add examples, merge or drop those labels"
            )
    splits: dict[str, pd.DataFrame] = {}
    rest = frame
    for name, fraction in (("test", test_fraction), ("validation", val_fraction)):
        if fraction <= 0:
            continue
        share = fraction / (len(rest) / len(frame))
        rest, held = _carve(rest, share, seed, rest["label"] if stratify else None, groups)
        splits[name] = held.reset_index(drop=True)
    splits["train"] = rest.reset_index(drop=True)
    return splits
