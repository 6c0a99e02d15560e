"""The label space of the text tasks (single-label, multi-label, regression): raw label values
checked (the messages name the row), normalised, fitted on the training split and turned into
targets. :class:`LabelSpace` is the part of ``TextClassificationTask`` (and of the image
classifier, which shares it) that the data stage calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import TunesmithError

REGRESSION_HINT = "did you mean task.type: regression?"


def label_kind(value: Any) -> str:
    """What a raw label value is, in words: text, number, boolean, list, dict (or its type)."""
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    return type(value).__name__


def shown(value: Any) -> str:
    """A label value as a message quotes it: its repr, cut to 60 characters."""
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def looks_continuous(names: set[str]) -> bool:
    """Whether class names are all numbers and some have decimals (regression targets?)."""
    try:
        values = [float(n) for n in names]
    except ValueError:
        return False
    return any(np.isfinite(v) and not float(v).is_integer() for v in values)


def sort_labels(values: set[str]) -> list[str]:
    """Numeric labels sort as numbers ("2" before "10"), others alphabetically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def check_class(value: Any, where: str, what: str, *, several: str) -> None:
    """Refuses a value that cannot be a class name: a list, dict, boolean, non-finite number or
    a number with decimals.

    Args:
        where: the file and row, for the message.
        what: the value as the message names it (``label 'a'``).
        several: what to do about a list of labels (the task kind's advice).

    Raises:
        TunesmithError: naming ``where`` and what to do.
    """
    kind = label_kind(value)
    if kind in ("list", "dict"):
        raise TunesmithError(f"{where}: {what} is a {kind}, not a class name ({several})")
    if kind == "boolean":
        raise TunesmithError(f"{where}: {what} is a boolean; write the classes as text (e.g. \"yes\"/\"no\") "
                             "or as 0/1, the same way in every row")  # fmt: skip
    if kind == "number" and not np.isfinite(value):
        raise TunesmithError(f"{where}: {what} is not a finite number, not a class name")
    if kind == "number" and not float(value).is_integer():
        raise TunesmithError(f"{where}: {what} is a number with decimals, not a class name; {REGRESSION_HINT}")
    if kind not in ("text", "number"):
        raise TunesmithError(f"{where}: {what} is a {kind}, not a class name")


