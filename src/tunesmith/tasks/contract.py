"""The task contract: everything a stage may ask of a task, and nothing else.

Every stage (train, evaluate, predict, cv, tune, inspect, export, serve, monitor, retrain)
talks to a task only through :class:`Task`. A task kind is one module under tasks/ with one
class that implements all of it; ``tasks.build.build_task`` picks the class with a ``match`` on
``task.type``. A stage never asks which kind it holds (no ``task.type ==``, no ``hasattr`` or
``getattr`` on a task): what differs between kinds is a method or a declared attribute here.

Stages after training that a kind does not support yet are left out of its ``stages``;
``tasks.build.require_stage`` refuses them in one line before any work.

The data stages sit below tasks/, so what they ask is declared beside them: ``inspect`` asks
a kind with "inspect" in ``stages`` for ``data.quality.InspectedTask`` (its own records:
``inspection_records``, ``inspection_lengths``) or ``data.prepare.LabelledTask`` (a text
column and a label).

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

from tunesmith.errors import TunesmithError

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


PREDICTION_COLUMNS = ("row", "input", "gold", "predicted", "scores", "confidence", "row_metric")
"""The columns of :attr:`Predictions.rows` (and of a run's ``predictions_SPLIT.parquet``)."""


@dataclass
class Predictions:
    """One scored split's per-row predictions, which :meth:`Task.score` hands to
    ``ScoreContext.predictions`` from the outputs it computed its metrics from (no second pass);
    training writes them as ``predictions_validation.parquet`` and ``predictions_test.parquet``."""

    rows: pd.DataFrame
    """One row per row of the table ``score`` was given, columns ``PREDICTION_COLUMNS``: ``row``
    (its 0-based position in that table: ``data/SPLIT.parquet``); ``input`` (what identifies it:
    the text, both texts of a pair, the question and its context, the sentence, the image's path,
    the prompt or source); ``gold`` and ``predicted`` (as the kind labels and predicts: a class, a
    list of labels or word tags, a number, an answer, a text; ``predicted`` is None where the
    model was not asked, as rows not generated for); ``scores`` (a list of numbers: per-class
    probabilities, per-word probabilities, the answer's score, the generation's ROUGE-1/2/L);
    ``confidence`` (the probability the model gives its prediction; NaN where it gives none);
    ``row_metric`` (the row's :attr:`metric`; NaN where there is no prediction)."""
    metric: str
    """What ``row_metric`` is: "correct" (1 or 0), "squared_error", "f1", "rougeL", ..."""
    higher_is_better: bool
    """Whether a larger ``row_metric`` is a better row."""
    mean_of: str | None
    """The key of the split's metrics that is the mean of ``row_metric`` over the rows that have
    one ("accuracy", "mse", "f1", "rougeL"); None where no metric is such a mean."""
    by_class: bool = False
    """Whether ``gold`` is one class per row (the report lists the most confident mistakes of
    each class); else the mistakes are listed together."""


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
    predictions: Callable[[Predictions], None] = lambda predictions: None
    """Where ``score`` hands the split's per-row predictions (the caller saves them)."""


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
    row_lengths: list[int] | None = None
    """Per row, how many positions of the output's second axis are its own (its tokens; the rest
    is padding), for outputs with one vector per token; None: the output has one vector per row."""

    def rows(self, output: np.ndarray) -> list[np.ndarray]:
        """The batch's output (the exported tensor) as one array per row, padding cut off."""
        if self.row_lengths is None:
            return list(output)
        return [output[row, :length] for row, length in enumerate(self.row_lengths)]


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
class ChatFormat:
    """How a chat model reads a conversation, for formats that carry it beside the weights
    (a GGUF file, an Ollama Modelfile), from :meth:`Chat.chat_format`."""

    template: str | None
    """The Jinja chat template conversations were rendered with in training; None: plain text
    (each prompt turn ends with a newline, each assistant turn with EOS)."""
    stop: tuple[str, ...]
    """The token texts that end an assistant turn as trained (EOS)."""


@dataclass
class Completion:
    """One generated completion and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """"stop" (end of turn or a stop string) or "length" (max_new_tokens reached)."""


@dataclass(frozen=True)
class UploadLimits:
    """A server's limits on one uploaded file, for :meth:`Uploadable.decode_upload`."""

    max_bytes: int
    """The file's size in bytes (after base64 decoding)."""
    max_pixels: int
    """An image's width x height, checked from its header before its pixels are decoded, so
    a small file that would decode to gigabytes (a decompression bomb) is refused unread."""


class InputTooLarge(TunesmithError):
    """An input over one of the server's limits (:class:`UploadLimits`): serve answers 413."""


CHAT_NOTE = "not a chat model: chat and the OpenAI routes are for instruction-tuned causal LMs"
"""Why chat does not apply to a kind that is not a causal LM (``Task.stage_notes``)."""


@runtime_checkable
class Task(Protocol):
    """What every task kind implements. Attributes are declared per class (``ClassVar``) unless
    noted; methods are listed in the order a run calls them."""

    kind: ClassVar[str]
    """The ``task.type`` this class implements ("single_label", "token_classification", ...)."""
    stages: frozenset[str]
    """Stages after training that work for this kind (``tasks.build.STAGES``)."""
    stage_notes: ClassVar[dict[str, str]]
    """For every stage after training that is not in ``stages``: one line saying why (a stage that
    makes no sense for the kind, or one not built yet); the README's table shows it."""
    default_metric: tuple[str, str]
    """The validation metric that picks the best checkpoint, and "max" or "min"."""
    metric_names: list[str]
    """Scalar validation metrics that train.metric and tune.metric may name."""
    peft_task_type: ClassVar[str | None]
    """PEFT's task type for LoRA ("SEQ_CLS", "CAUSAL_LM", ...); None: LoRA's generic wrapping."""
    auto_class: ClassVar[str]
    """The transformers Auto class that loads the trained model ("AutoModelForTokenClassification")."""
    pipeline_tag: ClassVar[str]
    """The Hub's task tag for the model ("text-classification", "token-classification", ...): the
    model card's ``pipeline_tag`` and the task of its ``model-index`` results."""
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
        ``tunesmith evaluate``); labels outside the trained label space are refused by row
        (before training, with no label space yet, only malformed ones are)."""
        ...

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """What the model reads in each row, for the train/held-out overlap check."""
        ...

    def fit(self, train: pd.DataFrame) -> None:
        """Learns from a table of training rows (from ``read``) what training learns from its
        training split: the label space (classes, tags; ``label_names``), whether questions
        can be unanswerable; nothing for the generative kinds. ``retrain`` fits a fresh task on
        its mix of new and old rows to check that the mix keeps the deployed model's label
        space (a head with as many outputs but other labels would load without a word).

        Raises:
            TunesmithError: rows the label space cannot be fitted on (a single class).
        """
        ...

    # -- cross-validation (cv, and tune with tune.objective=cv) ------------------------------
    # cv reads data.train with ``read`` on a task whose label space is not fitted yet (so only
    # malformed labels are refused), cuts it into folds and writes each fold's rows back with
    # ``write_records``; every fold is then an ordinary run whose data stage reads those files.
    def groups(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Each row's group in a table from ``read``: rows that share one are kept in one fold
        (questions on one context, sentences of one document). None: every row stands alone."""
        ...

    def source_rows(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Each row's 0-based position among the data rows of the table it was read from, to
        join a column the task does not read (cv.group_column); None when the source is not
        such a table (CoNLL, SQuAD JSON, an image folder)."""
        ...

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """Writes rows of a table from ``read`` to a new file ``directory/name.<suffix>`` that
        ``read`` reads back as the same rows, and returns it with the ``data`` config values
        that reading it needs (``format``, ``text_column``, ...)."""
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
        and the split's plots and generations (under ``context.artifact``); the split's per-row
        predictions (:class:`Predictions`, from the same outputs) go to ``context.predictions``."""
        ...

    # -- prediction ----------------------------------------------------------------------
    def predict(self, model: Any, processor: Any, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """Prediction rows for raw inputs (texts, ``{"question", "context"}`` dicts, image
        paths or decoded images (:meth:`Uploadable.decode_upload`), prompts: the kind says); an
        input of the wrong kind is refused, naming it."""
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
    """What ``export`` asks beyond :class:`Task`: every kind with "export" in ``stages``
    implements it; the stage checks ``require_stage`` first, so it never meets a kind that does
    not. Every such kind exports ``--format hf`` (the run's merged model, its processor and model
    card, checked by reloading it with :meth:`Task.load_trained`)."""

    export_formats: ClassVar[frozenset[str]]
    """The ``export --format`` values this kind supports: "hf" for every kind; "onnx" for the
    encoder kinds (which then implement :class:`OnnxExportable`)."""

    def export_description(self) -> dict[str, Any]:
        """What an export's ``tunesmith.json`` says about the model's input: ``inputs`` (in
        words) and ``text_normalisation`` (done to a text before it is tokenized; None for images
        and where nothing is done)."""
        ...


@runtime_checkable
class OnnxExportable(Exportable, Protocol):
    """What ``export --format onnx`` (and ``serve``, which answers from an ONNX export's outputs)
    asks beyond :class:`Exportable`: every kind with "onnx" in ``export_formats`` implements it.

    An exported graph has one output, ``logits`` (:meth:`export_output`); a batch of it is cut
    into one array per row (:meth:`ExportBatch.rows`), and everything after that (parity, serve's
    rows) reads those per-row arrays with the features they came from."""

    quantization: ClassVar[str]
    """How ``export --quantize int8`` quantizes: "dynamic" (int8 weights, activation ranges
    measured per batch at run time: text encoders) or "static" (activation ranges calibrated
    on up to 256 training rows: convolutional image models, where dynamic ranges cost labels)."""

    def export_features(self, processor: Any, inputs: list) -> list[dict]:
        """Raw inputs (as :meth:`Task.predict` takes them) as the features :meth:`export_inputs`
        batches: how ``serve`` feeds an exported ONNX model. A kind may make several features of
        one input (QA: one per context window); :meth:`rows_from_logits` reads them back.

        Raises:
            TunesmithError: an input of the wrong kind, naming its position.
        """
        ...

    def export_inputs(self, processor: Any, features: list[dict]) -> ExportBatch:
        """A batch of features (those of ``encode`` or :meth:`export_features`) as the exported
        model's named inputs, with ``row_lengths`` for per-token outputs; export feeds the same
        batch to the PyTorch model and to the exported one."""
        ...

    def export_output(self, output: Any) -> torch.Tensor:
        """The one tensor the exported graph returns (named ``logits``), from the PyTorch
        model's output: ``output.logits`` for the classifiers ([rows, labels]) and the tagger
        ([rows, tokens, tags]); QA stacks start and end logits ([rows, tokens, 2])."""
        ...

    def export_parity(self, reference: list[np.ndarray], candidate: list[np.ndarray],
                      features: list[dict]) -> dict[str, float]:  # fmt: skip
        """How an exported model's per-row outputs compare with the PyTorch model's on the same
        features: ``rows`` (the units compared: texts, sentences, questions),
        ``max_logit_difference``, and ``label_agreement``, the share of rows whose decoded
        prediction is the same (the class, the label set at the threshold, the value within
        0.01; the sentence's entity spans; the question's answer span), which export's floors
        gate. A kind may add its own figures (``token_agreement``, ...)."""
        ...

    def rows_from_logits(self, inputs: list, features: list[dict], logits: list[np.ndarray], *,
                         temperature: float | None = None) -> list[dict]:  # fmt: skip
        """The rows serve answers with, from any backend's per-row outputs (PyTorch or an
        exported ONNX model) for these raw inputs and their :meth:`export_features`: the same
        rows as :meth:`Task.predict` (label(s) or value with scores, softmax at
        ``temperature``; entity spans; answers), with a warning where an input gives cause."""
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

    # -- export --format gguf (ship/gguf.py): what a GGUF file and an Ollama Modelfile carry --
    def chat_format(self, processor: Any) -> ChatFormat:
        """The chat template conversations were rendered with in training and the tokens that
        end an assistant turn."""
        ...

    def render(self, processor: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        """A conversation rendered exactly as training renders it (the chat template, or plain
        text without one); with ``add_generation_prompt``, ending where the assistant answers
        (``prompt``)."""
        ...

    def prompt_ids(self, processor: Any, prompt: str) -> list[int]:
        """The token ids of a rendered prompt as generation feeds them to the model."""
        ...

    def split_prompts(self, processor: Any, frame: pd.DataFrame) -> list[str]:
        """The prompt of each record of a split's table (those of ``prepare`` or ``read``): its
        turns before the last assistant turn, rendered as in training, ending where the
        assistant answers."""
        ...


@runtime_checkable
class Uploadable(Task, Protocol):
    """What ``serve`` asks beyond :class:`Task` of a kind whose inputs are files (images). A server
    never opens a path that a request names: a request carries each file's bytes (base64 or a
    data URL in ``{"images": [...]}``, or the parts of a multipart upload), and the task turns
    them into inputs that :meth:`Task.predict` (and :meth:`OnnxExportable.export_features`) take.
    Kinds that are not Uploadable take JSON inputs as they are (texts, objects, pairs)."""

    upload_formats: ClassVar[tuple[str, ...]]
    """The file formats an upload may be in ("PNG", "JPEG", ...); anything else is refused."""

    def decode_upload(self, processor: Any, data: bytes, *, where: str, limits: UploadLimits) -> Any:
        """One uploaded file as an input of :meth:`Task.predict` (an image: decoded and made
        ready for ``processor``).

        Args:
            processor: the run's processor (``load_processor``), as ``predict`` is given it.
            data: the file's bytes.
            where: the file in the request ("image 2 (cat.png)"), named in every error.
            limits: the server's limits.

        Raises:
            InputTooLarge: over ``limits`` (serve answers 413).
            TunesmithError: not a file of ``upload_formats`` that can be decoded: empty,
                truncated, corrupt (serve answers 422).
        """
        ...


# -- monitoring (``tunesmith monitor``) --------------------------------------------------------
# monitor compares live inputs (a ``serve --log`` file or a prediction input file) with the run's
# held-out split, and the predictions on them with the model's predictions on that split. What a
# row's input is (a text, a pair, a question with its context, a prompt), which model states embed
# it and which prediction fields can drift are the task's answers to the questions below.
@dataclass(frozen=True)
class Watch:
    """One quantity of a kind's prediction rows that ``monitor`` compares, reference against live."""

    name: str
    """The check's name in the report ("prediction_psi", "no_answer_rate_increase", ...)."""
    test: str
    """How reference and live values are compared; the check drifts when the result is above
    its threshold. "psi": the population stability index of the categories' shares (each row
    gives a category or a list of them); "ks": the Kolmogorov-Smirnov statistic of numbers;
    "increase": the live mean minus the reference mean; "decrease": the reference mean minus
    the live mean."""
    threshold: str
    """The ``monitor:`` config key that holds the threshold (``psi``, ``confidence_drop``, ...)."""
    description: str
    """What a value is, in words, for the report's plot ("entity type", "words per output")."""


@runtime_checkable
class Monitored(Task, Protocol):
    """What ``monitor`` asks beyond :class:`Task` (kinds with "monitor" in ``stages``)."""

    watches: tuple[Watch, ...]
    """The prediction-drift checks of this kind (empty: none is defined)."""

    def monitor_inputs(self, frame: pd.DataFrame) -> list:
        """The raw input of each row of a split table (the run's ``data/*.parquet``), as
        :meth:`Task.predict` takes it and a server receives it."""
        ...

    def monitor_texts(self, inputs: list) -> list[str]:
        """The words the model reads of each raw input, as one text (for text lengths and the
        out-of-vocabulary rate): a text, both texts of a pair, a question and its context.

        Raises:
            TunesmithError: an input of the wrong kind, naming its position.
        """
        ...

    def embed(self, model: Any, processor: Any, inputs: list) -> np.ndarray:
        """One row per raw input for the domain classifier: the mean-pooled last hidden states
        of the trained model's encoder (an encoder-decoder's encoder, a causal LM's decoder)
        over what it reads of the input, encoded as in prediction."""
        ...

    def watched_values(self, row: dict[str, Any]) -> dict[str, Any]:
        """Per watch name (:attr:`watches`), the value of one prediction row (``predict``'s, or
        the same fields in a ``serve --log`` record): a category or a list of categories
        ("psi"), else a number.

        Raises:
            KeyError: the row lacks a field a watch reads (monitor names the log line).
        """
        ...


@runtime_checkable
class Probed(Monitored, Protocol):
    """Kinds whose runs carry a baseline (evaluation.baseline): a linear probe on the embeddings
    of the frozen pretrained model (:meth:`Monitored.embed`), fitted on the training split."""

    baseline_probe: ClassVar[bool]
    """Whether this kind's runs score the probe (a subclass of a probed kind may not)."""

    def probe_scores(self, train: np.ndarray, train_features: list[dict], held_out: np.ndarray,
                     features: list[dict], *, seed: int) -> dict[str, Any]:  # fmt: skip
        """Fits the kind's linear probe on ``train`` (one embedding per training row, targets in
        ``train_features``) and returns the kind's metrics of its predictions for ``held_out``
        against the targets in ``features``."""
        ...


@runtime_checkable
class TableBaselined(Protocol):
    """Kinds whose runs carry a baseline of their own instead of the probe: a model fitted on the
    training split's table (a table's columns: gradient boosting), not on embeddings."""

    def table_baseline(self, splits: dict[str, pd.DataFrame], *, seed: int) -> dict[str, Any]:
        """``{"method", "model", "train_rows", SPLIT: {metric: value, "count": rows}}`` for each
        held-out split of ``splits`` (the prepared tables), fitted on ``splits["train"]``."""
        ...


@runtime_checkable
class ColumnMonitored(Protocol):
    """Kinds whose inputs are rows of named columns, each watched for drift on its own."""

    def column_values(self, inputs: list) -> dict[str, tuple[str, list]]:
        """Per feature column, its test ("ks": numbers, "psi": categories) and the value of each
        raw input (``predict``'s), read as in training: NaN for a missing number, "(missing)"
        for a missing category.

        Raises:
            TunesmithError: an input that is not a row of the run's columns, naming it.
        """
        ...


@runtime_checkable
class TableInputs(Protocol):
    """Kinds whose prediction inputs are rows of a table, so a large input file can be read and
    predicted a chunk at a time (data/stream.py; ``tunesmith predict --input``)."""

    def table_inputs(self, frame: pd.DataFrame, source: str) -> list:
        """The prediction inputs of one table, or one chunk of a file (``source`` names it), as
        :meth:`Task.read_inputs` reads a whole file's.

        Raises:
            TunesmithError: a missing column, naming ``source`` and the columns present.
        """
        ...
