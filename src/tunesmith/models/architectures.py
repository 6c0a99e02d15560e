"""What tunesmith's own model classes (models/pooled.py, models/prompted.py) share: a base class
for a classifier around one pretrained transformers model, a copy of that model's config without
the local path it was loaded from, and their registration with transformers' Auto classes, so a
saved run loads through ``AutoModelForSequenceClassification`` with no remote code."""

from __future__ import annotations

import copy

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel


class WrappingModel(PreTrainedModel):
    """A classifier around one pretrained transformers model, held as the attribute that
    ``base_model_prefix`` names. Weights are initialised by the wrapped model's own rule, which
    also fills its non-persistent buffers (position ids) when a saved classifier loads: without
    it they would be left uninitialised and the loaded model would score differently."""

    main_input_name = "input_ids"

    def _wrapped(self) -> PreTrainedModel | None:
        wrapped = getattr(self, self.base_model_prefix, None)  # None while __init__ has not set it
        return wrapped if isinstance(wrapped, PreTrainedModel) else None

    def _init_weights(self, module: nn.Module) -> None:
        wrapped = self._wrapped()
        if wrapped is not None:
            wrapped._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self._wrapped().get_input_embeddings()


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
