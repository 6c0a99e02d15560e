"""Tables whose columns mix free text, numbers and categories (task.type tabular): which column
is which, how each kind of cell is read, the statistics fitted on the training rows, and each
row written as one sentence for a text model.

Written here rather than taken from a library: scikit-learn's ``ColumnTransformer`` builds
feature matrices (models/boosting.py uses it for the baseline), but this task also needs the
row as text (the serialisation of TabLLM and LIFT: "age is 39. workclass is Private."), and
reports per column, with row numbers, of what was missing or unreadable, for the manifest and
for each prediction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import TunesmithError

KINDS = ("text", "numeric", "categorical")
"""The kinds of feature column."""
MISSING_WORD = "unknown"
"""How a missing cell is written in a row's sentence (the text model sees that it is missing)."""
NUMERIC_SHARE = 0.95
"""A column is detected as numeric when at least this share of its filled cells are numbers."""
ONE_HOT_LIMIT = 50
"""A category column's most frequent training values that get their own entry in a row's vector."""
SUMMARIES = {"median": np.median, "mean": np.mean, "std": np.std, "min": np.min, "max": np.max}
"""What TableStatistics keeps of a number column's filled training cells (0.0 for a column with none)."""
RESERVED = ("label", "row")
"""Names the task uses for the target and the 1-based data row: a feature column may not have them."""


@dataclass
class TableColumns:
    """The feature columns of a table, by kind, in the table's order within each kind."""

    text: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Every feature column: text, then numeric, then categorical."""
        return self.text + self.numeric + self.categorical

    def kind_of(self, name: str) -> str:
        """The kind of one feature column."""
        return next(kind for kind in KINDS if name in getattr(self, kind))

    def to_dict(self) -> dict[str, list[str]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TableColumns:
        return cls(**{kind: list(saved.get(kind) or []) for kind in KINDS})


def _filled(values: pd.Series) -> pd.Series:
    """The cells that hold something (not NaN/None, not blank text)."""
    return values[~values.map(is_blank)]


def is_blank(value: Any) -> bool:
    """A missing cell: None, NaN, pandas' NA or NaT, or text of only whitespace."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return True
    return isinstance(value, str) and not value.strip()


def cell_text(value: Any) -> str:
    """A category's or a text's cell as text, the same however the reader typed it: a whole
    number as digits ("7", whether it came as 7, 7.0 or "7"; pandas makes 7.0 of 7 in a column
    with a gap), whitespace collapsed."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return " ".join(str(value).split())


def numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The cells as floats (NaN where blank or not a number) and a mask of the cells that held
    something that is not a number ("abc", "12 kg"): the wrong-type cells."""
    blank = values.map(is_blank).to_numpy()
    parsed = pd.to_numeric(values.where(~blank, None).map(_number_text), errors="coerce").to_numpy(dtype=float)
    parsed[~np.isfinite(parsed)] = np.nan
    return parsed, ~blank & np.isnan(parsed)


def _number_text(value: Any) -> Any:
    if isinstance(value, bool):  # True is not the number 1 in a table of numbers
        return "not a number"
    return value.strip() if isinstance(value, str) else value


