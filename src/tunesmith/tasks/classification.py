"""Sequence-level tasks over text: single-label, multi-label and regression.

A task turns raw labels into targets, owns the loss, turns logits into predictions
and computes its metrics. The training loop knows nothing else about the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tunesmith.data.batching import eval_batches, pad_batch
from tunesmith.errors import TunesmithError
from tunesmith.tasks import metrics as metric_fns

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def _label_kind(value: Any) -> str:
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


def _shown(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _looks_continuous(names: set[str]) -> bool:
    """Whether class names are all numbers and some have decimals (regression targets?)."""
    try:
        values = [float(n) for n in names]
    except ValueError:
        return False
    return any(np.isfinite(v) and not float(v).is_integer() for v in values)


REGRESSION_HINT = "did you mean task.type: regression?"


def _sort_labels(values: set[str]) -> list[str]:
    """Numeric labels sort as numbers ("2" before "10"), others alphabetically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


@dataclass
class TextClassificationTask:
    """Labels, loss, predictions and metrics for one of the three sequence tasks.

    Attributes:
        type: "single_label", "multi_label" or "regression".
        label_names: class names in id order (empty for regression).
        threshold: multi-label decision threshold on the sigmoid.
        label_separator: splits a multi-label string such as "sport|politics".
        class_weights: optional per-class loss weights (single-label).
    """

    type: str
    label_names: list[str] = field(default_factory=list)
    threshold: float = 0.5
    label_separator: str = "|"
    class_weights: list[float] | None = None

    # Every stage but chat; retrain (new labelled rows, same classes) is single-label only.
    STAGES: ClassVar[frozenset[str]] = frozenset(
        {"evaluate", "predict", "cv", "tune", "inspect", "export", "serve", "monitor", "forgetting"}
    )

    @property
    def kind(self) -> str:
        """The ``task.type`` this task implements."""
        return self.type

    @property
    def stages(self) -> frozenset[str]:
        """The stages after training that this task supports (see ``tasks.build.require_stage``)."""
        return self.STAGES | {"retrain"} if self.type == "single_label" else self.STAGES

    # -- labels -----------------------------------------------------------------
    @property
    def problem_type(self) -> str:
        return PROBLEM_TYPES[self.type]

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "regression" else len(self.label_names)

    @property
    def default_metric(self) -> tuple[str, str]:
        """The validation metric that selects checkpoints, and whether to max or min it."""
        return {"single_label": ("macro_f1", "max"), "multi_label": ("micro_f1", "max")}.get(self.type, ("mse", "min"))

    @property
    def metric_names(self) -> list[str]:
        """Scalar validation metrics that train.metric may name."""
        names = {
            "single_label": ["accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1",
                             "weighted_precision", "weighted_recall"],
            "multi_label": ["subset_accuracy", "hamming_loss", "micro_f1", "macro_f1", "weighted_f1",
                            "micro_precision", "micro_recall"],
            "regression": ["mse", "mae", "r2", "spearman"],
        }[self.type]  # fmt: skip
        return names + ["loss"]

    def _label_sets(self, labels: pd.Series) -> list[list[str]]:
        def split(value: Any) -> list[str]:
            if isinstance(value, (list, tuple, np.ndarray)):
                return [str(v).strip() for v in value]
            return [p.strip() for p in str(value).split(self.label_separator) if p.strip()]

        return [split(v) for v in labels]

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
                self._check_target(value, f"{source}, row {row}")
            return
        first: dict[str, tuple[int, Any]] = {}  # kind of scalar label -> its first row and value
        for row, value in zip(rows, labels.tolist()):
            where = f"{source}, row {row}"
            kind = _label_kind(value)
            if kind == "list" and self.type == "multi_label":
                for item in value:
                    self._check_class(item, where, f"label {_shown(item)} in {_shown(value)}")
                    first.setdefault(_label_kind(item), (row, item))
                continue
            self._check_class(value, where, f"label {_shown(value)}")
            first.setdefault(kind, (row, value))
        if len(first) > 1:
            (kind, (row, value)), (other, (other_row, other_value)) = sorted(first.items(), key=lambda k: k[1][0])[:2]
            words = {"text": "text", "number": "a number"}
            raise TunesmithError(
                f"{source}, row {other_row}: label {_shown(other_value)} is {words[other]}, but row {row}'s label "
                f'{_shown(value)} is {words[kind]}; one label column must hold one kind of value ("1" and 1 '
                "would become one class): write every label the same way, e.g. all as text"
            )

    def _check_class(self, value: Any, where: str, what: str) -> None:
        kind = _label_kind(value)
        several = "several labels per row need task.type: multi_label" if self.type == "single_label" else (
            "a multi_label row holds text such as \"a|b\" or a list of texts")  # fmt: skip
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

    @staticmethod
    def _check_target(value: Any, where: str) -> None:
        kind = _label_kind(value)
        if kind in ("boolean", "list", "dict"):
            raise TunesmithError(f"{where}: regression target {_shown(value)} is a {kind}, not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TunesmithError(f"{where}: regression target {_shown(value)} is not a number") from None
        if not np.isfinite(number):
            raise TunesmithError(f"{where}: regression target {_shown(value)} is not a finite number "
                                 "(NaN and infinity cannot be learned); fix or drop the row")  # fmt: skip

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
            self.encode(train_labels, source)
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
        self.label_names = _sort_labels(names)

    def encode(self, labels: pd.Series, source: str) -> list:
        """Targets for the loss: class ids, multi-hot rows, or floats.

        Raises:
            TunesmithError: a label that the training split does not have, or a bad number.
        """
        if self.type == "regression":
            values = pd.to_numeric(labels, errors="coerce").astype(float)
            bad = ~np.isfinite(values.to_numpy())
            if bad.any():  # check_labels names the file's row; here only the position is known
                position = int(bad.nonzero()[0][0])
                self._check_target(labels.iloc[position], f"{source}, position {position + 1}")
            return values.tolist()
        index = {name: i for i, name in enumerate(self.label_names)}
        if self.type == "multi_label":
            sets = self._label_sets(labels)
            unknown = sorted({n for s in sets for n in s} - index.keys())
        else:
            sets = [[str(v)] for v in labels]
            unknown = sorted({s[0] for s in sets} - index.keys())
        if unknown:
            hint = f"; the labels are numbers with decimals: {REGRESSION_HINT}" if _looks_continuous(
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

    # -- model side -------------------------------------------------------------
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed (not averaged) loss over the batch; the loop divides by the example count
        of the whole accumulation window so every example weighs the same."""
        if self.type == "regression":
            return F.mse_loss(logits.squeeze(-1), targets.float(), reduction="sum")
        if self.type == "multi_label":
            return F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="sum")
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, dtype=logits.dtype, device=logits.device)
            # Weighted CE normalises by the summed weights; the loop normalises by the count,
            # so take the per-example weighted terms and sum them.
            return (F.cross_entropy(logits, targets, reduction="none") * weight[targets]).sum()
        return F.cross_entropy(logits, targets, reduction="sum")

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        if self.type == "regression":
            return logits[:, 0]
        if self.type == "multi_label":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def predict(self, logits: np.ndarray) -> list:
        """Human-readable predictions: a label, a list of labels, or a number per row."""
        scores = self.probabilities(logits)
        if self.type == "regression":
            return scores.astype(float).tolist()
        if self.type == "multi_label":
            return [[self.label_names[j] for j in np.flatnonzero(row >= self.threshold)] for row in scores]
        return [self.label_names[i] for i in scores.argmax(axis=1)]

    def prediction_rows(self, logits: np.ndarray, temperature: float | None = None) -> list[dict[str, Any]]:
        """One dict per row as predict and serve return it: ``value``, or ``label``/``labels``
        with every label's score (softmax at ``temperature`` when one was fitted)."""
        predictions = self.predict(logits)
        if self.type == "regression":
            return [{"value": value} for value in predictions]
        scores = self.probabilities(logits / temperature if temperature else logits)
        key = "label" if self.type == "single_label" else "labels"
        return [{key: prediction, "scores": {n: round(float(s), 6) for n, s in zip(self.label_names, row)}}
                for prediction, row in zip(predictions, scores)]  # fmt: skip

    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """All metrics of the task for one split."""
        if self.type == "regression":
            return metric_fns.regression_metrics(logits[:, 0], targets)
        if self.type == "multi_label":
            predicted = (self.probabilities(logits) >= self.threshold).astype(int)
            return metric_fns.multilabel_metrics(predicted, targets.astype(int), self.label_names)
        return metric_fns.classification_metrics(logits.argmax(axis=1), targets, self.label_names)

    # -- what the training loop calls -------------------------------------------
    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        """One padded batch, with the example and non-pad token counts the logs report."""
        batch = pad_batch(features, pad_token_id)
        batch["num_examples"], batch["num_tokens"] = len(features), int(batch["attention_mask"].sum())
        return batch

    def count(self, features: list[dict]) -> int:
        """The loss of a step is divided by this, summed over the step's batches: examples."""
        return len(features)

    def batch_loss(self, model, batch: dict, device) -> torch.Tensor:
        """Summed loss of one batch."""
        logits = model(**{k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}).logits
        return self.loss(logits.float(), batch["labels"].to(device))

    def evaluate(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device) -> dict[str, Any]:
        """Every metric of the task on features, plus the mean loss (as ``loss``)."""
        logits = compute_logits(model, features, batch_size=batch_size, pad_token_id=pad_token_id, device=device)
        return self.scores(logits, np.asarray([f["labels"] for f in features]))

    def scores(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Every metric of the task for these logits, plus the mean loss (as ``loss``)."""
        metrics = self.metrics(logits, targets)
        metrics["loss"] = float(
            self.loss(torch.from_numpy(logits), torch.as_tensor(targets)).item() / max(len(targets), 1)
        )
        return metrics

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """What the model reads in each row of a split table (for the train/held-out overlap check)."""
        return frame["text"].tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "label_names": self.label_names,
            "threshold": self.threshold,
            "label_separator": self.label_separator,
        }


def text_warning(text: str) -> dict[str, str]:
    """``{"warning": ...}`` for a prediction row whose input text is empty or only whitespace
    (its scores say what the model guesses with nothing to read), else nothing."""
    if str(text).strip():
        return {}
    return {"warning": "empty text: there was nothing to read, so the scores only reflect the model's bias"}


def encode_features(tokenizer, texts: list[str], targets: list | None, max_length: int) -> tuple[list[dict], int]:
    """Tokenizes once, without padding (batches pad to their own longest row).

    Returns:
        One dict per example (token ids, optional token types, labels) and how many
        examples were truncated to max_length.
    """
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    full_lengths = tokenizer(texts, add_special_tokens=False, padding=False, return_length=True)["length"]
    special = tokenizer.num_special_tokens_to_add(pair=False)
    truncated = sum(length + special > max_length for length in full_lengths)
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    features = []
    for i in range(len(texts)):
        feature = {k: encoded[k][i] for k in keys}
        if targets is not None:
            feature["labels"] = targets[i]
        features.append(feature)
    return features, truncated


@torch.no_grad()
def compute_logits(model, features: list[dict], *, batch_size: int, pad_token_id: int, device) -> np.ndarray:
    """Logits for every feature, in the features' order; batches sorted by length."""
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    for indices in eval_batches([len(f["input_ids"]) for f in features], batch_size=batch_size):
        batch = pad_batch([features[i] for i in indices], pad_token_id)
        logits = model(**{k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}).logits.float().cpu().numpy()
        if out is None:
            out = np.empty((len(features), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits
    model.train(was_training)
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def text_logits(model, tokenizer, texts: list[str], *, max_length: int, targets: list | None = None) -> np.ndarray:
    """Logits of a trained text model for ``texts`` (on the CPU, 64 at a time): the scores behind
    predict, evaluate and the estimator's predict_proba.

    Args:
        max_length: the run's model.max_length; longer texts are truncated as in training.
        targets: the encoded labels, when the features should carry them.
    """
    features, _ = encode_features(tokenizer, texts, targets, max_length)
    return compute_logits(model, features, batch_size=64, pad_token_id=tokenizer.pad_token_id or 0, device="cpu")
