"""Optimizer parameter groups (weight decay, layer-wise learning rates) and schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from tunesmith.config import TrainConfig
from tunesmith.models.adapt import layer_groups

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def parameter_groups(model: nn.Module, config: TrainConfig, include_frozen: bool) -> list[dict]:
    """One group per (layer, decays or not). Layer i of L gets
    learning_rate * layerwise_lr_decay ** (L - i); embeddings one step below layer 0.

    Args:
        include_frozen: also hand frozen parameters to the optimizer (gradual unfreezing
            turns them on later; parameters without a gradient are skipped by the step).
    """
    named = dict(model.named_parameters())
    groups = layer_groups(model)
    depth = len(groups) - 1  # head sits at depth 0 below the top
    result = []
    for position, names in enumerate(groups):
        scale = config.layerwise_lr_decay ** (depth - position)
        for decays in (True, False):
            params = [
                named[n]
                for n in names
                if (include_frozen or named[n].requires_grad) and (not n.endswith(NO_DECAY)) == decays
            ]
            if params:
                result.append(
                    {
                        "params": params,
                        "lr": config.learning_rate * scale,
                        "weight_decay": config.weight_decay if decays else 0.0,
                    }
                )
    return result


def build_optimizer(model: nn.Module, config: TrainConfig, include_frozen: bool = False) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config, include_frozen)
    match config.optimizer:
        case "adamw":
            # The fused kernel (CPU and CUDA) updates all parameters in one pass; the Trainer's default too.
            return torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)
        case "sgd":
            return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)
    raise AssertionError(config.optimizer)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """Warmup, then linear decay to 0, half-cosine to 0, or constant (transformers' schedules)."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(config.scheduler, config.scheduler)
    warmup = math.ceil(config.warmup_ratio * total_steps)  # rounded up, as the Trainer does
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
