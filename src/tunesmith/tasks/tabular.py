"""Tables: one label (or one number) per row of a table whose columns mix free text, numbers and
categories (task.type ``tabular``).

The row is written as one sentence ("age is 39. workclass is Private. review is ...", a missing
cell as ``unknown``; data/table.py) and read by the text model as a sentence encoder (the masked
mean of its token states, models/pooled.py; with route fusion, beside a layer over the row's
numbers and categories, models/fusion.py), so the label space, loss,
metrics, intervals, calibration, every strategy, export and serving are the text classifier's
(:class:`~tunesmith.tasks.classification.TextClassificationTask`). What differs is how rows are
read and cleaned, turned into text, predicted from raw rows, and the baseline: a LightGBM model
on the same columns (models/boosting.py), fitted on the training split and scored on the same
held-out rows, so every run shows whether the transformer beats the usual tool for tables.

Each column's kind is declared (task.text_columns, numeric_columns, categorical_columns) or
detected from the training file; the statistics of each column (data.table.TableStatistics)
are fitted on the training split alone and saved in ``task.json``, which export and serve read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tunesmith.config import Config, DataConfig
from tunesmith.data.load import read_table
from tunesmith.data.prepare import PreparedData, prepare_records
from tunesmith.data.table import TableColumns, TableStatistics, detect_columns, is_blank, read_cells, serialise
from tunesmith.errors import TunesmithError
from tunesmith.models.boosting import METHOD, boosted_outputs
from tunesmith.models.load import ResolvedModel, load_mean_pooled_classifier, load_table_fusion_classifier, pad_token_id
from tunesmith.tasks.classification import TextClassificationTask, compute_logits, encode_features
from tunesmith.tasks.confidence import bootstrap_intervals
from tunesmith.tasks.contract import CHAT_NOTE, CardText, Encoded
from tunesmith.tasks.monitoring import pooled

NOT_YET = "reads one text column per row; tabular runs are described in data_manifest.json instead"


@dataclass
class TabularTask(TextClassificationTask):
    """A label or a number per table row (task.type ``tabular``).

    Attributes:
        route: task.route: ``serialise`` (the row as a sentence) or ``fusion`` (the sentence and
            the row's feature vector, models/fusion.py).
        declared: the columns the config declares by kind (None: detect them from the training file).
        columns: the feature columns by kind, once declared or detected.
        statistics: each column's statistics on the training split (after ``prepare``, or from ``task.json``).
        notes: lines for the user from reading the training file (what was detected, left out).
        target_scale: a regression's training targets' (standard deviation, mean): the model's
            head learns the standardised target and outputs it at this scale (models/pooled.py).
    """

    route: str = "serialise"
    declared: TableColumns | None = None
    columns: TableColumns | None = None
    statistics: TableStatistics | None = None
    notes: list[str] = field(default_factory=list)
    target_scale: tuple[float, float] = (1.0, 0.0)
    STAGES: ClassVar[frozenset[str]] = frozenset({"evaluate", "predict", "cv", "tune", "export", "serve", "monitor",
                                                  "retrain"})  # fmt: skip
    stage_notes: ClassVar[dict[str, str]] = {"chat": CHAT_NOTE, "inspect": f"inspect {NOT_YET}",
                                             "forgetting": "the forgetting check reads a retain set of texts"}  # fmt: skip
    baseline_probe: ClassVar[bool] = False  # its baseline is the boosting model (table_baseline)
    detects_label_errors: ClassVar[bool] = False  # data.clean.label_errors reads one text column

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> TabularTask:
        """The task of ``config`` (task.target, the declared columns, model.max_length), with the
        columns, statistics and label space of a run's ``task.json`` (``saved``)."""
        section, saved = config.task, saved or {}
        lists = {k: getattr(section, f"{k}_columns") for k in ("text", "numeric", "categorical")}
        declared = (
            TableColumns(**{k: v or [] for k, v in lists.items()})
            if any(v is not None for v in lists.values())
            else None
        )
        return cls(type="regression" if section.target == "regression" else "single_label",
                   label_names=list(saved.get("label_names") or []), max_length=config.model.max_length,
                   balance=config.data.balance, declared=declared, route=section.route,
                   columns=TableColumns.from_dict(saved["columns"]) if saved.get("columns") else None,
                   statistics=TableStatistics.from_dict(saved["statistics"]) if saved.get("statistics") else None)  # fmt: skip

    @property
    def kind(self) -> str:
        return "tabular"

    # -- data -------------------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors=None) -> PreparedData:
        """Reads every source (the training file first: it settles the columns), splits
        (stratified by label for classes), fits the label set and each column's statistics on
        the training split only, and records them in the manifest.

        Raises:
            TunesmithError: a data option that reads one text column, or any problem with the
                files, columns, cells or labels.
        """
        for key, value in (("data.clean.label_errors", config.data.clean.label_errors != "keep"),
                           ("data.slice_column", config.data.slice_column is not None)):  # fmt: skip
            if value:
                raise TunesmithError(f"{key} reads one text column; tabular runs do not support it yet")
        data = prepare_records(config.data, seed=config.runtime.seed, load=self.read, inputs=self.overlap_inputs,
                               stratify=self.stratify)  # fmt: skip
        train = data.splits["train"]
        self.fit_labels(train["label"], data.manifest["sources"]["train"]["source"])
        if self.type == "regression":
            targets = train["label"].astype(float)
            self.target_scale = (float(targets.std(ddof=0)) or 1.0, float(targets.mean()))
        for name in ("validation", "test"):
            if name in data.splits:
                self.encode_labels(data.splits[name]["label"], f"the {name} split")
        self.statistics = TableStatistics.fit(train, self.columns)
        data.manifest["table"] = {"columns": self.columns.to_dict(), "detected": self.declared is None,
                                  "notes": self.notes, "statistics_from": f"the {len(train)} training rows only",
                                  "statistics": self.statistics.to_dict(),
                                  "missing_cells": "written as 'unknown' in the row's text; the baseline fills "
                                                   "numbers with the training median and marks them"}  # fmt: skip
        return data

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One labelled table: its feature columns read by kind (data.table.read_cells), ``label``
        and ``row`` (the 1-based data row); rows without a label, with no filled feature, or
        repeating an earlier row exactly are dropped and counted. The first table read settles
        the columns when the config declares none.

        Raises:
            TunesmithError: a missing column (the columns present are listed), a label the task
                cannot learn (naming its row), a label outside a trained label space, or no rows.
        """
        table = read_table(spec, column_names=data.column_names, encoding_errors=data.encoding_errors)
        label_column = data.label_column or "label"
        if label_column not in table.frame.columns:
            raise TunesmithError(f"{table.source}: no label column {label_column!r} (data.label_column); columns: "
                                 f"{list(table.frame.columns)}")  # fmt: skip
        if self.columns is None:
            d = self.declared
            self.columns, self.notes = detect_columns(
                table.frame, label_column=label_column, source=table.source, text=d.text if d else None,
                numeric=d.numeric if d else None, categorical=d.categorical if d else None)  # fmt: skip
        self.require_columns(table.frame.columns, table.source)
        rows = pd.Series(range(1, len(table.frame) + 1), index=table.frame.index)
        cells, report = read_cells(table.frame.assign(row=rows), self.columns)
        frame = cells.assign(label=table.frame[label_column], row=rows)
        frame, counts = self._clean(frame, table.source)
        if self.label_names or self.type == "regression":
            self.encode_labels(frame["label"], table.source)
        entry = {"source": table.source, "sha256": table.sha256, "format": "table", "cleaning": counts,
                 "columns": {**self.columns.to_dict(), "label": label_column}, "cells": report,
                 **table.manifest_fields()}  # fmt: skip
        return frame, entry

    def require_columns(self, present, source: str) -> None:
        """Refuses a table that lacks a feature column, naming each one missing and what is there."""
        missing = [name for name in self.columns.names if name not in present]
        if missing:
            raise TunesmithError(f"{source}: no column {', '.join(map(repr, missing))}; the model reads "
                                 f"{self.columns.names} (columns here: {list(present)})")  # fmt: skip

    def _clean(self, frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, dict[str, int]]:
        counts = {"rows_in": len(frame)}
        names = self.columns.names
        missing = frame["label"].map(is_blank)
        empty = frame[names].isna().all(axis=1)
        counts["dropped_missing_label"], counts["dropped_empty_row"] = int(missing.sum()), int((empty & ~missing).sum())
        frame = frame[~missing & ~empty]
        return self.keep_distinct(frame, names, counts, source), counts

    def texts(self, frame: pd.DataFrame) -> list[str]:
        """Each row of a read table written as one sentence."""
        return serialise(frame, self.columns)

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """A row is the same input when every feature cell is."""
        return self.texts(frame)

    def row_inputs(self, frame: pd.DataFrame) -> list[str]:
        """What identifies each row in its predictions: the sentence the model read."""
        return self.texts(frame)

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """A Parquet table of the feature columns (under their names) and ``label``."""
        path = directory / f"{name}.parquet"
        frame[self.columns.names + ["label"]].to_parquet(path, index=False)
        return path, {"label_column": "label", "column_names": None}

    # -- encoding and prediction ----------------------------------------------------------
    def encode(self, processor: Any, splits: dict[str, pd.DataFrame]) -> Encoded:
        """The text classifier's encoding of each row's sentence; with route fusion, each row's
        feature vector beside it (``table_features``)."""
        encoded = super().encode(processor, {n: f.assign(text=self.texts(f)) for n, f in splits.items()})
        if self.route == "fusion":
            for name, frame in splits.items():
                self.add_vectors(encoded.features[name], frame)
            encoded.notes.append(f"Fusion: {len(self.statistics.feature_names())} features per row beside the text")
        encoded.notes[:0] = self.notes
        return encoded

    def add_vectors(self, features: list[dict], table: pd.DataFrame) -> list[dict]:
        """Route fusion: each row's feature vector (training statistics only) into its features."""
        if self.route == "fusion":
            for feature, vector in zip(features, self.statistics.vector(table)):
                feature["table_features"] = vector.tolist()
        return features

    def features_of(self, processor: Any, inputs: list) -> tuple[list[dict], list[str], list[str]]:
        """Model features of raw rows, each row's sentence, and each row's warning."""
        table, warnings = self.rows_of(inputs)
        texts = self.texts(table)
        features = encode_features(processor, texts, None, self.max_length)[0]
        return self.add_vectors(features, table), texts, warnings

    # -- model ------------------------------------------------------------------------------
    def load_model(self, resolved: ResolvedModel, dropout: float | None) -> tuple[Any, list[str]]:
        """The encoder read as a sentence encoder (its masked mean, models/pooled.py) under a new
        head; with route fusion, beside a layer over the row's feature vector (models/fusion.py).
        A regression's head outputs at the training targets' scale."""
        scale, shift = self.target_scale
        options = {"problem_type": self.problem_type, "label_names": self.label_names, "dropout": dropout,
                   "output_scale": scale, "output_shift": shift}  # fmt: skip
        if self.route != "fusion":
            return load_mean_pooled_classifier(resolved, **options)
        return load_table_fusion_classifier(resolved, num_table_features=len(self.statistics.feature_names()),
                                            **options)  # fmt: skip

    def rows_of(self, inputs: list) -> tuple[pd.DataFrame, list[str]]:
        """Raw rows (one dict of column -> value each) read as in training, and per row a
        warning: cells that are not numbers (read as missing) and categories training never saw.

        Raises:
            TunesmithError: an input that is not an object, or one that lacks a column, naming its position.
        """
        for number, item in enumerate(inputs, 1):
            if not isinstance(item, dict):
                raise TunesmithError(f"input {number}: a tabular run takes rows as objects "
                                     f'{{"column": value, ...}} with {self.columns.names}, not {str(item)[:80]!r}')  # fmt: skip
            self.require_columns(item.keys(), f"input {number}")
        frame = pd.DataFrame([{name: item[name] for name in self.columns.names} for item in inputs],
                             columns=self.columns.names).astype(object)  # fmt: skip
        frame["row"] = range(1, len(frame) + 1)
        table, _ = read_cells(frame, self.columns)
        lines: list[list[str]] = [[] for _ in inputs]
        for name in self.columns.numeric:
            for position in np.flatnonzero(np.isnan(table[name].to_numpy(dtype=float))):
                value = frame[name].iloc[position]
                if not is_blank(value):
                    lines[position].append(f"{name}: {str(value)[:40]!r} is not a number; read as missing")
        if self.statistics is not None:
            for position, found in enumerate(self.statistics.unseen(table)):
                lines[position] += found
        return table, ["; ".join(found) for found in lines]

    def predict(self, model, processor, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """The label (with class scores) or the value of each raw row, the sentence the model read,
        and a warning where a cell was not a number or a category was new."""
        features, texts, warnings = self.features_of(processor, inputs)
        logits = compute_logits(model, features, batch_size=64, pad_token_id=pad_token_id(processor),
                                device=next(model.parameters()).device)  # fmt: skip
        return self._answers(texts, logits, warnings, temperature)

    def _answers(self, texts: list[str], logits: np.ndarray, warnings: list[str],
                 temperature: float | None) -> list[dict]:  # fmt: skip
        """Prediction rows: the sentence the model read, the label and scores (or the value), the warning."""
        rows = self.prediction_rows(logits, temperature if self.calibrates else None)
        return [{"text": text, **row, **({"warning": warning} if warning else {})}
                for text, row, warning in zip(texts, rows, warnings)]  # fmt: skip

    def export_features(self, processor: Any, inputs: list) -> list[dict]:
        """Token ids of each raw row's sentence (and its feature vector, route fusion), as in training."""
        return self.features_of(processor, inputs)[0]

    def rows_from_logits(self, inputs: list, features: list[dict], logits: list[np.ndarray], *,
                         temperature: float | None = None) -> list[dict]:  # fmt: skip
        """The label or value of each raw row, the sentence the model read and its warning (as ``predict``)."""
        table, warnings = self.rows_of(inputs)
        return self._answers(self.texts(table), np.stack(logits), warnings, temperature)

    def read_inputs(self, path: Path) -> list:
        """The rows of a prediction input table (CSV, JSONL, Parquet), each as a dict of its
        feature columns (a missing cell as None).

        Raises:
            TunesmithError: an unreadable table, or one that lacks a feature column.
        """
        table = read_table(str(path))
        return self.table_inputs(table.frame, table.source)

    def table_inputs(self, frame: pd.DataFrame, source: str) -> list:
        """The rows of a table or a chunk of a file, each a dict of the feature columns."""
        self.require_columns(frame.columns, source)
        cells = frame[self.columns.names].astype(object)
        return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
                for row in cells.to_dict(orient="records")]  # fmt: skip

    # -- baseline (evaluate/baseline.py) ------------------------------------------------
    def table_baseline(self, splits: dict[str, pd.DataFrame], *, seed: int) -> dict[str, Any]:
        """The scores of a LightGBM model on the same columns (models/boosting.py), fitted on the
        training split and scored on each held-out split by this task's metrics, with bootstrap
        intervals of the main ones (1,000 resamples, 95%)."""
        held_out = [name for name in ("validation", "test") if name in splits and len(splits[name])]
        train = splits["train"]
        outputs = boosted_outputs(
            train, np.asarray(self.encode_labels(train["label"], "the train split")),
            [splits[name] for name in held_out], text=self.columns.text, numeric=self.columns.numeric,
            categorical=self.columns.categorical, regression=self.type == "regression",
            num_classes=self.num_outputs, seed=seed,
        )  # fmt: skip
        found: dict[str, Any] = {"method": METHOD, "model": "lightgbm", "train_rows": len(train)}
        for name, logits in zip(held_out, outputs):
            targets = np.asarray(self.encode_labels(splits[name]["label"], f"the {name} split"))
            scores = self.scores(logits, targets)
            predicted = logits[:, 0] if self.type == "regression" else logits.argmax(1)
            intervals = bootstrap_intervals(predicted, targets, kind=self.type, num_classes=self.num_outputs, seed=seed)
            found[name] = {k: v for k, v in scores.items() if isinstance(v, float)} | {
                "count": len(targets), "confidence_intervals": intervals}  # fmt: skip
        return found

    # -- shipping and monitoring ------------------------------------------------------------
    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The table model's part of the model card: its columns and how rows are read."""
        kinds = "; ".join(f"{kind}: {', '.join(getattr(self.columns, kind))}"
                          for kind in ("text", "numeric", "categorical") if getattr(self.columns, kind))  # fmt: skip
        target = ", ".join(self.label_names) if self.type != "regression" else "a number"
        return CardText(
            title=f"Table {'regressor' if self.type == 'regression' else 'classifier'} (rows written as text)",
            purpose=f"It predicts {target} for a table row with the columns {kinds}.",
            data=f"Label distribution (train): {manifest['splits']['train'].get('labels')}. Column statistics "
            "(training rows only) are in data_manifest.json under table.",
            limitation=f"Each row is written as one sentence ('COLUMN is VALUE.') and cut at {max_length} tokens "
            f"({truncated_train} training rows were); numbers are read as words, so magnitudes are learnt "
            "from examples, not from arithmetic. A missing cell is written 'unknown'.",
            usage="`tunesmith predict RUN_DIR --input ROWS.csv` (a table with the same columns); serve takes "
            '{"inputs": [{"column": value, ...}]}.',
        )

    def export_description(self) -> dict[str, Any]:
        """An export reads the token ids of each row written as a sentence."""
        found = {
            "inputs": "token ids of each row written as 'COLUMN is VALUE.' sentences",
            "text_normalisation": "each cell's whitespace collapsed; a missing cell written 'unknown'",
            "columns": self.columns.to_dict() if self.columns else None,
            "route": self.route,
        }
        if self.route == "fusion" and self.statistics is not None:
            found["table_features"] = self.statistics.feature_names()
        return found

    def monitor_inputs(self, frame: pd.DataFrame) -> list:
        """Each row's feature cells, as a dict (what ``predict`` takes)."""
        return self.table_inputs(frame, "the run's data")

    def column_values(self, inputs: list) -> dict[str, tuple[str, list]]:
        """Monitor's per-column drift (tasks.contract.ColumnMonitored): each number column's values
        (KS) and each category column's values (PSI); text columns drift with the text checks."""
        table, _ = self.rows_of(inputs)
        found: dict[str, tuple[str, list]] = {n: ("ks", table[n].astype(float).tolist()) for n in self.columns.numeric}
        for name in self.columns.categorical:
            found[name] = ("psi", ["(missing)" if v is None else v for v in table[name].tolist()])
        return found

    def monitor_texts(self, inputs: list) -> list[str]:
        """Each row's sentence."""
        return self.texts(self.rows_of(inputs)[0])

    def embed(self, model: Any, processor: Any, inputs: list) -> np.ndarray:
        """The encoder's mean-pooled states over each row's sentence."""
        return pooled(model.base_model, processor, self.monitor_texts(inputs), max_length=self.max_length)

    def to_dict(self) -> dict[str, Any]:
        """What training learned (``task.json``): the kind, target, labels, columns and statistics."""
        return {"type": self.kind, "target": "regression" if self.type == "regression" else "classification",
                "route": self.route,
                "label_names": self.label_names, "columns": self.columns.to_dict() if self.columns else None,
                "statistics": self.statistics.to_dict() if self.statistics else None}  # fmt: skip
