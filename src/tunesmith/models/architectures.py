"""What tunesmith's own model classes (models/pooled.py, models/prompted.py) share: a copy of the
wrapped model's config without the local path it was loaded from, and their registration with
transformers' Auto classes, so a saved run loads through ``AutoModelForSequenceClassification``
with no remote code."""

from __future__ import annotations

import copy

from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig


def portable_config(config: PretrainedConfig) -> PretrainedConfig:
    """A deep copy of ``config`` without ``_name_or_path``: a saved run carries no local paths."""
    copied = copy.deepcopy(config)
    copied._name_or_path = ""
    return copied


def register_classifier(model_type: str, config_class: type, model_class: type) -> None:
    """Registers a sequence classifier of tunesmith's with the Auto classes (once per process)."""
    try:
        AutoConfig.register(model_type, config_class)
    except ValueError:  # already registered in this process
        return
    AutoModelForSequenceClassification.register(config_class, model_class)
