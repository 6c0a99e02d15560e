"""A run's per-row predictions (``predictions_SPLIT.parquet``) and what is read from them: the
most confident mistakes, whether two runs were scored on the same rows, and a paired bootstrap
interval for the difference between two runs on the same test set.

The file is written with pyarrow, its columns typed (``tasks.contract.PREDICTION_COLUMNS``) and
what the task says about ``row_metric`` (its name, direction and the metric it is the mean of)
kept in the schema's metadata under ``tunesmith``. The paired interval is scipy's
(``scipy.stats.bootstrap`` with ``paired=True``, percentile method): both runs' rows are
resampled together, so the interval reflects the test set's size, not the two models' own noise.
The calibration sentence is written here because no library words one: it reads the bins of
``tasks.confidence.calibration_bins``, the same ones the reliability diagram draws.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tunesmith.errors import TunesmithError
from tunesmith.runs import atomic_write
from tunesmith.tasks.contract import PREDICTION_COLUMNS, Predictions

METADATA_KEY = b"tunesmith"
CALIBRATED_GAP = 0.02
"""A mean gap between confidence and accuracy below this (2 points) reads as calibrated."""


def predictions_path(run: Path, split: str) -> Path:
    """Where a run keeps one split's predictions."""
    return Path(run) / f"predictions_{split}.parquet"


def write_predictions(path: Path, predictions: Predictions) -> None:
    """Writes ``predictions`` as Parquet (through a temporary file and a rename).

    Raises:
        TunesmithError: the task's rows lack a column of ``PREDICTION_COLUMNS`` (a task bug).
    """
    frame = predictions.rows
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise TunesmithError(f"{path}: the task's predictions lack the columns {missing}")
    gold = pa.array(frame["gold"].tolist())
    predicted = pa.array(frame["predicted"].tolist())
    if pa.types.is_null(predicted.type):  # nothing predicted (not generated): typed as the gold column
        predicted = pa.nulls(len(frame), gold.type)
    columns = {
        "row": pa.array(frame["row"].to_numpy(dtype=np.int64)),
        "input": pa.array(frame["input"].astype(str).tolist(), pa.string()),
        "gold": gold, "predicted": predicted,
        "scores": pa.array([[float(v) for v in s] for s in frame["scores"]], pa.list_(pa.float64())),
        "confidence": pa.array(frame["confidence"].to_numpy(dtype=float)),
        "row_metric": pa.array(frame["row_metric"].to_numpy(dtype=float)),
    }  # fmt: skip
    about = {"metric": predictions.metric, "higher_is_better": predictions.higher_is_better,
             "mean_of": predictions.mean_of, "by_class": predictions.by_class}  # fmt: skip
    table = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(about).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write(Path(path), buffer.getvalue())


