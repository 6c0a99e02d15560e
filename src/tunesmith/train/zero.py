"""DeepSpeed ZeRO data parallelism (``runtime.distributed: deepspeed``).

The user's DeepSpeed JSON config passes through; tunesmith fills in what its own config
already decides (batch sizes, accumulation, clipping, precision) and refuses a config file that
says otherwise, so one setting never silently overrides another. tunesmith's optimizer and
learning-rate schedule are handed to the engine as client objects.

ZeRO stages 0, 1 and 2 are supported: parameters stay whole on every rank (gradients and
optimizer state are partitioned), so weights are read and saved as in a DDP run. The optimizer
state of a checkpoint is written by DeepSpeed itself, one partition per rank, beside
tunesmith's files; resuming needs the same number of processes. For sharded parameters use
``runtime.distributed: fsdp``.

Resume reads those partitions without unpickling code: DeepSpeed's own loader calls
``torch.load(weights_only=False)``, so the engine is given one that loads with
``weights_only=True``, allowing only the few DeepSpeed classes its ZeRO files hold. The files
are also covered by the checkpoint's manifest (train/checkpoint.py), checked before this.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError
from tunesmith.train.checkpoint import load_error_reason

CHECKPOINT_TAG = "deepspeed"
"""The folder inside a tunesmith checkpoint that holds DeepSpeed's own files."""

_OWNED_SECTIONS = {
    "optimizer": "train.optimizer / train.learning_rate / train.weight_decay",
    "scheduler": "train.scheduler / train.warmup_ratio",
}


def _read(source: str | None) -> dict[str, Any]:
    if source is None:
        return {"zero_optimization": {"stage": 2}}
    path = Path(source)
    if not path.is_file():
        raise TunesmithError(f"runtime.deepspeed_config: file not found: {path}")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TunesmithError(f"runtime.deepspeed_config: {path} is not valid JSON ({error})") from None
    if not isinstance(loaded, dict):
        raise TunesmithError(f"runtime.deepspeed_config: {path} must hold a JSON object")
    return loaded


def build_config(source: str | None, *, batch_size: int, accumulation: int, max_grad_norm: float | None,
                 mixed_precision: str, world: int) -> dict[str, Any]:  # fmt: skip
    """The DeepSpeed config for this run: ``source`` (a JSON file; None means ZeRO stage 2)
    with tunesmith's values filled in where it says ``auto`` or nothing.

    Raises:
        TunesmithError: the file is missing or malformed, sets an optimizer or scheduler, uses
            ZeRO stage 3, or gives a value that contradicts the tunesmith config.
    """
    config = _read(source)
    where = f"runtime.deepspeed_config ({source})" if source else "runtime.deepspeed_config"
    for section, instead in _OWNED_SECTIONS.items():
        if section in config:
            raise TunesmithError(f"{where}: remove the '{section}' section; tunesmith sets it from {instead}")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise TunesmithError(f"{where}: 'zero_optimization' must be an object")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2):
        raise TunesmithError(
            f"{where}: zero_optimization.stage={stage!r} is not supported; use 0, 1 or 2, or "
            "runtime.distributed=fsdp to shard the parameters themselves"
        )
    micro = math.ceil(batch_size / world)  # tunesmith splits each global batch over the ranks
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * world,
        "gradient_clipping": 0.0 if max_grad_norm is None else float(max_grad_norm),
    }
    names = {
        "train_micro_batch_size_per_gpu": "train.batch_size / processes",
        "gradient_accumulation_steps": "train.gradient_accumulation_steps",
        "train_batch_size": "train.batch_size x train.gradient_accumulation_steps",
        "gradient_clipping": "train.max_grad_norm",
    }
    for key, value in ours.items():
        given = config.get(key, "auto")
        if given != "auto" and given != value:
            raise TunesmithError(
                f"{where}: {key}={given!r} contradicts {names[key]} (which gives {value!r}); "
                'set it to "auto" or leave it out'
            )
        config[key] = value
    for precision in ("fp16", "bf16"):
        section = config.get(precision, {})
        enabled = section.get("enabled", False) if isinstance(section, dict) else section
        wanted = mixed_precision == precision
        if enabled == "auto":
            enabled = wanted
        if bool(enabled) != wanted:
            raise TunesmithError(
                f"{where}: {precision}.enabled={enabled!r} contradicts runtime.mixed_precision={mixed_precision!r}"
            )
        if wanted:
            config[precision] = {**(section if isinstance(section, dict) else {}), "enabled": True}
    config["zero_allow_untested_optimizer"] = True  # tunesmith's torch optimizer
    config.setdefault("steps_per_print", 10**9)  # tunesmith logs progress itself
    return config


def initialize(model, optimizer, scheduler, config: dict[str, Any]):
    """Wraps ``model`` in a DeepSpeed engine that owns the optimizer step, clipping and the
    schedule. Every rank calls it (torch.distributed must be initialized)."""
    try:
        import deepspeed
    except ImportError:
        raise TunesmithError(
            "runtime.distributed=deepspeed needs the deepspeed package: pip install 'tunesmith[deepspeed]'"
        ) from None
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False
    )
    return engine


def backward(engine, loss, *, last: bool) -> None:
    """Accumulates the gradient of ``loss`` (already normalised over the whole step); on the
    step's last batch the gradients are reduced across ranks."""
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss, scale_wrt_gas=False)


def step(engine) -> None:
    """Clips, steps the optimizer and the schedule, and zeroes the gradients."""
    engine.step()


def save_partitions(engine, directory: Path) -> None:
    """Collective: every rank writes its optimizer partition under ``directory/deepspeed``."""
    engine.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, save_latest=False, exclude_frozen_parameters=True)


def load_partitions(engine, directory: Path) -> None:
    """Collective: restores what :func:`save_partitions` wrote (same number of processes)."""
    path = directory / CHECKPOINT_TAG
    if not path.is_dir():
        raise TunesmithError(
            f"{directory} was not written by a deepspeed run: resume with the runtime.distributed it was written with"
        )
    ranks = len(list(path.glob("*optim_states.pt")))  # none at stage 0: the state is in the model file
    world = engine.world_size
    if ranks and ranks != world:
        raise TunesmithError(
            f"{directory} holds DeepSpeed optimizer partitions for {ranks} processes; resume it with --nproc {ranks}, "
            f"not {world}"
        )
    engine.checkpoint_engine.load = load_without_code  # instead of DeepSpeed's unpickling loader
    engine.load_checkpoint(
        str(directory), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=False,
        load_module_strict=False,
    )  # fmt: skip


def load_without_code(path: str, map_location=None):
    """Loads one DeepSpeed checkpoint file with ``torch.load(weights_only=True)``: tensors, plain
    data and the DeepSpeed classes a ZeRO stage 0-2 file holds (its loss scaler, stage and
    parameter fragment addresses), nothing that could run code.

    Raises:
        TunesmithError: the file holds anything else.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise TunesmithError(
            f"{path} holds objects a DeepSpeed checkpoint of tunesmith never holds, so it is not loaded "
            f"({load_error_reason(error)}); restore the run directory from a copy, or train again into a new "
            "runtime.output_dir"
        ) from None