def check_target(value: Any, where: str) -> None:
    """Refuses a regression target that is not a finite number.

    Raises:
        TunesmithError: naming ``where``.
    """
    kind = label_kind(value)
    if kind in ("boolean", "list", "dict"):
        raise TunesmithError(f"{where}: regression target {shown(value)} is a {kind}, not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TunesmithError(f"{where}: regression target {shown(value)} is not a number") from None
    if not np.isfinite(number):
        raise TunesmithError(f"{where}: regression target {shown(value)} is not a finite number "
                             "(NaN and infinity cannot be learned); fix or drop the row")  # fmt: skip


@dataclass
class LabelSpace:
    """Labels of one of the three text tasks, before and after the label space is fitted.

    Attributes:
        type: "single_label", "multi_label" or "regression".
        label_names: class names in id order (empty for regression, and before fitting).
        label_separator: splits a multi-label string such as "sport|politics".
    """

    type: str
    label_names: list[str] = field(default_factory=list)
    label_separator: str = "|"

    def _label_sets(self, labels: pd.Series) -> list[list[str]]:
        def split(value: Any) -> list[str]:
            if isinstance(value, (list, tuple, np.ndarray)):
                return [str(v).strip() for v in value]
            return [p.strip() for p in str(value).split(self.label_separator) if p.strip()]

        return [split(v) for v in labels]

    def classes_of(self, labels: pd.Series) -> pd.Series | None:
        """The classes the rows carry, one entry per class of a row (a multi-label row gives one
        per label), for counting; None for regression targets, which have no classes."""
        if self.type == "regression":
            return None
        if self.type == "multi_label":
            return pd.Series([name for names in self._label_sets(labels) for name in names], dtype=object)
        return labels

    def check_labels(self, labels: pd.Series, source: str, rows: list[int] | None = None) -> None:
        """Refuses label values that cannot be what the task learns, naming the row (``rows``:
        each value's 1-based data row in ``source``; by default its position).

        single_label: one text or whole number per row; multi_label: text (``a|b``) or a list of
        them; regression: a finite number. Lists, dicts and booleans are refused, and so is a
        column that mixes text with numbers ("1" and 1 would silently become one class).

        Raises:
            TunesmithError: the first bad value, with its row and what to do.
        """
        rows = list(rows) if rows is not None else list(range(1, len(labels) + 1))
        if self.type == "regression":
            for row, value in zip(rows, labels.tolist()):
                check_target(value, f"{source}, row {row}")
            return
        several = "several labels per row need task.type: multi_label" if self.type == "single_label" else (
            "a multi_label row holds text such as \"a|b\" or a list of texts")  # fmt: skip
        first: dict[str, tuple[int, Any]] = {}  # kind of scalar label -> its first row and value
        for row, value in zip(rows, labels.tolist()):
            where = f"{source}, row {row}"
            kind = label_kind(value)
            if kind == "list" and self.type == "multi_label":
                for item in value:
                    check_class(item, where, f"label {shown(item)} in {shown(value)}", several=several)
                    first.setdefault(label_kind(item), (row, item))
                continue
            check_class(value, where, f"label {shown(value)}", several=several)
            first.setdefault(kind, (row, value))
        if len(first) > 1:
            (kind, (row, value)), (other, (other_row, other_value)) = sorted(first.items(), key=lambda k: k[1][0])[:2]
            words = {"text": "text", "number": "a number"}
            raise TunesmithError(
                f"{source}, row {other_row}: label {shown(other_value)} is {words[other]}, but row {row}'s label "
                f'{shown(value)} is {words[kind]}; one label column must hold one kind of value ("1" and 1 '
                "would become one class): write every label the same way, e.g. all as text"
            )

    def normalise_labels(
        self, labels: pd.Series, *, source: str = "the labels", rows: list[int] | None = None
    ) -> pd.Series:
        """Canonical label values (strings; sorted joined sets for multi-label), for
        cleaning, splitting and stratification, after :meth:`check_labels`.

        Raises:
            TunesmithError: a label the task cannot learn, naming ``source`` and the row.
        """
        self.check_labels(labels, source, rows)
        if self.type == "multi_label":
            return pd.Series(
                [self.label_separator.join(sorted(set(s))) for s in self._label_sets(labels)],
                index=labels.index,
            )
        if self.type == "single_label":
            return labels.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip())
        return labels

    def fit_labels(self, train_labels: pd.Series, source: str) -> None:
        """Learns the label set from the training split.

        Raises:
            TunesmithError: fewer than two classes, or regression targets that are not numbers.
        """
        if self.type == "regression":
            self.encode_labels(train_labels, source)
            return
        if self.type == "multi_label":
            names = {name for s in self._label_sets(train_labels) for name in s}
        else:
            names = set(train_labels.map(str))
        if len(names) < 2:
            raise TunesmithError(
                f"{source}: the training data has only one label ({', '.join(names) or 'none'}); "
                "a classifier needs at least two"
            )
        self.label_names = sort_labels(names)

    def encode_labels(self, labels: pd.Series, source: str) -> list:
        """Targets for the loss: class ids, multi-hot rows, or floats.

        Raises:
            TunesmithError: a label that the training split does not have, or a bad number.
        """
        if self.type == "regression":
            values = pd.to_numeric(labels, errors="coerce").astype(float)
            bad = ~np.isfinite(values.to_numpy())
            if bad.any():  # check_labels names the file's row; here only the position is known
                position = int(bad.nonzero()[0][0])
                check_target(labels.iloc[position], f"{source}, position {position + 1}")
            return values.tolist()
        index = {name: i for i, name in enumerate(self.label_names)}
        if self.type == "multi_label":
            sets = self._label_sets(labels)
            unknown = sorted({n for s in sets for n in s} - index.keys())
        else:
            sets = [[str(v)] for v in labels]
            unknown = sorted({s[0] for s in sets} - index.keys())
        if unknown:
            hint = f"; the labels are numbers with decimals: {REGRESSION_HINT}" if looks_continuous(
                set(unknown) | set(self.label_names)) else ""  # fmt: skip
            raise TunesmithError(
                f"{source}: labels {unknown} do not occur in the training data "
                f"(known: {self.label_names}); the model could never predict them{hint}"
            )
        if self.type == "single_label":
            return [index[s[0]] for s in sets]
        rows = []
        for names in sets:
            row = [0.0] * len(index)
            for name in names:
                row[index[name]] = 1.0
            rows.append(row)
        return rows