def read_predictions(path: Path) -> Predictions:
    """A predictions file as :class:`~tunesmith.tasks.contract.Predictions`.

    Raises:
        TunesmithError: the file is not a predictions file tunesmith wrote.
    """
    try:
        table = pq.read_table(path)
        about = json.loads((table.schema.metadata or {})[METADATA_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException) as error:
        raise TunesmithError(f"{path} is not a predictions file tunesmith wrote ({error}); train the run again or "
                             "remove it") from None  # fmt: skip
    return Predictions(table.to_pandas(), metric=about["metric"], higher_is_better=about["higher_is_better"],
                       mean_of=about["mean_of"], by_class=about["by_class"])  # fmt: skip


def mistakes(predictions: Predictions, *, per_class: int = 3, limit: int = 10) -> list[dict[str, Any]]:
    """The rows the model got wrong that most deserve a look: the most confident mistakes first
    (where the model gives a confidence), else the worst ``row_metric`` first; ``per_class`` of
    each gold class where the task has one class per row, else ``limit`` in all.

    A row is a mistake when its ``row_metric`` is short of perfect: below 1 for a score where
    higher is better (right/wrong, F1, ROUGE-L), above 0 for an error (squared error).
    """
    rows = predictions.rows
    metric = rows["row_metric"].to_numpy(dtype=float)
    wrong = np.isfinite(metric) & ((metric < 1) if predictions.higher_is_better else (metric > 0))
    found = rows[wrong].assign(_worst=-metric[wrong] if predictions.higher_is_better else metric[wrong])
    confident = found["confidence"].notna().any()
    order = ["confidence", "_worst"] if confident else ["_worst"]
    found = found.sort_values(order, ascending=False, kind="stable")
    if predictions.by_class:
        found = found.groupby("gold", sort=True, group_keys=False).head(per_class).sort_values(
            ["gold", *order], ascending=[True] + [False] * len(order), kind="stable")  # fmt: skip
    else:
        found = found.head(limit)
    return [prediction_row(r, predictions.metric) for r in found.itertuples()]


def prediction_row(row: Any, metric: str) -> dict[str, Any]:
    """One row of a predictions table as the report and the board show it.

    Args:
        row: a row of ``Predictions.rows`` (from ``itertuples``).
        metric: the name ``row_metric`` is shown under.

    Returns:
        ``row``, ``input``, ``gold`` and ``predicted`` (lists on one line), ``confidence`` (None
        where the model gives none) and ``metric``.
    """
    return {"row": int(row.row), "input": row.input, "gold": shown(row.gold), "predicted": shown(row.predicted),
            "confidence": float(row.confidence) if np.isfinite(row.confidence) else None,
            metric: float(row.row_metric)}  # fmt: skip


def shown(value: Any) -> Any:
    """A list (labels, tags, answers) as one line; anything else as it is."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join("-" if v is None else str(v) for v in value) or "(none)"
    return value


def calibration_sentence(bins: list[dict], split: str) -> str:
    """What the reliability diagram of ``bins`` (``calibration_bins``) shows, in words from the
    bins themselves: over- or under-confident (or close to calibrated), with the bin that shows
    it most ("when it says 90% it is right 78% of the time") and the means over all rows."""
    total = sum(b["count"] for b in bins)
    if not total:
        return ""
    confidence = sum(b["count"] * b["confidence"] for b in bins) / total
    accuracy = sum(b["count"] * b["accuracy"] for b in bins) / total
    means = f"over all {total} rows it says {confidence:.0%} on average and is right {accuracy:.0%} of the time"
    noisy = " (few rows: the bins are noisy)" if total < 100 else ""
    gap = confidence - accuracy
    if abs(gap) < CALIBRATED_GAP:
        return f"On the {split} split the model's confidence matches how often it is right: {means}{noisy}."
    verdict = "over-confident" if gap > 0 else "under-confident"
    leaning = [b for b in bins if (b["confidence"] - b["accuracy"]) * gap > 0]
    shown = max(leaning, key=lambda b: b["count"] * abs(b["confidence"] - b["accuracy"]))
    return (f"On the {split} split the model is {verdict}: when it says {shown['confidence']:.0%} it is right "
            f"{shown['accuracy']:.0%} of the time ({shown['count']} rows scored {shown['low']:.0%}–"
            f"{shown['high']:.0%}); {means}{noisy}.")  # fmt: skip


def scored_data(run: Path, split: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies the rows a run was scored on: their count and a SHA-256 of each row's
    input and gold answer in order (from its predictions file); a run without one (trained
    before they were written) is identified by its data manifest's row count and source hashes."""
    path = predictions_path(run, split)
    if path.is_file():
        rows = read_predictions(path).rows
        text = json.dumps([[i, _plain(g)] for i, g in zip(rows["input"], rows["gold"])], ensure_ascii=False)
        return {"split": split, "rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    sources = {n: s.get("sha256") for n, s in manifest.get("sources", {}).items()}
    rows = manifest.get("splits", {}).get(split, {}).get("rows")
    text = json.dumps({"split": split, "rows": rows, "sources": sources}, sort_keys=True)
    return {"split": split, "rows": rows, "sha256": hashlib.sha256(text.encode()).hexdigest(), "from": "manifest"}


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value.item() if isinstance(value, np.generic) else value


def data_warnings(names: list[str], scored: list[dict[str, Any]]) -> list[str]:
    """One line per run scored on other rows than the first run (``scored_data``): another
    split, row count or content; or rows that cannot be checked (a run without predictions)."""
    first, warnings = scored[0], []
    for name, data in zip(names[1:], scored[1:]):
        split = data["split"]
        if split != first["split"]:
            said = f"{name} was scored on its {split} split and {names[0]} on its {first['split']} split"
        elif data["rows"] != first["rows"]:
            said = f"{name} was scored on {data['rows']} {split} rows and {names[0]} on {first['rows']}"
        elif data.get("from") != first.get("from"):  # one run predates predictions files
            said = (f"cannot tell whether {name} was scored on the same {split} rows as {names[0]}: one of them has "
                    f"no predictions_{split}.parquet (train it again)")  # fmt: skip
        elif data["sha256"] != first["sha256"]:
            said = (f"{name} and {names[0]} were scored on different {split} rows ({data['rows']} each, but not the "
                    "same inputs and answers)")  # fmt: skip
        else:
            continue
        warnings.append(f"{said}: their scores are not comparable")
    return warnings


def paired_difference(baseline: Predictions, other: Predictions, *, samples: int, level: float,
                      seed: int) -> dict[str, Any] | None:  # fmt: skip
    """The difference of the mean ``row_metric`` (``other`` minus ``baseline``) over the rows
    both scored, with a paired percentile bootstrap interval over rows (scipy.stats.bootstrap,
    paired=True, a fixed seed); None when the two measure different things or share under
    two rows."""
    if (baseline.metric, baseline.mean_of) != (other.metric, other.mean_of):
        return None
    from scipy.stats import bootstrap

    joined = baseline.rows[["row", "row_metric"]].merge(other.rows[["row", "row_metric"]], on="row")
    first, second = joined["row_metric_x"].to_numpy(float), joined["row_metric_y"].to_numpy(float)
    keep = np.isfinite(first) & np.isfinite(second)
    first, second = first[keep], second[keep]
    if len(first) < 2:
        return None
    difference = float(second.mean() - first.mean())
    if np.all(second - first == second[0] - first[0]):  # every row differs alike: no spread to resample
        low = high = difference
    else:
        found = bootstrap((first, second), lambda a, b, axis: b.mean(axis) - a.mean(axis), paired=True,
                          vectorized=True, n_resamples=samples, confidence_level=level, method="percentile",
                          rng=np.random.default_rng(seed))  # fmt: skip
        low, high = float(found.confidence_interval.low), float(found.confidence_interval.high)
    return {"metric": baseline.mean_of or f"mean {baseline.metric}", "row_metric": baseline.metric,
            "higher_is_better": baseline.higher_is_better, "rows": int(len(first)), "difference": difference,
            "low": low, "high": high, "confidence_level": level, "samples": samples, "seed": seed,
            "method": "paired percentile bootstrap over rows (scipy.stats.bootstrap, paired=True)"}  # fmt: skip
