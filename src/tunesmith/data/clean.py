"""Cleaning: normalise text, drop empty rows, missing labels and exact duplicates, with counts."""

from __future__ import annotations

import pandas as pd

from tunesmith.errors import TunesmithError


def is_missing(value: object) -> bool:
    """Whether a cell holds nothing: None, NaN, blank text or an empty list."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)) or hasattr(value, "__len__"):
        return len(value) == 0
    return bool(pd.isna(value))  # None, NaN, pd.NA, NaT


def clean_frame(
    frame: pd.DataFrame,
    *,
    normalize_whitespace: bool,
    drop_empty: bool,
    drop_missing_labels: bool,
    drop_duplicates: bool,
    source: str,
    changes: list[dict] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Cleans a ``text``/``label`` table.

    Args:
        changes: when given, one changelog entry is appended per dropped row, and the result
            keeps a ``row`` column (each row's 1-based position in ``frame``) and a ``copies``
            column (how many identical rows it stands for).

    Returns:
        The cleaned table (index reset) and counts of what each step did.

    Raises:
        TunesmithError: a label is missing and drop_missing_labels is off.
    """
    counts = {"rows_in": len(frame)}
    frame = frame.copy()
    if changes is not None:
        frame["row"] = range(1, len(frame) + 1)

    def log(dropped: pd.DataFrame, reason: str) -> None:
        if changes is not None:
            changes.extend(
                {"source": source, "row": int(r.row), "action": "dropped", "reason": reason, "text": r.text,
                 "label": None if is_missing(r.label) else str(r.label)}
                for r in dropped.itertuples()
            )  # fmt: skip

    text = frame["text"].map(lambda v: "" if is_missing(v) else str(v))
    if normalize_whitespace:
        text = text.str.split().str.join(" ")
    frame["text"] = text

    empty = frame["text"].str.len() == 0
    counts["empty_text"] = int(empty.sum())
    if drop_empty:
        log(frame[empty], "empty text")
        frame = frame[~empty]

    missing = frame["label"].map(is_missing).astype(bool)
    counts["missing_label"] = int(missing.sum())
    if counts["missing_label"] and not drop_missing_labels:
        first = int(frame.index[missing.to_numpy()][0])
        raise TunesmithError(
            f"{source}: {counts['missing_label']} rows have no label (first at data row {first + 1}); "
            "fill them in or set data.clean.drop_missing_labels=true"
        )
    log(frame[missing], "missing label")
    frame = frame[~missing]

    key = frame["text"] + "\0" + frame["label"].map(str)
    duplicated = key.duplicated()
    counts["exact_duplicates"] = int(duplicated.sum())
    if changes is not None:  # how many rows each kept row stands for, for votes over conflicting labels
        frame["copies"] = key.map(key.value_counts()) if drop_duplicates else 1
    if drop_duplicates:
        if changes is not None:
            first = frame["row"].groupby(key).transform("first")
            for r, original in zip(frame[duplicated].itertuples(), first[duplicated]):
                changes.append({"source": source, "row": int(r.row), "action": "dropped",
                                "reason": f"exact duplicate of row {int(original)}", "text": r.text,
                                "label": str(r.label)})  # fmt: skip
        frame = frame[~duplicated]
    labels_per_text = frame["label"].map(str).groupby(frame["text"]).nunique()
    counts["texts_with_conflicting_labels"] = int((labels_per_text > 1).sum())
    counts["rows_out"] = len(frame)
    return frame.reset_index(drop=True), counts
