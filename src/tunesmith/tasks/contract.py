"""The task contract: everything a stage may ask of a task, and nothing else.

Every stage (train, evaluate, predict, cv, tune, inspect, export, serve, monitor, retrain)
talks to a task only through :class:`Task`. A task kind is one module under tasks/ with one
class that implements all of it; ``tasks.build.build_task`` picks the class with a ``match`` on
``task.type``. A stage never asks which kind it holds (no ``task.type ==``, no ``hasattr`` or
``getattr`` on a task): what differs between kinds is a method or a declared attribute here.

Stages after training that a kind does not support yet are left out of its ``stages``;
``tasks.build.require_stage`` refuses them in one line before any work.

The life of a task object:

1. ``build_task(config)`` before training (label space empty), or
   ``build_task(config, saved)`` with a run's ``task.json`` (label space as trained).
2. Training: ``prepare`` (data stage, fits the label space) -> ``load_processor`` ->
   ``encode`` -> ``load_model`` -> the loop (``collate``, ``count``, ``batch_loss``,
   ``evaluate``) -> ``calibrate`` -> ``score`` per held-out split -> ``card``.
3. A trained run: ``read`` + ``encode`` + ``score`` (``tunesmith evaluate``), ``predict``,
   and the shipping stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the contract itself imports nothing heavy
    import numpy as np
    import pandas as pd
    import torch

    from tunesmith.config import Config, DataConfig, EvaluationConfig, GenerationConfig
    from tunesmith.data.prepare import PreparedData
    from tunesmith.models.load import ResolvedModel


@dataclass
class Encoded:
    """Model-ready features of every split, from :meth:`Task.encode`."""

    features: dict[str, list[dict]]
    """Per split: one dict per example (``labels`` holds its target)."""
    truncated: dict[str, int]
    """Per split: how many examples were cut to the model's length."""
    notes: list[str] = field(default_factory=list)
    """Lines for the user: truncation, the label set, class weights."""


@dataclass
class ScoreContext:
    """What :meth:`Task.score` may use besides the model and the split."""

    artifact: Callable[[str, str], Path]
    """``artifact("reliability", ".png")``: where to write one of this split's files (plots,
    generations), so training (``reliability_test.png``) and ``tunesmith evaluate``
    (``evaluations/NAME_reliability.png``) name them alike."""
    name: str
    """The split ("validation", "test") or the evaluation's name (the data file's stem), for
    plot titles and messages."""
    evaluation: EvaluationConfig
    """Bootstrap samples, confidence level, calibration bins, the positive label."""
    seed: int
    batch_size: int
    device: Any = "cpu"
    temperature: float | None = None
    """The run's fitted temperature (``calibrate``), for calibrated scores; None when unfitted."""
    generate: bool = True
    """Generative tasks: also generate on this split (slow; training does it on one split)."""
    examples_plot: bool = False
    """Draw the task's plot of wrong examples when it has one (images: misclassified_test.png)."""
    slice_column: str | None = None
    """data.slice_column, named in per-slice metrics."""
    log: Callable[[str], None] = lambda message: None


@dataclass
class CardText:
    """A task's part of the model card (evaluate/report.py writes the rest)."""

    title: str
    """"Named-entity tagger", "single-label text classifier", ..."""
    purpose: str
    """One sentence: what the model does."""
    data: str
    """What the training data looked like (format, label distribution)."""
    limitation: str
    """The input limit a user meets first (truncation, windows, image size)."""
    usage: str
    """How to call it from tunesmith (``tunesmith predict RUN_DIR --text "..."``)."""
    processor: str = "AutoTokenizer"
    """The transformers class that loads the model's input processing from ``model/``."""


@dataclass
class ExportBatch:
    """One batch as an exported model reads it, from :meth:`Task.export_inputs`."""

    inputs: dict[str, np.ndarray]
    """The model's named inputs (``input_ids``, ``attention_mask``, ... or ``pixel_values``)."""
    dynamic_axes: dict[str, dict[int, str]]
    """Per input, the axes whose size changes from batch to batch (``{0: "batch", 1: "sequence"}``);
    the ONNX model takes any size there."""


