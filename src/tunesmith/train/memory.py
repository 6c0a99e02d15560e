"""Activation checkpointing (``train.activation_checkpointing``): the forward pass keeps only
each layer's input and the backward pass recomputes the rest, trading about a third more compute
for most of the activation memory. transformers does the work (``activation_checkpointing_enable``,
non-reentrant ``torch.utils.checkpoint``, which replays dropout with the same random state, so
the losses do not change); this module decides when and says so.

``auto`` turns it on when the activations of one step are estimated at more than
``ACTIVATION_SHARE`` of the memory available (free RAM on a CPU, free device memory on a GPU).
The estimate is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", section 4.1, without tensor parallelism): per layer, ``s * b * h * (34 + 5 * a * s / h)``
bytes at two bytes a value, for sequence length s (``model.max_length``, an upper bound), batch b (``train.batch_size`` over the
processes: it is the global batch), hidden size h and a heads. Each process decides for itself,
on its own device's free memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from tunesmith.errors import TunesmithError

ACTIVATION_SHARE = 0.5


def activation_bytes(model_config, *, batch_size: int, max_length: int, value_bytes: int = 4) -> int | None:
    """The estimated activation memory of one training step (None: the config does not say its
    layers, hidden size and heads)."""
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, hidden, heads)):
        return None
    per_layer = max_length * batch_size * hidden * (34 + 5 * heads * max_length / hidden)
    return int(layers * per_layer * value_bytes / 2)


def available_bytes(device: str) -> int:
    """Free memory where the activations will live."""
    if device == "cuda":  # this process's GPU: accelerate has not picked it yet
        import torch

        return int(torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def apply_activation_checkpointing(model, setting: str, *, batch_size: int, max_length: int, device: str,
                                   value_bytes: int, log: Callable[[str], None]) -> bool:  # fmt: skip
    """Turns activation checkpointing on for ``setting`` ``on``, or ``auto`` when memory is short;
    returns whether it is on.

    Raises:
        TunesmithError: ``on`` for a model whose layers cannot be checkpointed.
    """
    if setting == "off":
        return False
    base = _checkpointable(model)
    supported = bool(getattr(base, "supports_gradient_checkpointing", False))
    if setting == "auto":
        per_process = max(1, batch_size // int(os.environ.get("WORLD_SIZE", "1")))
        need = activation_bytes(base.config, batch_size=per_process, max_length=max_length, value_bytes=value_bytes)
        if need is None:  # nothing to weigh: leave it off
            return False
        have = available_bytes(device)
        if need <= ACTIVATION_SHARE * have:
            return False
        estimate = f"a step's activations are estimated at {need / 2**30:.1f} GiB of {have / 2**30:.1f} GiB free"
        if not supported:
            log(f"Activation checkpointing would help ({estimate}), but {type(base).__name__} cannot checkpoint "
                "its layers: lower train.batch_size or model.max_length if memory runs out")  # fmt: skip
            return False
        base.activation_checkpointing_enable()
        log(f"Activation checkpointing on (train.activation_checkpointing=auto): {estimate}")
        return True
    if not supported:
        raise TunesmithError(f"train.activation_checkpointing=on: {type(base).__name__} cannot checkpoint its "
                             "layers; set it to off or auto")  # fmt: skip
    base.activation_checkpointing_enable()
    log("Activation checkpointing on: layers recompute their activations in the backward pass")
    return True


def _checkpointable(model):
    """The transformers model whose layers checkpoint: under LoRA the adapted model, inside
    tunesmith's wrapping classifiers (contrastive's pooled one) the wrapped encoder."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    wrapped = base._wrapped() if hasattr(base, "_wrapped") else None
    return wrapped if wrapped is not None else base
