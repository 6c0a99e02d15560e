"""Resumable checkpoints: model, optimizer, scheduler, RNG states and loop position.

Each checkpoint is written into a hidden temporary directory and renamed into place,
so a run killed at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.runs import replace_dir


@dataclass
class LoopState:
    """Where the training loop is; saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    loss_since_log: float = 0.0
    steps_since_log: int = 0
    examples_seen: int = 0
    metrics_lines: int = 0
    history: list[dict] = field(default_factory=list)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state(
    model, *, trainable_only: bool, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The weights a checkpoint needs. With trainable_only, the parameters that train plus the
    buffers: frozen weights never change, and the base model they come from is loaded again on
    resume, so a LoRA checkpoint holds megabytes instead of the whole model.

    Args:
        state: the model's full state dict when it was already gathered (sharded training).
    """
    state = model.state_dict() if state is None else state
    if not trainable_only:
        return state
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    return {name: value for name, value in state.items() if name not in frozen}


def _load_model_state(model, state: dict[str, torch.Tensor], path: Path, sharded: bool = False) -> None:
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    if sharded:
        from tunesmith.train.sharding import load_full_model_state

        missing = trainable - set(state)
        unexpected = sorted(set(state) - set(model.state_dict()))
        load_full_model_state(model, state)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    lost = sorted(set(missing) & trainable)
    if lost or unexpected:
        raise RuntimeError(f"{path} does not match the model: missing {lost[:5]}, unexpected {unexpected[:5]}")


def pending_checkpoint(directory: Path, step: int) -> Path:
    """The hidden directory a checkpoint is written into before it is renamed into place."""
    return directory / f".tmp-step-{step:08d}"


def prepare_checkpoint(directory: Path, step: int) -> Path:
    """Creates an empty :func:`pending_checkpoint` directory, for files other processes write
    (DeepSpeed's optimizer partitions) before :func:`save_checkpoint` completes it."""
    tmp = pending_checkpoint(directory, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(
    directory: Path,
    *,
    model,
    optimizer,
    scheduler,
    state: LoopState,
    keep: int,
    trainable_only: bool = False,
    gathered: tuple[dict, dict] | None = None,
) -> Path:
    """Writes ``directory/step-NNNNNNNN`` atomically and prunes all but the newest ``keep``.

    Args:
        optimizer: None when the optimizer state was already written into
            :func:`prepare_checkpoint`'s directory (DeepSpeed partitions).
        gathered: (model state, optimizer state) already gathered in full from a sharded model.
    """
    final = directory / f"step-{state.step:08d}"
    tmp = pending_checkpoint(directory, state.step)
    if optimizer is not None:
        prepare_checkpoint(directory, state.step)
    model_dict, optimizer_dict = gathered if gathered is not None else (None, None)
    if optimizer is not None and optimizer_dict is None:
        optimizer_dict = optimizer.state_dict()
    torch.save(model_state(model, trainable_only=trainable_only, state=model_dict), tmp / "model.pt")
    if optimizer_dict is not None:
        torch.save(optimizer_dict, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    replace_dir(tmp, final)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(p for p in directory.glob("step-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def _keyed_by_name(optimizer_state: dict) -> bool:
    """Sharded runs save optimizer state keyed by parameter name, others by position."""
    return any(isinstance(key, str) for key in optimizer_state.get("state", {}))


def load_checkpoint(path: Path, *, model, optimizer, scheduler, sharded: bool = False) -> LoopState:
    """Restores everything save_checkpoint wrote and returns the loop state.

    Args:
        optimizer: None for a DeepSpeed run, whose engine restores its own optimizer partitions.
        sharded: the model and optimizer are FSDP-sharded (every rank calls this).
    """
    if (optimizer is None) == (path / "optimizer.pt").is_file():
        written, now = ("a ddp, fsdp or one-process", "deepspeed") if optimizer is None else ("a deepspeed", "not")
        raise TunesmithError(
            f"{path} was written by {written} run and this run is {now}: resume with the runtime.distributed "
            "setting it was written with"
        )
    optimizer_state = {} if optimizer is None else torch.load(path / "optimizer.pt", weights_only=True)
    if optimizer_state.get("state") and _keyed_by_name(optimizer_state) != sharded:
        written, now = ("an fsdp", "ddp or one process") if not sharded else ("a ddp or one-process", "fsdp")
        raise TunesmithError(
            f"{path} was written by {written} run and this run uses {now}: resume with the same "
            "runtime.distributed setting (the number of processes may differ)"
        )
    _load_model_state(model, torch.load(path / "model.pt", weights_only=True), path / "model.pt", sharded=sharded)
    if sharded:
        from tunesmith.train.sharding import load_full_optimizer_state

        load_full_optimizer_state(model, optimizer, optimizer_state)
    elif optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return LoopState(**json.loads((path / "state.json").read_text(encoding="utf-8")))


def save_best_weights(
    directory: Path, model, *, trainable_only: bool = False, gathered: dict[str, torch.Tensor] | None = None
) -> None:
    """Keeps the best model so far as ``directory/best.pt`` (written through a rename).

    Args:
        gathered: the full state dict already gathered from a sharded model.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".best.pt.tmp"
    torch.save(model_state(model, trainable_only=trainable_only, state=gathered), tmp)
    tmp.replace(directory / "best.pt")


def load_best_weights(directory: Path, model, sharded: bool = False) -> bool:
    path = directory / "best.pt"
    if not path.is_file():
        return False
    _load_model_state(model, torch.load(path, weights_only=True), path, sharded=sharded)
    return True