@dataclass
class Sampling:
    """How one request generates (the OpenAI API's options): ``temperature`` 0 is greedy
    decoding, as ``tunesmith predict`` does; ``stop`` strings end a completion early."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def options(self, pad_token_id: int, eos_token_id: int | None) -> dict[str, Any]:
        """transformers ``generate`` options for these settings."""
        options = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0,
                   "pad_token_id": pad_token_id, "eos_token_id": eos_token_id}  # fmt: skip
        if self.temperature > 0:
            options |= {"temperature": self.temperature, "top_p": self.top_p}
        return options


@dataclass
class Completion:
    """One generated completion and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """"stop" (end of turn or a stop string) or "length" (max_new_tokens reached)."""


@runtime_checkable
class Task(Protocol):
    """What every task kind implements. Attributes are declared per class (``ClassVar``) unless
    noted; methods are listed in the order a run calls them."""

    kind: ClassVar[str]
    """The ``task.type`` this class implements ("single_label", "token_classification", ...)."""
    stages: frozenset[str]
    """Stages after training that work for this kind (``tasks.build.STAGES``)."""
    default_metric: tuple[str, str]
    """The validation metric that picks the best checkpoint, and "max" or "min"."""
    metric_names: list[str]
    """Scalar validation metrics that train.metric and tune.metric may name."""
    peft_task_type: ClassVar[str | None]
    """PEFT's task type for LoRA ("SEQ_CLS", "CAUSAL_LM", ...); None: LoRA's generic wrapping."""
    auto_class: ClassVar[str]
    """The transformers Auto class that loads the trained model ("AutoModelForTokenClassification")."""
    calibrates: ClassVar[bool]
    """Whether temperature scaling applies (a single-label classifier's probabilities)."""
    stratify: bool
    """Whether splits and folds keep the label distribution (single-label)."""
    forgetting_probe: ClassVar[str | None]
    """How the forgetting check measures the base model's skill: "perplexity" (a language
    model's), "embedding" (an encoder's), or None (no check for this kind)."""

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> Task:
        """The task for a config (its ``task`` section and whatever else it needs, e.g.
        ``model.max_length``, ``generation``), with a run's ``task.json`` as ``saved``."""
        ...

    @property
    def label_names(self) -> list[str]:
        """The label space in id order (classes, tags); empty when the task has none."""
        ...

    # -- data ----------------------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors: Callable | None = None) -> PreparedData:
        """The data stage: read and check every source (errors name file and row), clean,
        split, and fit the label space on the training split.

        Args:
            config: the run's config (``data`` and ``inspect`` sections, ``runtime.seed``).
            find_label_errors: for data.clean.label_errors (a stage above builds it).
        """
        ...

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One labelled file as the table ``encode`` takes, and its manifest entry (for
        ``tunesmith evaluate``); labels outside the trained label space are refused by row."""
        ...

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """What the model reads in each row, for the train/held-out overlap check."""
        ...

    # -- model ---------------------------------------------------------------------------
    def load_processor(self, resolved: ResolvedModel, *, trained: bool = False) -> Any:
        """The tokenizer (or image processor) of the pretrained model, checked against
        model.max_length; with ``trained=True``, of a trained run (``resolved.location`` is its
        ``model/`` directory), as saved."""
        ...

    def load_model(self, resolved: ResolvedModel, dropout: float | None) -> tuple[Any, list[str]]:
        """The pretrained model with this task's head, and the names of the new parameters."""
        ...

    def load_trained(self, model_dir: Path) -> Any:
        """A trained run's model from its ``model/`` directory (plain transformers format)."""
        ...

    # -- training ------------------------------------------------------------------------
    def encode(self, processor: Any, splits: dict[str, pd.DataFrame]) -> Encoded:
        """Features for each split's table (those of ``prepare`` or ``read``)."""
        ...

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        """One batch of tensors (with ``num_examples`` and ``num_tokens``)."""
        ...

    def count(self, features: list[dict]) -> int:
        """The units the summed loss is divided by (examples or target tokens)."""
        ...

    def batch_loss(self, model: Any, batch: dict, device: Any) -> torch.Tensor:
        """The summed loss of one batch."""
        ...

    def evaluate(self, model: Any, features: list[dict], *, batch_size: int, pad_token_id: int,
                 device: Any) -> dict[str, Any]:  # fmt: skip
        """The loop's validation metrics (every name of ``metric_names``), fast."""
        ...

    # -- evaluation ----------------------------------------------------------------------
    def calibrate(self, model: Any, processor: Any, features: list[dict], *, batch_size: int,
                  device: Any) -> float | None:  # fmt: skip
        """The temperature fitted on these (validation) features; None where none applies."""
        ...

    def score(self, model: Any, processor: Any, frame: pd.DataFrame, features: list[dict],
              context: ScoreContext) -> dict[str, Any]:  # fmt: skip
        """Every metric of one held-out split with its confidence intervals where they apply,
        and the split's plots and generations (under ``context.artifact``)."""
        ...

    # -- prediction ----------------------------------------------------------------------
    def predict(self, model: Any, processor: Any, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """Prediction rows for raw inputs (texts, ``{"question", "context"}`` dicts, image
        paths, prompts: the kind says); an input of the wrong kind is refused, naming it."""
        ...

    def read_inputs(self, path: Path) -> list:
        """The raw inputs in a prediction input file (``tunesmith predict --input``), as
        ``predict`` takes them: texts, question/context records, image paths."""
        ...

    # -- shipping ------------------------------------------------------------------------
    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """This task's part of the model card."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """What training learned and later stages need (``task.json``); ``type`` is ``kind``."""
        ...


@runtime_checkable
class Exportable(Task, Protocol):
    """What ``export`` (and ``serve``, which answers from an export's logits) asks beyond
    :class:`Task`: every kind with "export" in ``stages`` implements it; the stage checks
    ``require_stage`` first, so it never meets a kind that does not."""

    quantization: ClassVar[str]
    """How ``export --quantize int8`` quantizes: "dynamic" (int8 weights, activation ranges
    measured per batch at run time: text encoders) or "static" (activation ranges calibrated
    on up to 256 training rows: convolutional image models, where dynamic ranges cost labels)."""

    def export_features(self, processor: Any, inputs: list) -> list[dict]:
        """Raw inputs (as :meth:`Task.predict` takes them) as the features :meth:`export_inputs`
        batches: how ``serve`` feeds an exported ONNX model.

        Raises:
            TunesmithError: an input of the wrong kind, naming its position.
        """
        ...

    def export_inputs(self, processor: Any, features: list[dict]) -> ExportBatch:
        """A batch of features (those of ``encode``) as the exported model's named inputs; export
        feeds the same batch to the PyTorch model and to the exported one."""
        ...

    def export_parity(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
        """How an exported model's logits compare with the PyTorch model's on the same rows:
        ``rows``, ``max_logit_difference``, and ``label_agreement`` (the share of rows whose
        prediction is the same: the class, the label set at the threshold, the value within 0.01)."""
        ...

    def export_description(self) -> dict[str, Any]:
        """What an export's ``tunesmith.json`` says about the model's input: ``inputs`` (in
        words) and ``text_normalisation`` (done to a text before it is tokenized; None for images)."""
        ...

    def rows_from_logits(self, inputs: list, logits: np.ndarray, *, temperature: float | None = None) -> list[dict]:
        """The rows serve answers with, from any backend's logits (PyTorch or an exported ONNX
        model) for these raw inputs: label(s) or value with the scores (softmax at
        ``temperature``), and a warning where an input gives cause."""
        ...


@runtime_checkable
class Chat(Task, Protocol):
    """What ``chat`` and the OpenAI-compatible routes of ``serve`` ask beyond :class:`Task`
    (kinds with "chat" in ``stages``)."""

    generation: GenerationConfig
    """The run's generation settings: the defaults of a request that does not set them."""

    def prompt(self, processor: Any, messages: list[dict[str, str]]) -> str:
        """A conversation rendered as in training (the chat template), ending where the
        assistant answers."""
        ...

    def complete(self, model: Any, processor: Any, prompts: list[str], sampling: Sampling) -> list[Completion]:
        """Completions of rendered prompts, generated together in one batch."""
        ...

    def stream(self, model: Any, processor: Any, prompt: str, sampling: Sampling, run: Callable) -> Any:
        """An iterator of text pieces of one prompt's completion; ``run(work)`` runs the
        generation (on the server's model thread)."""
        ...

    def reply(self, model: Any, processor: Any, messages: list[dict[str, str]]) -> str:
        """The model's next turn in a conversation (``{"role", "content"}`` messages), the chat
        template applied exactly as in training."""
        ...