def _category_limit(rows: int) -> int:
    """At most this many distinct values make a column of words categorical rather than text."""
    return max(10, min(50, rows // 20))


def detect_columns(frame: pd.DataFrame, *, label_column: str, source: str, text: list[str] | None = None,
                   numeric: list[str] | None = None, categorical: list[str] | None = None,
                   ) -> tuple[TableColumns, list[str]]:  # fmt: skip
    """The feature columns of a training table, declared or detected, and lines saying what was
    detected and what was left out.

    Declared columns (any of the three lists given) are used and no others. Otherwise every
    column but the label is used: numeric when at least ``NUMERIC_SHARE`` of its filled cells
    are numbers, categorical when it has few distinct values (``_category_limit``), else text;
    a column with no filled cell, one value throughout, or the row numbers is left out.

    Raises:
        TunesmithError: a declared column that the table lacks, a feature column named like a
            reserved column, or no feature column at all.
    """
    present = [c for c in frame.columns if c != label_column]
    notes: list[str] = []
    if any(v is not None for v in (text, numeric, categorical)):
        columns = TableColumns(list(text or []), list(numeric or []), list(categorical or []))
        for kind in KINDS:
            for name in getattr(columns, kind):
                if name == label_column:
                    raise TunesmithError(f"{source}: column {name!r} is the label (data.label_column); it cannot "
                                         f"also be a feature (task.{kind}_columns)")  # fmt: skip
                if name not in frame.columns:
                    raise TunesmithError(f"{source}: no feature column {name!r} (task.{kind}_columns); columns: "
                                         f"{present}")  # fmt: skip
    else:
        columns = TableColumns()
        for name in present:
            kind = _detected_kind(frame[name])
            if kind is None:
                notes.append(
                    f"column {name!r} left out: it holds {'nothing' if _filled(frame[name]).empty else 'one value'}"
                )
            elif kind == "numeric" and is_row_number(frame[name]):
                notes.append(f"column {name!r} left out: it counts the rows (an index, not a feature)")
            else:
                getattr(columns, kind).append(str(name))
        notes.insert(0, "Columns detected (set task.text_columns, numeric_columns, categorical_columns to change): "
                        + "; ".join(f"{kind} {', '.join(getattr(columns, kind)) or '-'}" for kind in KINDS))  # fmt: skip
    clash = [name for name in columns.names if name in RESERVED]
    if clash:
        raise TunesmithError(f"{source}: a feature column may not be named {clash[0]!r} (tunesmith's own name for "
                             f"the {'target' if clash[0] == 'label' else 'data row'}); rename it in the file")  # fmt: skip
    if not columns.names:
        raise TunesmithError(f"{source}: no feature column besides the label {label_column!r}; columns: {present}")
    return columns, notes


def is_row_number(values: pd.Series) -> bool:
    """Whether a column numbers the rows, 0 or 1 upwards in order (a saved index, not a feature)."""
    parsed, wrong = numbers(values)
    if wrong.any() or np.isnan(parsed).any() or len(parsed) < 2:
        return False
    return bool(np.array_equal(parsed, np.arange(len(parsed))) or np.array_equal(parsed, np.arange(1, len(parsed) + 1)))


def _detected_kind(values: pd.Series) -> str | None:
    filled = _filled(values)
    distinct = filled.map(str).nunique()
    if filled.empty or (distinct < 2 and len(filled) == len(values)):  # one value and gaps: a flag, kept
        return None
    if values.dtype != bool and not filled.map(lambda v: isinstance(v, bool)).any():
        parsed, wrong = numbers(filled)
        if (~wrong).mean() >= NUMERIC_SHARE:
            return "numeric"
    return "categorical" if distinct <= _category_limit(len(values)) else "text"


def read_cells(frame: pd.DataFrame, columns: TableColumns) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The feature columns with each cell read for its kind: numbers as floats (NaN where
    missing or not a number), categories and texts as whitespace-collapsed strings (None where
    missing), and a report per column: missing cells, and wrong-type cells with the first rows.

    ``frame`` must have ``row`` (the 1-based data row) for the report.
    """
    read, report = {}, {}
    for name in columns.names:
        values = frame[name]
        kind = columns.kind_of(name)
        if kind == "numeric":
            read[name], wrong = numbers(values)
            missing = np.isnan(read[name]) & ~wrong
            entry = {"missing": int(missing.sum()), "not_a_number": int(wrong.sum())}
            if wrong.any():
                entry["not_a_number_rows"] = frame["row"].to_numpy()[wrong][:5].tolist()
                entry["not_a_number_examples"] = [str(v)[:40] for v in values.to_numpy()[wrong][:3]]
        else:
            read[name] = values.map(lambda v: None if is_blank(v) else cell_text(v))
            entry = {"missing": int(read[name].isna().sum())}
        report[name] = entry
    return pd.DataFrame(read, index=frame.index), report


@dataclass
class TableStatistics:
    """What the training rows say about each feature column, fitted on them alone (never on
    validation or test rows): for numbers the median, mean, standard deviation, range and
    missing share; for categories the values seen, most frequent first, and the missing share."""

    rows: int
    numeric: dict[str, dict[str, float]]
    categorical: dict[str, dict[str, Any]]

    @classmethod
    def fit(cls, train: pd.DataFrame, columns: TableColumns) -> TableStatistics:
        """Statistics of ``train``, a table as :func:`read_cells` returns it."""
        numeric = {}
        for name in columns.numeric:
            values = train[name].to_numpy(dtype=float)
            filled = values[~np.isnan(values)]
            numeric[name] = {key: _round(summary(filled)) if filled.size else 0.0 for key, summary in SUMMARIES.items()}
            numeric[name]["missing_share"] = _round(1 - filled.size / max(len(values), 1))
        categorical = {}
        for name in columns.categorical:
            counts = train[name].dropna().value_counts()
            categorical[name] = {"values": [str(v) for v in counts.index],
                                 "missing_share": _round(train[name].isna().mean()) if len(train) else 0.0}  # fmt: skip
        return cls(rows=len(train), numeric=numeric, categorical=categorical)

    def unseen(self, table: pd.DataFrame) -> list[list[str]]:
        """Per row of a table read by :func:`read_cells`: one line for each category training never saw."""
        found: list[list[str]] = [[] for _ in range(len(table))]
        for name, stats in self.categorical.items():
            known = set(stats["values"])
            for position, value in enumerate(table[name].tolist()):
                if value is not None and value not in known:
                    found[position].append(f"{name}: {value[:40]!r} was not seen in training")
        return found

    def feature_names(self) -> list[str]:
        """The entries of :meth:`vector`, in order: per number its normalised value and, where
        training rows lacked some, ``COLUMN (missing)``; per category column one entry for each
        of its ``ONE_HOT_LIMIT`` most frequent training values, ``(other)`` and ``(missing)``."""
        names = []
        for name, stats in self.numeric.items():
            names += [name] + ([f"{name} (missing)"] if stats["missing_share"] > 0 else [])
        for name, stats in self.categorical.items():
            names += [f"{name}={v}" for v in stats["values"][:ONE_HOT_LIMIT]] + [f"{name} (other)", f"{name} (missing)"]
        return names

    def vector(self, table: pd.DataFrame) -> np.ndarray:
        """Each row of a table read by :func:`read_cells` as numbers for a model, laid out as
        :meth:`feature_names`: a number as (value - training mean) / training standard deviation,
        clipped to +-10, and 0 where missing; a category one-hot, a value outside the training
        rows' most frequent ones in ``(other)``. Only training statistics are used."""
        parts = []
        for name, stats in self.numeric.items():
            values = table[name].to_numpy(dtype=float)
            missing = np.isnan(values)
            scaled = np.clip((values - stats["mean"]) / (stats["std"] or 1.0), -10.0, 10.0)
            parts.append(np.where(missing, 0.0, scaled)[:, None])
            if stats["missing_share"] > 0:
                parts.append(missing.astype(float)[:, None])
        for name, stats in self.categorical.items():
            known = {value: i for i, value in enumerate(stats["values"][:ONE_HOT_LIMIT])}
            hot = np.zeros((len(table), len(known) + 2))
            for row, value in enumerate(table[name].tolist()):
                hot[row, len(known) + 1 if value is None else known.get(value, len(known))] = 1.0
            parts.append(hot)
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(table), 0), np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TableStatistics:
        return cls(rows=int(saved["rows"]), numeric=dict(saved["numeric"]), categorical=dict(saved["categorical"]))


def _round(value: float) -> float:
    return float(f"{float(value):.6g}")


def format_number(value: float) -> str:
    """A number as a row's sentence gives it: a whole number in full, others to 6 significant digits."""
    if math.isnan(value):
        return MISSING_WORD
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def serialise(table: pd.DataFrame, columns: TableColumns) -> list[str]:
    """Each row of a table read by :func:`read_cells` as one sentence: ``"COLUMN is VALUE."`` per
    feature column in :attr:`TableColumns.names` order, a missing cell as ``unknown``."""
    parts = []
    for name in columns.names:
        if columns.kind_of(name) == "numeric":
            cells = [format_number(v) for v in table[name].to_numpy(dtype=float)]
        else:
            cells = [MISSING_WORD if v is None else v for v in table[name].tolist()]
        parts.append([f"{name} is {cell}." for cell in cells])
    return [" ".join(row) for row in zip(*parts)] if parts else []
