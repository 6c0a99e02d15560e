"""Sentence-pair classification: one label for a pair of texts (paraphrase or not, duplicate
question or not, entailment / neutral / contradiction).

The two texts are encoded together with the tokenizer's pair encoding
(``[CLS] first [SEP] second [SEP]`` for BERT, with token types), so the encoder attends across
them; labels, loss, metrics, intervals, calibration and export are the single-label text
classifier's (:class:`~tunesmith.tasks.classification.TextClassificationTask`). What differs
is only how rows are read, cleaned, encoded and predicted: that is this module.

Rows are cleaned here rather than by data/clean.py, whose steps read one text column: texts
are whitespace-normalised, rows with an empty text or a missing label are dropped, and exact
duplicates (both texts and the label) are kept once; each count is in the data manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tunesmith.config import Config, DataConfig
from tunesmith.data.load import read_table
from tunesmith.data.prepare import PreparedData, prepare_records
from tunesmith.data.quality import Finding, InspectionRecords, TokenLengths
from tunesmith.errors import TunesmithError
from tunesmith.models.load import pad_token_id
from tunesmith.tasks.classification import TextClassificationTask, compute_logits, text_warning
from tunesmith.tasks.contract import CHAT_NOTE, CardText, Encoded
from tunesmith.tasks.monitoring import pooled

FIRST, SECOND = "text", "text_pair"
"""The table columns of the two texts after reading (and the keys of a prediction input)."""


def _normalised(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "" if pd.isna(v) else " ".join(str(v).split()))


@dataclass
class PairClassificationTask(TextClassificationTask):
    """One label per pair of texts (task.type ``pair_classification``).

    Attributes:
        first_column: the column of the first text of each pair (task.first_column).
        second_column: the column of the second text (task.second_column).
    """

    first_column: str = "sentence1"
    second_column: str = "sentence2"
    kind: ClassVar[str] = "pair_classification"
    stages: ClassVar[frozenset[str]] = frozenset(
        {"evaluate", "predict", "retrain", "cv", "inspect", "tune", "export", "serve", "monitor", "forgetting"}
    )
    forgetting_probe: ClassVar[str | None] = "embedding"  # a probe on the encoder's features
    stage_notes: ClassVar[dict[str, str]] = {"chat": CHAT_NOTE}
    detects_label_errors: ClassVar[bool] = False  # the label-error search reads one text column

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> PairClassificationTask:
        """The task of ``config`` (task.first_column/second_column, model.max_length), with the
        label space of a run's ``task.json`` (``saved``), or empty before training."""
        return cls(type="single_label", label_names=list((saved or {}).get("label_names") or []),
                   max_length=config.model.max_length, first_column=config.task.first_column,
                   second_column=config.task.second_column)  # fmt: skip

    # -- data -------------------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors: Callable | None = None) -> PreparedData:
        """Reads and cleans every source, splits (stratified by label) and fits the label set.

        Raises:
            TunesmithError: a data option that reads one text column (data.clean.label_errors,
                data.slice_column), or any problem with the files, columns or labels.
        """
        for key, value in (("data.clean.label_errors", config.data.clean.label_errors != "keep"),
                           ("data.slice_column", config.data.slice_column is not None)):  # fmt: skip
            if value:
                raise TunesmithError(f"{key} reads one text column; pair_classification runs do not support it yet")
        data = prepare_records(config.data, seed=config.runtime.seed, load=self.read, inputs=self.overlap_inputs)
        self.fit_labels(data.splits["train"]["label"], data.manifest["sources"]["train"]["source"])
        for name in ("validation", "test"):
            if name in data.splits:
                self.encode_labels(data.splits[name]["label"], f"the {name} split")
        return data

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One labelled table of pairs: ``text``, ``text_pair``, ``label`` and ``row`` (the
        1-based data row), cleaned, and its manifest entry.

        Raises:
            TunesmithError: a missing column (the columns present are listed), a label the task
                cannot learn (naming its row), a label outside a trained label space, or no rows.
        """
        table = read_table(spec, column_names=data.column_names, encoding_errors=data.encoding_errors)
        label_column = data.label_column or "label"
        wanted = {"task.first_column": self.first_column, "task.second_column": self.second_column,
                  "data.label_column": label_column}  # fmt: skip
        for key, column in wanted.items():
            if column not in table.frame.columns:
                raise TunesmithError(f"{table.source}: no column {column!r} ({key}); columns: "
                                     f"{list(table.frame.columns)}")  # fmt: skip
        frame = pd.DataFrame({FIRST: _normalised(table.frame[self.first_column]),
                              SECOND: _normalised(table.frame[self.second_column]),
                              "label": table.frame[label_column], "row": range(1, len(table.frame) + 1)})  # fmt: skip
        frame, counts = self._clean(frame, table.source)
        if self.label_names:
            self.encode_labels(frame["label"], table.source)
        entry = {"source": table.source, "sha256": table.sha256, "format": "pairs", "cleaning": counts,
                 "columns": {"first": self.first_column, "second": self.second_column, "label": label_column},
                 **table.manifest_fields()}  # fmt: skip
        return frame, entry

    def _clean(self, frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, dict[str, int]]:
        counts = {"rows_in": len(frame)}
        empty = (frame[FIRST] == "") | (frame[SECOND] == "")
        missing = frame["label"].isna()
        counts["dropped_empty_text"], counts["dropped_missing_label"] = int(empty.sum()), int((missing & ~empty).sum())
        frame = frame[~empty & ~missing]
        return self.keep_distinct(frame, [FIRST, SECOND], counts, source), counts

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """A pair is the same input when both its texts are."""
        return [f"{a}\n{b}" for a, b in zip(frame[FIRST], frame[SECOND])]

    def row_inputs(self, frame: pd.DataFrame) -> list[str]:
        """What identifies each row in its predictions: both texts, one line each."""
        return self.overlap_inputs(frame)

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """A Parquet table of the two texts (under task.first_column and task.second_column) and ``label``."""
        path = directory / f"{name}.parquet"
        frame[[FIRST, SECOND, "label"]].set_axis([self.first_column, self.second_column, "label"], axis=1).to_parquet(
            path, index=False
        )
        return path, {"label_column": "label", "column_names": None}

    # -- encoding ---------------------------------------------------------------------
    def encode_pairs(self, tokenizer, firsts: list[str], seconds: list[str], targets: list | None
                     ) -> tuple[list[dict], int]:  # fmt: skip
        """Pair encodings cut to max_length (the longer text loses tokens first), and how many
        pairs were cut."""
        encoded = tokenizer(firsts, seconds, truncation="longest_first", max_length=self.max_length, padding=False)
        special = tokenizer.num_special_tokens_to_add(pair=True)
        lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"])
                   + len(tokenizer(b, add_special_tokens=False)["input_ids"]) for a, b in zip(firsts, seconds)]  # fmt: skip
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        features = [{k: encoded[k][i] for k in keys} for i in range(len(firsts))]
        for feature, target in zip(features, targets or []):
            feature["labels"] = target
        return features, sum(length + special > self.max_length for length in lengths)

    def encode(self, processor: Any, splits: dict[str, pd.DataFrame]) -> Encoded:
        """Pair encodings and class ids per split.

        Raises:
            TunesmithError: a label outside the label space, naming the split.
        """
        features, truncated, notes = {}, {}, []
        for name, frame in splits.items():
            targets = self.encode_labels(frame["label"], name)
            features[name], truncated[name] = self.encode_pairs(processor, frame[FIRST].tolist(),
                                                                frame[SECOND].tolist(), targets)  # fmt: skip
            if truncated[name]:
                notes.append(f"{name}: {truncated[name]} of {len(frame)} pairs truncated to {self.max_length} tokens")
        return Encoded(features, truncated, notes)

    # -- prediction -------------------------------------------------------------------
    def pairs_of(self, inputs: list) -> list[tuple[str, str]]:
        """Each input as (first, second): a two-item list or tuple, or a dict with ``text`` and
        ``text_pair`` (or the task's two column names).

        Raises:
            TunesmithError: an input of another shape, naming its position.
        """
        pairs = []
        for number, item in enumerate(inputs, 1):
            if isinstance(item, dict):
                first = item.get(FIRST, item.get(self.first_column))
                second = item.get(SECOND, item.get(self.second_column))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                first, second = item
            else:
                first = second = None
            if not isinstance(first, str) or not isinstance(second, str):
                raise TunesmithError(
                    f"input {number}: a pair_classification run takes pairs of texts: [first, second] or "
                    f'{{"{FIRST}": ..., "{SECOND}": ...}}, not {str(item)[:80]!r}'
                )
            pairs.append((" ".join(first.split()), " ".join(second.split())))
        return pairs

    def predict(self, model, processor, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """The label and class scores for each pair (softmax at the run's ``temperature``)."""
        pairs = self.pairs_of(inputs)
        features, _ = self.encode_pairs(processor, [a for a, _ in pairs], [b for _, b in pairs], None)
        logits = compute_logits(model, features, batch_size=64, pad_token_id=pad_token_id(processor),
                                device=next(model.parameters()).device)  # fmt: skip
        rows = self.prediction_rows(logits, temperature)
        return [{FIRST: a, SECOND: b, **row, **text_warning(a and b)} for (a, b), row in zip(pairs, rows)]

    def export_features(self, processor: Any, inputs: list) -> list[dict]:
        """Pair encodings of raw pairs, as in training."""
        pairs = self.pairs_of(inputs)
        return self.encode_pairs(processor, [a for a, _ in pairs], [b for _, b in pairs], None)[0]

    def rows_from_logits(self, inputs: list, features: list[dict], logits: list, *,
                         temperature: float | None = None) -> list[dict]:  # fmt: skip
        """The label and class scores of each pair, with the pair."""
        rows = self.prediction_rows(np.stack(logits), temperature)
        return [{FIRST: a, SECOND: b, **row} for (a, b), row in zip(self.pairs_of(inputs), rows)]

    def read_inputs(self, path: Path) -> list:
        """The pairs of a prediction input file: a table with the two text columns."""
        table = read_table(str(path))
        return self.table_inputs(table.frame, table.source)

    def table_inputs(self, frame: pd.DataFrame, source: str) -> list:
        """The pairs of a table or a chunk of a file: its two text columns."""
        missing = [c for c in (self.first_column, self.second_column) if c not in frame.columns]
        if missing:
            raise TunesmithError(f"{source}: no column {missing[0]!r}; columns: {list(frame.columns)}")
        return [[a, b] for a, b in zip(_normalised(frame[self.first_column]), _normalised(frame[self.second_column]))]

    # -- shipping ---------------------------------------------------------------------
    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The pair classifier's part of the model card."""
        return CardText(
            title="Sentence-pair classifier",
            purpose=f"It predicts {', '.join(self.label_names)} for a pair of texts ({self.first_column}, "
            f"{self.second_column}).",
            data=f"Label distribution (train): {manifest['splits']['train'].get('labels')}",
            limitation=f"A pair longer than {max_length} tokens is cut, the longer text first "
            f"({truncated_train} training pairs were).",
            usage="`tunesmith predict RUN_DIR --input PAIRS.csv` (a table with the two text columns).",
        )

    def export_description(self) -> dict[str, Any]:
        """An export reads the token ids and token types of a pair encoding."""
        return {"inputs": "token ids of a text pair (the tokenizer's pair encoding)",
                "text_normalisation": "collapse whitespace"}  # fmt: skip

    # -- monitoring (tunesmith monitor; the label and confidence checks are the classifier's) --
    def monitor_inputs(self, frame: pd.DataFrame) -> list:
        """Each row's pair, ``[first, second]``."""
        return [[a, b] for a, b in zip(frame[FIRST], frame[SECOND])]

    def monitor_texts(self, inputs: list) -> list[str]:
        """Both texts of each pair, one after the other."""
        return [f"{a} {b}" for a, b in self.pairs_of(inputs)]

    def embed(self, model: Any, processor: Any, inputs: list) -> np.ndarray:
        """The encoder's mean-pooled states over each pair's encoding (as predicted)."""
        pairs = self.pairs_of(inputs)
        return pooled(model.base_model, processor, [a for a, _ in pairs], [b for _, b in pairs],
                      max_length=self.max_length)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """What training learned (``task.json``): the kind, the labels, the two columns."""
        return {"type": self.kind, "label_names": self.label_names, "first_column": self.first_column,
                "second_column": self.second_column}  # fmt: skip

    # -- inspect ----------------------------------------------------------------------
    def inspection_records(self, spec: str, data: DataConfig) -> InspectionRecords:
        """One table of pairs for ``tunesmith inspect`` (data.quality.InspectedTask): both texts
        compared for duplicates and leakage, the labels counted, and as findings the rows
        training drops (an empty text, a missing label) or refuses (a label it cannot learn).

        Raises:
            TunesmithError: an unreadable file, or a missing column (the columns present are listed).
        """
        from tunesmith.data.clean import is_missing

        table = read_table(spec, column_names=data.column_names, encoding_errors=data.encoding_errors)
        label_column = data.label_column or "label"
        for key, column in {"task.first_column": self.first_column, "task.second_column": self.second_column,
                            "data.label_column": label_column}.items():  # fmt: skip
            if column not in table.frame.columns:
                raise TunesmithError(f"{table.source}: no column {column!r} ({key}); columns: "
                                     f"{list(table.frame.columns)}")  # fmt: skip
        firsts, seconds = _normalised(table.frame[self.first_column]), _normalised(table.frame[self.second_column])
        labels, findings, keep = table.frame[label_column], [], []
        for position, (first, second, label) in enumerate(zip(firsts, seconds, labels)):
            where = f"{table.source}, row {position + 1}"
            if not first or not second:
                findings.append(Finding("empty text", position + 1, where, f"the {'first' if not first else 'second'} "
                                        "text is empty", "warning", "training drops the row"))  # fmt: skip
            elif is_missing(label):
                findings.append(Finding("missing label", position + 1, where, "no label", "warning",
                                        "training drops the row"))  # fmt: skip
            else:
                keep.append(position)
        rows = [p + 1 for p in keep]
        findings += self._label_findings(labels.iloc[keep], table.source, rows)
        try:
            names = self.normalise_labels(labels.iloc[keep], source=table.source, rows=rows).map(str).tolist()
        except TunesmithError:  # listed among the findings; counted as written
            names = labels.iloc[keep].map(str).tolist()
        frame = pd.DataFrame({FIRST: firsts.iloc[keep].tolist(), SECOND: seconds.iloc[keep].tolist()})
        return InspectionRecords(source=table.source, rows=rows, where=[f"{table.source}, row {r}" for r in rows],
                                 texts=self.overlap_inputs(frame), targets=names, labels=[[n] for n in names],
                                 findings=findings, frame=frame)  # fmt: skip

    def _label_findings(self, labels: pd.Series, source: str, rows: list[int]) -> list[Finding]:
        """The labels training refuses, one finding per row (or one for a column mixing text and numbers)."""
        try:
            self.check_labels(labels, source, rows)
            return []
        except TunesmithError as whole:
            found = []
            for row, value in zip(rows, labels.tolist()):
                try:
                    self.check_labels(pd.Series([value]), source, [row])
                except TunesmithError as error:
                    found.append(Finding("label training refuses", row, f"{source}, row {row}",
                                         str(error).removeprefix(f"{source}, row {row}: "), "error",
                                         "training refuses the file"))  # fmt: skip
            return found or [Finding("label training refuses", rows[0], source, str(whole), "error",
                                     "training refuses the file")]  # fmt: skip

    def inspection_lengths(self, processor: Any, records: InspectionRecords) -> list[TokenLengths]:
        """Tokens of each pair's encoding (both texts and the special tokens) against model.max_length."""
        frame = records.frame
        encoded = processor(frame[FIRST].tolist(), frame[SECOND].tolist())["input_ids"] if len(frame) else []
        return [TokenLengths("pair", [len(ids) for ids in encoded], self.max_length,
                             "cut to model.max_length, the longer text first")]  # fmt: skip
