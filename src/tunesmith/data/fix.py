"""Fixing what inspect finds, as data.clean says: junk text, near-duplicates, conflicting
labels, rows leaked into held-out splits, likely label errors.

Every row dropped or relabelled gets one changelog entry (source, 1-based data row, action,
reason, text, label, new label); nothing changes without one. Frames carry a ``row`` column
(the row's position in its file) from clean_frame.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pandas as pd

from tunesmith.config import CleanConfig
from tunesmith.data import quality


def _entry(source: str, row, action: str, reason: str, new_label: str | None = None) -> dict:
    entry = {"source": source, "row": int(row.row), "action": action, "reason": reason, "text": row.text,
             "label": str(row.label)}  # fmt: skip
    if new_label is not None:
        entry["new_label"] = new_label
    return entry


def fix_frame(frame: pd.DataFrame, clean: CleanConfig, *, similarity: float, source: str,
              changes: list[dict]) -> pd.DataFrame:  # fmt: skip
    """Junk, conflicting labels and near-duplicates within one table."""
    frame = frame.reset_index(drop=True)
    if clean.drop_junk:
        reasons = frame["text"].map(quality.junk_reason)
        junk = reasons.notna()
        changes.extend(_entry(source, r, "dropped", f"junk text ({reason})")
                       for r, reason in zip(frame[junk].itertuples(), reasons[junk]))  # fmt: skip
        frame = frame[~junk].reset_index(drop=True)
    if clean.conflicting_labels == "keep" and not clean.drop_near_duplicates:
        return frame

    exact, near = quality.duplicate_groups(frame, threshold=similarity)
    labels = frame["label"].map(str).tolist()
    # a row kept from identical copies votes for all of them (clean_frame's ``copies``)
    weights = frame["copies"].tolist() if "copies" in frame else [1] * len(frame)
    rows = list(frame.itertuples())
    drop: dict[int, str] = {}
    relabel: dict[int, tuple[object, str]] = {}
    if clean.conflicting_labels != "keep":
        # near groups contain the exact groups of their rows; exact groups outside them stand alone
        for group in quality.conflicting_labels(frame, near + exact):
            group = [p for p in group if p not in drop and p not in relabel]
            votes = Counter()
            for p in group:
                votes[labels[p]] += weights[p]
            votes = votes.most_common()
            if len(votes) < 2:
                continue
            listed = ", ".join(str(rows[p].row) for p in group)
            tie = votes[0][1] == votes[1][1]
            if clean.conflicting_labels == "drop" or tie:
                why = "a tie" if clean.conflicting_labels == "majority" else "dropped as configured"
                for p in group:
                    drop[p] = f"conflicting labels among rows {listed} ({why})"
            else:
                winner = votes[0][0]
                value = frame.at[next(p for p in group if labels[p] == winner), "label"]  # keeps the label's type
                for p in group:
                    if labels[p] != winner:
                        relabel[p] = (value, f"conflicting labels among rows {listed}: majority label")
    if clean.drop_near_duplicates:
        for group in near:  # every member is a near copy of the group's first row
            kept: dict[str, int] = {}
            for p in group:
                if p in drop:
                    continue
                label = str(relabel[p][0]) if p in relabel else labels[p]
                if label in kept:
                    drop[p] = f"near duplicate of row {rows[kept[label]].row}"
                else:
                    kept[label] = p
    for p, reason in sorted(drop.items()):
        changes.append(_entry(source, rows[p], "dropped", reason))
    for p, (label, reason) in sorted(relabel.items()):
        if p not in drop:
            changes.append(_entry(source, rows[p], "relabelled", reason, str(label)))
            frame.at[p, "label"] = label
    return frame.drop(index=list(drop)).reset_index(drop=True)


def drop_leaked(train: pd.DataFrame, held_out: dict[str, pd.DataFrame], *, similarity: float, source: str,
                changes: list[dict]) -> pd.DataFrame:  # fmt: skip
    """Drops training rows that are exact or near copies of a held-out row."""
    drop: dict[int, str] = {}
    for name, frame in held_out.items():
        exact, near = quality.leakage(frame, train, threshold=similarity)  # train rows looked up in the split
        for p, q in exact:
            drop.setdefault(p, f"exact copy of a {name} row: {frame['text'].iat[q][:80]!r}")
        for p, q, s in near:
            drop.setdefault(p, f"near copy (similarity {s:.2f}) of a {name} row: {frame['text'].iat[q][:80]!r}")
    rows = list(train.itertuples())
    for p, reason in sorted(drop.items()):
        changes.append(_entry(source, rows[p], "dropped", reason))
    return train.drop(index=list(drop)).reset_index(drop=True)


def fix_label_errors(train: pd.DataFrame, action: str, find: Callable[[pd.DataFrame], list[tuple[int, str, float]]],
                     *, source: str, changes: list[dict]) -> pd.DataFrame:  # fmt: skip
    """Drops or relabels the rows ``find`` flags: (position, suggested label, probability of
    the given label)."""
    train = train.reset_index(drop=True)
    suspects = find(train)
    rows = list(train.itertuples())
    dropped = []
    for p, suggested, given_probability in suspects:
        reason = f"likely label error (out-of-fold probability of the given label {given_probability:.3f})"
        if action == "drop":
            changes.append(_entry(source, rows[p], "dropped", reason))
            dropped.append(p)
        else:
            changes.append(_entry(source, rows[p], "relabelled", reason, suggested))
            train.at[p, "label"] = suggested
    return train.drop(index=dropped).reset_index(drop=True)
