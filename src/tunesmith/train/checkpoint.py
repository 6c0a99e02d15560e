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


def model_state(model, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The weights a checkpoint needs. With trainable_only, the parameters that train plus the
    buffers: frozen weights never change, and the base model they come from is loaded again on
    resume, so a LoRA checkpoint holds megabytes instead of the whole model."""
    state = model.state_dict()
    if not trainable_only:
        return state
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    return {name: value for name, value in state.items() if name not in frozen}


def _load_model_state(model, state: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    lost = sorted(set(missing) & trainable)
    if lost or unexpected:
        raise RuntimeError(f"{path} does not match the model: missing {lost[:5]}, unexpected {unexpected[:5]}")


def save_checkpoint(
    directory: Path, *, model, optimizer, scheduler, state: LoopState, keep: int, trainable_only: bool = False
) -> Path:
    """Writes ``directory/step-NNNNNNNN`` atomically and prunes all but the newest ``keep``."""
    final = directory / f"step-{state.step:08d}"
    tmp = directory / f".tmp-step-{state.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model_state(model, trainable_only=trainable_only), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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


def load_checkpoint(path: Path, *, model, optimizer, scheduler) -> LoopState:
    """Restores everything save_checkpoint wrote and returns the loop state."""
    _load_model_state(model, torch.load(path / "model.pt", weights_only=True), path / "model.pt")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return LoopState(**json.loads((path / "state.json").read_text(encoding="utf-8")))


def save_best_weights(directory: Path, model, *, trainable_only: bool = False) -> None:
    """Keeps the best model so far as ``directory/best.pt`` (written through a rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".best.pt.tmp"
    torch.save(model_state(model, trainable_only=trainable_only), tmp)
    tmp.replace(directory / "best.pt")


def load_best_weights(directory: Path, model) -> bool:
    path = directory / "best.pt"
    if not path.is_file():
        return False
    _load_model_state(model, torch.load(path, weights_only=True), path)
    return True
