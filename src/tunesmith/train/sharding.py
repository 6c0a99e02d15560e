"""Fully sharded data parallel training (PyTorch FSDP2 through accelerate).

Each rank holds a shard of every parameter, gradient and optimizer state; a transformer layer's
weights are gathered just for its forward and backward. Checkpoints and the best weights are
still written as full (unsharded) state dicts by rank 0, so they resume and load the same way as
single-process ones, and rank 0 ends the run holding an ordinary unsharded model.
"""

from __future__ import annotations

import copy

import torch


def fsdp_plugin():
    """One FSDP unit per transformer layer (the model's ``_no_split_modules``), full state dicts."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT"
    )


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose parameters take no memory (meta device); buffers are copied.
    It receives the full weights after sharded training."""
    memo = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model) -> dict[str, torch.Tensor]:
    """Collective: every rank must call it. Rank 0 gets the full weights on CPU; others ``{}``."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict:
    """Collective. The optimizer state keyed by parameter name, full, on rank 0."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_model_state(model, state: dict[str, torch.Tensor]) -> None:
    """Collective: every rank passes the same full state (weights missing from it are kept)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=False))


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())


def checksum(model) -> float:
    """Collective. The sum of all (gathered) parameters, the same on every rank if training agreed."""
    from torch.distributed.tensor import DTensor

    total = 0.0
    for parameter in model.parameters():
        value = parameter.detach()
        if isinstance(value, DTensor):
            value = value.full_tensor()
        total += float(value.double().sum())
    return total
