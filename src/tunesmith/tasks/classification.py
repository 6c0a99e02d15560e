"""Sequence-level tasks over text: single-label, multi-label and regression.

One class, :class:`TextClassificationTask`, implements the task contract of tasks/contract.py
for the three kinds: it reads and checks labelled tables, fits the label space, encodes texts,
owns the loss, turns logits into predictions, and scores a split (metrics, bootstrap intervals,
calibration, slices and plots). The training loop knows nothing else about the task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tunesmith.config import BalanceConfig, Config, DataConfig, ZeroShotConfig
from tunesmith.data.augment import embedding_neighbours
from tunesmith.data.balance import class_weights
from tunesmith.data.batching import eval_batches, pad_batch
from tunesmith.data.prepare import PreparedData, load_examples, prepare_data
from tunesmith.errors import TunesmithError
from tunesmith.models.load import (
    ResolvedModel,
    load_mean_pooled_classifier,
    load_prompted_scorer,
    load_sequence_classifier,
    load_trained_model,
    pad_token_id,
    text_processor,
)
from tunesmith.models.pooled import set_label_head
from tunesmith.tasks import metrics as metric_fns
from tunesmith.tasks.confidence import confidence_report, fit_temperature
from tunesmith.tasks.contract import CHAT_NOTE, CardText, Encoded, ExportBatch, Predictions, ScoreContext, Watch
from tunesmith.tasks.fairness import slice_metrics
from tunesmith.tasks.inputs import check_texts, read_texts, table_texts
from tunesmith.tasks.labels import LabelSpace
from tunesmith.tasks.monitoring import CONFIDENCE, LABEL_SHARES, VALUES, pooled
from tunesmith.tasks.plots import plot_confusion_matrix, plot_reliability

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "table_features")
"""What a classifier's forward reads from a batch (``table_features``: a table row's vector, tasks/tabular.py)."""

PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


@dataclass
class TextClassificationTask(LabelSpace):
    """The task contract (tasks/contract.py) for one of the three sequence tasks over text; the
    label space (``type``, ``label_names``, ``label_separator``, the label checks) is
    :class:`~tunesmith.tasks.labels.LabelSpace`'s.

    Attributes:
        threshold: multi-label decision threshold on the sigmoid.
        class_weights: optional per-class loss weights (single-label; fitted by :meth:`encode`).
        max_length: model.max_length: texts are cut to this many tokens.
        balance: data.balance: class weights are fitted from the training split when its
            method is "class_weights".
        head: what the linear head reads: ``model``, the architecture's own pooling; ``mean``,
            the mean of the encoder's token states (models/pooled.py), which
            model.strategy=contrastive trains; ``cosine``, that mean L2-normalised, so a head
            of label embeddings scores cosines (model.strategy=zero_shot); ``prompt``, an
            instruction-tuned causal LM scores each description as its answer
            (models/prompted.py, model.zero_shot.method=prompt).
        label_texts: task.labels: the fixed label set, each with its description.
        zero_shot: model.zero_shot (the instruction and calibration of the prompt head).
    """

    threshold: float = 0.5
    class_weights: list[float] | None = None
    max_length: int = 128
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    head: str = "model"
    label_texts: dict[str, str] | None = None
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)

    # Every stage but chat.
    STAGES: ClassVar[frozenset[str]] = frozenset(
        {"evaluate", "predict", "cv", "tune", "inspect", "export", "serve", "monitor", "forgetting", "retrain"}
    )
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    pipeline_tag: ClassVar[str] = "text-classification"
    peft_task_type: ClassVar[str | None] = "SEQ_CLS"
    forgetting_probe: ClassVar[str | None] = "embedding"
    baseline_probe: ClassVar[bool] = True  # evaluation.baseline (tasks.contract.Probed)
    stage_notes: ClassVar[dict[str, str]] = {"chat": CHAT_NOTE}
    quantization: ClassVar[str] = "dynamic"  # int8 weights; activation ranges measured per batch
    export_formats: ClassVar[frozenset[str]] = frozenset({"hf", "onnx"})

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> TextClassificationTask:
        """The task of ``config`` (its task section, model.max_length and data.balance), with the
        label space of a run's ``task.json`` (``saved``), or empty before training."""
        options = config.task.model_dump(exclude={"type"})  # threshold and label_separator: multi_label only
        texts, zero_shot = options.get("labels"), config.model.zero_shot
        heads = {"contrastive": "mean", "zero_shot": "prompt" if zero_shot.method == "prompt" else "cosine"}
        task = cls(type=config.task.type, label_names=list((saved or {}).get("label_names") or texts or []),
                   max_length=config.model.max_length, balance=config.data.balance, label_texts=texts,
                   head=heads.get(config.model.strategy, "model"), zero_shot=zero_shot,
                   **{k: options[k] for k in ("threshold", "label_separator") if k in options})  # fmt: skip
        if task.head == "prompt":  # the LM scores every label in a Python loop: no ONNX graph of it
            task.export_formats = frozenset({"hf"})
        return task

    @property
    def kind(self) -> str:
        """The ``task.type`` this task implements."""
        return self.type

    @property
    def stages(self) -> frozenset[str]:
        """The stages after training that this task supports (see ``tasks.build.require_stage``)."""
        return self.STAGES

    @property
    def calibrates(self) -> bool:
        """Temperature scaling applies to a single-label classifier's probabilities."""
        return self.type == "single_label"

    @property
    def stratify(self) -> bool:
        """Splits and folds keep the label distribution of a single-label task."""
        return self.type == "single_label"

    @property
    def detects_label_errors(self) -> bool:
        """Label-error detection (one class per row, scored out of fold) applies: single-label."""
        return self.type == "single_label"

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

    # -- data stage ---------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors: Callable | None = None) -> PreparedData:
        """The data stage of data/prepare.py (clean, split, balance, augment) with the label
        space fitted on the training split; forgetting.rehearsal's rows join the training split.

        Args:
            config: the run's config (``data``, ``inspect``, ``forgetting``, ``model.name`` for
                the synonyms of data.augment, ``runtime.seed``).
            find_label_errors: finds the suspects of data.clean.label_errors.

        Raises:
            TunesmithError: any problem with the files, columns, labels or split sizes.
        """

        def synonyms(words: set[str]) -> dict[str, list[str]]:
            return embedding_neighbours(config.model.name, words, config.data.augment.neighbours)

        return prepare_data(config.data, self, seed=config.runtime.seed,
                            similarity=config.inspect.near_duplicate_similarity,
                            find_label_errors=find_label_errors, synonyms=synonyms,
                            rehearsal=self._rehearsal(config))  # fmt: skip

    def _rehearsal(self, config: Config) -> tuple[pd.DataFrame, str, float] | None:
        """forgetting.rehearsal's rows (cleaned like training data), for prepare_data."""
        settings = config.forgetting
        if settings.rehearsal is None:
            return None
        if self.type != "single_label":
            raise TunesmithError("forgetting.rehearsal mixes labelled rows into training: it needs "
                                 "task.type=single_label")  # fmt: skip
        columns = config.data.model_copy(update={"text_column": settings.text_column, "label_column": settings.label_column,
                                                 "column_names": None, "slice_column": None})  # fmt: skip
        frame, entry = load_examples(settings.rehearsal, columns, self)
        return frame, entry["source"], settings.rehearsal_ratio

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One labelled file, cleaned as in training (``text``, ``label``, ``row``, and ``slice``
        with data.slice_column), and its manifest entry.

        Raises:
            TunesmithError: a bad file or column, or a label outside the trained label space.
        """
        frame, entry = load_examples(spec, data, self)
        if self.label_texts:
            outside = ~frame["label"].map(str).isin(list(self.label_texts))
            if outside.any():
                first = frame[outside].iloc[0]
                raise TunesmithError(
                    f"{entry['source']}, row {first['row']}: label {str(first['label'])!r} is not among task.labels "
                    f"{list(self.label_texts)} ({int(outside.sum())} rows have such labels); add it to task.labels "
                    "or drop those rows"
                )
        if self.label_names or self.type == "regression":  # no classes before training: nothing to refuse
            self.encode_labels(frame["label"], entry["source"])
        return frame, entry

    def keep_distinct(self, frame: pd.DataFrame, keys: list[str], counts: dict[str, int], source: str) -> pd.DataFrame:
        """The last cleaning steps of a kind that reads its own rows (pairs, tables): labels
        normalised (refused with their row when unlearnable), exact repeats of ``keys`` and the
        label kept once; ``dropped_duplicates`` and ``rows_out`` are added to ``counts``.

        Raises:
            TunesmithError: a label the task cannot learn, or no row left (naming ``source``).
        """
        frame = frame.assign(label=self.normalise_labels(frame["label"], source=source, rows=frame["row"].tolist()))
        duplicated = frame.duplicated(keys + ["label"])
        counts["dropped_duplicates"] = int(duplicated.sum())
        frame = frame[~duplicated].reset_index(drop=True)
        counts["rows_out"] = len(frame)
        if frame.empty:
            raise TunesmithError(f"{source}: no usable rows left after cleaning ({counts})")
        return frame

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """What the model reads in each row of a split table (for the train/held-out overlap check)."""
        return frame["text"].tolist()

    def fit(self, train: pd.DataFrame) -> None:
        """The label space of a table's ``label`` column (numbers are only checked, regression);
        with task.labels, that set."""
        if self.label_texts:  # read() has refused rows with other labels, naming the file and row
            self.label_names = list(self.label_texts)
            return
        self.fit_labels(train["label"], "the training rows")

    # -- cross-validation -----------------------------------------------------------
    def groups(self, frame: pd.DataFrame) -> np.ndarray | None:
        """None: rows stand alone (cv.group_column groups them)."""
        return None

    def source_rows(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Each row's position in its table (``row`` is 1-based)."""
        return frame["row"].to_numpy() - 1

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """A Parquet table of ``text`` and ``label`` (and ``slice``, read as data.slice_column)."""
        columns = ["text", "label"] + (["slice"] if "slice" in frame else [])
        path = directory / f"{name}.parquet"
        frame[columns].to_parquet(path, index=False)
        return path, {"text_column": "text", "label_column": "label", "column_names": None,
                      "slice_column": "slice" if "slice" in frame else None}  # fmt: skip

    # -- model --------------------------------------------------------------------
    def load_processor(self, resolved: ResolvedModel, *, trained: bool = False) -> Any:
        """The tokenizer, checked against model.max_length; a trained run's as saved."""
        return text_processor(resolved, max_length=self.max_length, trained=trained)

    def load_model(self, resolved: ResolvedModel, dropout: float | None) -> tuple[Any, list[str]]:
        """The pretrained encoder with a sequence-classification head for the label space (over
        the mean of its token states unless ``head`` is the model's own)."""
        descriptions = [(self.label_texts or {}).get(name, name) for name in self.label_names]
        if self.head == "prompt":
            return load_prompted_scorer(resolved, label_names=self.label_names, descriptions=descriptions,
                                        instruction=self.zero_shot.instruction, calibrate=self.zero_shot.calibrate)  # fmt: skip
        if self.head == "model":
            return load_sequence_classifier(resolved, num_labels=self.num_outputs, problem_type=self.problem_type,
                                            label_names=self.label_names, dropout=dropout)  # fmt: skip
        model, new = load_mean_pooled_classifier(resolved, problem_type=self.problem_type, label_names=self.label_names,
                                                 dropout=dropout, normalize=self.head == "cosine")  # fmt: skip
        if self.head == "cosine":  # zero-shot: the head is the label descriptions, complete as loaded
            set_label_head(model, self.load_processor(resolved), descriptions, max_length=self.max_length)
            new = []
        return model, new

    def load_trained(self, model_dir: Path) -> Any:
        """A trained run's model (``auto_class``) from its ``model/`` directory."""
        return load_trained_model(self.auto_class, model_dir)

    def encode(self, processor: Any, splits: dict[str, pd.DataFrame]) -> Encoded:
        """Token ids and targets per split, cut to max_length; with data.balance.method
        class_weights, the loss's class weights fitted on the train split.

        Raises:
            TunesmithError: a label outside the label space, naming the split.
        """
        features, truncated, notes = {}, {}, []
        for name, frame in splits.items():
            targets = self.encode_labels(frame["label"], name)
            features[name], truncated[name] = encode_features(processor, frame["text"].tolist(), targets,
                                                              self.max_length)  # fmt: skip
            if truncated[name]:
                notes.append(
                    f"{name}: {truncated[name]} of {len(frame)} examples truncated to {self.max_length} tokens"
                )
        if self.balance.method == "class_weights" and "train" in features:
            ids = np.asarray([f["labels"] for f in features["train"]])
            self.class_weights = class_weights(ids, self.label_names, self.balance.class_weights)
            notes.append(f"Class weights: {dict(zip(self.label_names, (round(w, 3) for w in self.class_weights)))}")
        return Encoded(features, truncated, notes)

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
        """Softmax (single-label) or sigmoid (multi-label) scores; a regression's values."""
        if self.type == "regression":
            return logits[:, 0]
        if self.type == "multi_label":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def decode(self, logits: np.ndarray) -> list:
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
        predictions = self.decode(logits)
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

    # -- evaluation -----------------------------------------------------------------
    def split_logits(self, model, processor, features: list[dict], *, batch_size: int, device) -> np.ndarray:
        """The model's logits for a split's features, in their order (what calibrate and score use)."""
        return compute_logits(model, features, batch_size=batch_size, pad_token_id=pad_token_id(processor),
                              device=device)  # fmt: skip

    def calibrate(self, model, processor, features: list[dict], *, batch_size: int, device) -> float | None:
        """The temperature that calibrates the softmax on these (validation) features
        (single-label); None for the other kinds or without features."""
        if not self.calibrates or not features:
            return None
        logits = self.split_logits(model, processor, features, batch_size=batch_size, device=device)
        return fit_temperature(logits, np.asarray([f["labels"] for f in features]))

    def score(self, model, processor, frame: pd.DataFrame, features: list[dict],
              context: ScoreContext) -> dict[str, Any]:  # fmt: skip
        """Every metric of one split, with bootstrap intervals, calibration and per-slice metrics
        where they apply; the reliability diagram, the confusion matrix and (with
        ``context.examples_plot``) the plot of misclassified examples under ``context.artifact``.

        Raises:
            TunesmithError: evaluation.positive_label is not a label.
        """
        logits = self.split_logits(model, processor, features, batch_size=context.batch_size, device=context.device)
        targets = np.asarray([f["labels"] for f in features])
        metrics = self.metrics(logits, targets)
        context.predictions(self.split_predictions(frame, logits, targets, context.temperature))
        metrics |= self._confidence(logits, targets, context)
        metrics |= self._slices(logits, targets, frame, context)
        if context.examples_plot:
            self.plot_misclassified(context.artifact("misclassified", ".png"), logits, features)
        if "confusion_matrix" in metrics:
            path = context.artifact("confusion_matrix", ".png")
            plot_confusion_matrix(path, metrics["confusion_matrix"], self.label_names,
                                  f"{context.name} confusion matrix")  # fmt: skip
        return metrics

    def _confidence(self, logits: np.ndarray, targets: np.ndarray, context: ScoreContext) -> dict[str, Any]:
        """Bootstrap intervals and calibration of one split; its reliability diagram."""
        settings = context.evaluation
        report = confidence_report(logits, targets, kind=self.type, samples=settings.bootstrap_samples,
                                   level=settings.confidence_level, bins=settings.calibration_bins, seed=context.seed,
                                   temperature=context.temperature if self.calibrates else None)  # fmt: skip
        if "calibration_bins" in report and len(targets):
            scaled = "ece_temperature_scaled" in report
            after = (
                (report["ece_temperature_scaled"], report["calibration_bins_temperature_scaled"]) if scaled else None
            )
            path = context.artifact("reliability", ".png")
            plot_reliability(path, report["calibration_bins"], report["ece"],
                             f"{context.name} reliability", after=after)  # fmt: skip
        return report

    def _slices(self, logits: np.ndarray, targets: np.ndarray, frame: pd.DataFrame,
                context: ScoreContext) -> dict[str, Any]:  # fmt: skip
        """Per-slice metrics when the split carries data.slice_column (single-label tasks)."""
        if self.type != "single_label" or "slice" not in frame.columns:
            return {}
        try:
            found = slice_metrics(logits.argmax(1), targets, frame["slice"].tolist(), self.label_names,
                                  column=context.slice_column, positive=context.evaluation.positive_label)  # fmt: skip
        except ValueError as error:
            raise TunesmithError(str(error)) from None
        return {"slices": found}

    def row_inputs(self, frame: pd.DataFrame) -> list[str]:
        """What identifies each row of a split table in its predictions: its text."""
        return frame["text"].astype(str).tolist()

    def split_predictions(self, frame: pd.DataFrame, logits: np.ndarray, targets: np.ndarray,
                          temperature: float | None) -> Predictions:  # fmt: skip
        """The per-row predictions of a split from the logits ``score`` computed: a single-label
        row's class, every class's probability (softmax at ``temperature`` where one was fitted,
        as ``predict`` gives them) and whether it is right; a multi-label row's labels, every
        label's sigmoid and whether the set is right (its confidence: the product of each label
        decision's probability); a regression row's value and squared error."""
        count = len(targets)
        table = {"row": np.arange(count), "input": self.row_inputs(frame)}
        if self.type == "regression":
            values, gold = logits[:, 0].astype(float), targets.astype(float)
            rows = pd.DataFrame({**table, "gold": gold, "predicted": values, "scores": [[] for _ in range(count)],
                                 "confidence": np.nan, "row_metric": (values - gold) ** 2})  # fmt: skip
            return Predictions(rows, metric="squared_error", higher_is_better=False, mean_of="mse")
        if self.type == "multi_label":
            scores = self.probabilities(logits)
            chosen, wanted = scores >= self.threshold, targets.astype(bool)
            names = np.asarray(self.label_names, dtype=object)
            rows = pd.DataFrame({**table, "gold": [list(names[w]) for w in wanted],
                                 "predicted": [list(names[c]) for c in chosen], "scores": scores.tolist(),
                                 "confidence": np.where(chosen, scores, 1 - scores).prod(1),
                                 "row_metric": (chosen == wanted).all(1).astype(float)})  # fmt: skip
            return Predictions(rows, metric="correct", higher_is_better=True, mean_of="subset_accuracy")
        scores = self.probabilities(logits / temperature if temperature and self.calibrates else logits)
        predicted = logits.argmax(1)  # a temperature never changes the class
        rows = pd.DataFrame({**table, "gold": [self.label_names[t] for t in targets],
                             "predicted": [self.label_names[p] for p in predicted], "scores": scores.tolist(),
                             "confidence": scores[np.arange(count), predicted],
                             "row_metric": (predicted == targets).astype(float)})  # fmt: skip
        return Predictions(rows, metric="correct", higher_is_better=True, mean_of="accuracy", by_class=True)

    def plot_misclassified(self, path: Path, logits: np.ndarray, features: list[dict]) -> int:
        """The plot of wrong examples: a text classifier draws none (the image task does)."""
        return 0

    # -- prediction -------------------------------------------------------------------
    def model_texts(self, inputs: list) -> list[str]:
        """Raw inputs as the model reads them: texts (refused otherwise, naming the position),
        whitespace collapsed as in training."""
        return [" ".join(text.split()) for text in check_texts(inputs, self.kind)]

    def predict(self, model, processor, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """Predictions for texts: label(s) or value, the scores behind them (softmax at the run's
        ``temperature`` for a single-label classifier), and a warning for an empty text.

        Raises:
            TunesmithError: an input that is not a text, naming its position.
        """
        texts = self.model_texts(inputs)
        logits = text_logits(model, processor, texts, max_length=self.max_length)
        rows = self.prediction_rows(logits, temperature if self.calibrates else None)
        return [{"text": text, **row, **text_warning(text)} for text, row in zip(texts, rows)]

    def read_inputs(self, path: Path) -> list:
        """The texts of a prediction input file (one per line of .txt, or a table's text column)."""
        return read_texts(path)

    def table_inputs(self, frame: pd.DataFrame, source: str) -> list:
        """The texts of a table or a chunk of a file (its only column, or its text column)."""
        return table_texts(frame, source)

    # -- shipping -----------------------------------------------------------------------
    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The text classifier's part of the model card."""
        labels = manifest["splits"]["train"].get("labels", "see data_manifest.json")
        return CardText(
            title=f"{self.type.replace('_', '-')} text classifier",
            purpose=f"It predicts {', '.join(self.label_names) or 'a number'}.",
            data=f"Label distribution (train): {labels}",
            limitation=f"Texts longer than {max_length} tokens are truncated: the model sees only their start "
            f"({truncated_train} of the training rows were truncated).",
            usage='`tunesmith predict RUN_DIR --text "..."`.',
        )

    def export_features(self, processor: Any, inputs: list) -> list[dict]:
        """Token ids of texts, whitespace collapsed and cut to max_length as in training."""
        texts = self.model_texts(inputs)
        return encode_features(processor, texts, None, self.max_length)[0]

    def export_inputs(self, processor: Any, features: list[dict]) -> ExportBatch:
        """Features (those of :meth:`encode`) as one batch of an exported model's inputs: int64
        token ids padded to the batch's longest row (batch and sequence sizes vary), and a table
        row's float32 vector (``table_features``: the batch size varies)."""
        batch = pad_batch(features, pad_token_id(processor))
        names = [name for name in MODEL_INPUTS if name in batch]
        vector = {"table_features"}
        return ExportBatch(
            inputs={n: batch[n].numpy().astype(np.float32 if n in vector else np.int64) for n in names},
            dynamic_axes={n: {0: "batch"} if n in vector else {0: "batch", 1: "sequence"} for n in names},
        )

    def export_output(self, output: Any) -> torch.Tensor:
        """The classifier's logits, [rows, labels]."""
        return output.logits

    def export_parity(self, reference: list[np.ndarray], candidate: list[np.ndarray],
                      features: list[dict]) -> dict[str, float]:  # fmt: skip
        """The largest logit difference and the share of rows with the same prediction: the
        class, the labels at the threshold (multi-label), the value within 0.01 (regression)."""
        reference, candidate = np.stack(reference), np.stack(candidate)
        if self.type == "multi_label":
            cut = float(
                np.log(self.threshold / (1 - self.threshold))
            )  # sigmoid(x) >= threshold <=> x >= logit(threshold)
            same = ((reference >= cut) == (candidate >= cut)).all(1)
        elif self.type == "regression":
            same = np.abs(reference - candidate)[:, 0] < 1e-2
        else:
            same = reference.argmax(1) == candidate.argmax(1)
        return {"rows": int(len(reference)), "max_logit_difference": float(np.abs(reference - candidate).max()),
                "label_agreement": float(same.mean())}  # fmt: skip

    def export_description(self) -> dict[str, Any]:
        """An export reads token ids of texts whose whitespace was collapsed (as in training)."""
        return {"inputs": "token ids", "text_normalisation": "collapse whitespace"}

    def rows_from_logits(self, inputs: list, features: list[dict], logits: list[np.ndarray], *,
                         temperature: float | None = None) -> list[dict]:  # fmt: skip
        """The rows of :meth:`predict`: each text (whitespace collapsed, as the model read it),
        its label(s) or value and scores (softmax at ``temperature``, single-label), and a warning
        for an empty text."""
        rows = self.prediction_rows(np.stack(logits), temperature if self.calibrates else None)
        texts = self.model_texts(inputs)
        return [{"text": text, **row, **text_warning(text)} for text, row in zip(texts, rows)]

    # -- monitoring (tunesmith monitor; tasks.contract.Monitored) ---------------------------
    @property
    def watches(self) -> tuple[Watch, ...]:
        """The shares of the predicted labels (of label occurrences, multi-label) and, with one
        label per row, the mean confidence; a regression's predicted values."""
        if self.type == "regression":
            return (VALUES,)
        return (LABEL_SHARES,) if self.type == "multi_label" else (LABEL_SHARES, CONFIDENCE)

    def monitor_inputs(self, frame: pd.DataFrame) -> list:
        """The text of each row."""
        return frame["text"].astype(str).tolist()

    def monitor_texts(self, inputs: list) -> list[str]:
        """The texts themselves."""
        return check_texts(inputs, self.kind)

    def embed(self, model: Any, processor: Any, inputs: list) -> np.ndarray:
        """The encoder's mean-pooled states over each text (whitespace collapsed, as predicted)."""
        texts = self.model_texts(inputs)
        return pooled(model.base_model, processor, texts, max_length=self.max_length)

    def probe_scores(self, train: np.ndarray, train_features: list[dict], held_out: np.ndarray,
                     features: list[dict], *, seed: int) -> dict[str, Any]:  # fmt: skip
        """The task's metrics (no intervals) of a linear probe on standardised embeddings:
        logistic regression per class (single_label, one-vs-rest for multi_label) or ridge
        regression, from scikit-learn."""
        logits = probe_logits(self.type, train, np.asarray([f["labels"] for f in train_features]), held_out,
                              num_outputs=self.num_outputs, seed=seed)  # fmt: skip
        found = self.scores(logits, np.asarray([f["labels"] for f in features]))
        return {k: v for k, v in found.items() if isinstance(v, float)} | {"count": len(features)}

    def watched_values(self, row: dict[str, Any]) -> dict[str, Any]:
        """The label and its score, the labels ("(none)" for an empty set), or the value."""
        if self.type == "regression":
            return {VALUES.name: float(row["value"])}
        if self.type == "multi_label":
            return {LABEL_SHARES.name: list(row["labels"]) or ["(none)"]}
        return {LABEL_SHARES.name: row["label"], CONFIDENCE.name: float(max(row["scores"].values()))}

    def to_dict(self) -> dict[str, Any]:
        """What training learned (``task.json``): the kind, the label space, the multi-label options."""
        return {
            "type": self.type,
            "label_names": self.label_names,
            "threshold": self.threshold,
            "label_separator": self.label_separator,
        }


def probe_logits(kind: str, train: np.ndarray, targets: np.ndarray, held_out: np.ndarray, *, num_outputs: int,
                 seed: int) -> np.ndarray:  # fmt: skip
    """Outputs of a linear probe fitted on ``train`` for ``held_out``, shaped as the model's
    logits: log-probabilities (single_label; a class the training rows lack gets -30), log-odds
    (multi_label) or the predicted value (regression)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "regression":
        probe = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(train, targets.astype(float).ravel())
        return probe.predict(held_out).reshape(-1, 1).astype(np.float32)
    linear = LogisticRegression(max_iter=2000, random_state=seed)
    if kind == "multi_label":
        present = targets.std(axis=0) > 0  # a label on every row or on none leaves nothing to fit
        logits = np.where(targets.mean(axis=0) > 0.5, 30.0, -30.0)[None, :].repeat(len(held_out), 0)
        if present.any():
            probe = make_pipeline(StandardScaler(), OneVsRestClassifier(linear)).fit(train, targets[:, present])
            share = np.clip(probe.predict_proba(held_out), 1e-7, 1 - 1e-7)
            logits[:, present] = np.log(share) - np.log1p(-share)
        return logits.astype(np.float32)
    logits = np.full((len(held_out), num_outputs), -30.0, dtype=np.float32)
    if len(np.unique(targets)) < 2:  # one class among the training rows: the probe can only say it
        logits[:, int(targets[0])] = 0.0
        return logits
    probe = make_pipeline(StandardScaler(), linear).fit(train, targets)
    logits[:, probe.classes_] = np.maximum(probe.predict_log_proba(held_out), -30.0)
    return logits


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
    return compute_logits(model, features, batch_size=64, pad_token_id=pad_token_id(tokenizer), device="cpu")
