"""Resumable checkpoints: model, optimizer, scheduler, RNG states and loop position.

Each checkpoint is written into a hidden temporary directory and renamed into place,
so a run killed at any moment leaves the previous checkpoints intact.

Nothing read back from a checkpoint is unpickled: tensors load with
``torch.load(weights_only=True)`` and the RNG states and loop position are JSON, so a crafted
file in a run directory cannot run code on resume. The last file written into a checkpoint is
``manifest.json``, the SHA-256 of every other file in it. Resume checks it and falls back to
the previous checkpoint when a file is missing, truncated, unreadable, added or not the one
written there (a partial copy, a full disk, a file swapped in from another checkpoint or run).
The manifest is no signature: whoever can write the run directory can rewrite it too, which is
why loading never runs code whatever the files hold.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import NotResumable, TunesmithError
from tunesmith.runs import atomic_write, hash_mismatch, replace_dir, sha256_file

MANIFEST = "manifest.json"
"""The file written last into every checkpoint: ``{"files": {relative path: SHA-256}}``."""


class DamagedCheckpoint(TunesmithError):
    """A checkpoint that cannot be resumed from; the message says which file and why."""


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


def _encode_bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def rng_state() -> dict:
    """Every random generator's state (python, numpy, torch, cuda) as plain JSON data."""
    version, internal, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": keys.tolist(), "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": _encode_bytes(torch.get_rng_state()),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = [_encode_bytes(generator) for generator in torch.cuda.get_rng_state_all()]
    return state


def _parse_rng_state(state: dict) -> dict:
    """:func:`rng_state`'s JSON as the objects the generators take, each tried on a fresh
    generator first, so that a damaged file raises here and leaves the global generators as they were."""
    python, numpy = state["python"], state["numpy"]
    parsed = {
        "python": (python["version"], tuple(python["internal"]), python["gauss_next"]),
        "numpy": (numpy["kind"], np.array(numpy["keys"], dtype=np.uint32), numpy["position"], numpy["has_gauss"],
                  numpy["cached_gaussian"]),
        "torch": _decode_bytes(state["torch"]),
        "cuda": [_decode_bytes(generator) for generator in state.get("cuda", [])],
    }  # fmt: skip
    random.Random().setstate(parsed["python"])
    np.random.RandomState().set_state(parsed["numpy"])
    torch.Generator().set_state(parsed["torch"])
    return parsed


def set_rng_state(state: dict) -> None:
    """Restores :func:`rng_state`'s JSON into the global generators."""
    _apply_rng_state(_parse_rng_state(state))


def _apply_rng_state(parsed: dict) -> None:
    random.setstate(parsed["python"])
    np.random.set_state(parsed["numpy"])
    torch.set_rng_state(parsed["torch"])
    if parsed["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(parsed["cuda"])


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
        raise TunesmithError(
            f"{path} does not match the model of this run's config.yaml: missing {lost[:5]}, unexpected "
            f"{unexpected[:5]}; it was written for another model or strategy"
        )


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
    (tmp / "rng.json").write_text(json.dumps(rng_state()), encoding="utf-8")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    write_manifest(tmp)
    replace_dir(tmp, final)
    # Checkpoints after this one are damaged ones a resume fell back from (replaced as the run
    # reaches them); counting them would prune the good ones.
    for old in sorted(p for p in directory.glob("step-*") if p.name <= final.name)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_manifest(directory: Path) -> None:
    """Records the SHA-256 of every file under ``directory`` (DeepSpeed's partitions included)
    in its :data:`MANIFEST`; written last, so a checkpoint with a manifest is complete."""
    files = {name: sha256_file(path) for name, path in _checkpoint_files(directory).items()}
    atomic_write(directory / MANIFEST, json.dumps({"files": files}, indent=2) + "\n")


def _checkpoint_files(directory: Path) -> dict[str, Path]:
    found = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
    found.pop(MANIFEST, None)
    return found


def verify_checkpoint(path: Path) -> None:
    """Checks every file of a checkpoint against its :data:`MANIFEST`.

    Raises:
        DamagedCheckpoint: the manifest is missing or unreadable, or a file changed, went
            missing or appeared since it was written.
    """
    if not (path / MANIFEST).is_file():
        if (path / "rng.pt").is_file():
            raise DamagedCheckpoint(
                f"{path} was written by a tunesmith older than safe checkpoints (its rng.pt is a pickle, which "
                "is never loaded because it could run code)"
            )
        raise DamagedCheckpoint(f"{path / MANIFEST} is missing: the checkpoint is incomplete")
    try:
        recorded = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
        readable = isinstance(recorded, dict) and all(isinstance(value, str) for value in recorded.values())
    except (ValueError, KeyError, TypeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        readable = False
    if not readable:
        raise DamagedCheckpoint(f"{path / MANIFEST} is not a manifest tunesmith wrote")
    mismatch = hash_mismatch(recorded, _checkpoint_files(path))
    if mismatch:
        raise DamagedCheckpoint(f"{path}: files do not match {MANIFEST} ({mismatch})")


@dataclass
class CheckpointContents:
    """What a checkpoint holds, read and checked but not yet applied to anything."""

    model: dict[str, torch.Tensor]
    optimizer: dict | None
    """None for a DeepSpeed checkpoint, whose optimizer partitions DeepSpeed reads itself."""
    scheduler: dict
    rng: dict
    state: LoopState


def load_error_reason(error: Exception) -> str:
    """One line saying why ``torch.load`` failed. For a refused pickle, the object it refused
    (torch's own message goes on to suggest ``weights_only=False``, which must not be followed)."""
    text = str(error).strip()
    refused = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please use|\n|$)", text)
    if refused:
        return f"it holds an object that is not plain data: {refused.group(1).rstrip('. ')}"
    return re.split(r"(?<=\w)\. ", text.splitlines()[0])[0][:200] if text else type(error).__name__


def _load_tensors(path: Path):
    """``torch.load`` that never unpickles code: anything but tensors and plain data is refused."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # a torn zip, a refused pickle, an early EOF: all mean an unusable file
        raise DamagedCheckpoint(f"{path} cannot be read ({load_error_reason(error)})") from None


def _load_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DamagedCheckpoint(f"{path} is not valid JSON ({error})") from None
    if not isinstance(loaded, dict):
        raise DamagedCheckpoint(f"{path} does not hold a JSON object")
    return loaded


def read_checkpoint(path: Path) -> CheckpointContents:
    """Reads a checkpoint after checking it against its manifest, unpickling nothing.

    Raises:
        DamagedCheckpoint: it is incomplete, damaged or altered (see :func:`verify_checkpoint`),
            or a file in it does not hold what tunesmith writes there.
    """
    verify_checkpoint(path)
    optimizer = _load_tensors(path / "optimizer.pt") if (path / "optimizer.pt").is_file() else None
    model, scheduler = _load_tensors(path / "model.pt"), _load_tensors(path / "scheduler.pt")
    try:
        rng = _parse_rng_state(_load_json(path / "rng.json"))
    except DamagedCheckpoint:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise DamagedCheckpoint(f"{path / 'rng.json'} does not hold random generator states ({error!r})") from None
    try:
        state = LoopState(**_load_json(path / "state.json"))
    except TypeError as error:
        raise DamagedCheckpoint(f"{path / 'state.json'} does not hold a loop position ({error})") from None
    if not isinstance(state.step, int) or not isinstance(state.epoch, int) or not isinstance(model, dict):
        raise DamagedCheckpoint(f"{path} does not hold what tunesmith writes into a checkpoint")
    return CheckpointContents(model, optimizer, scheduler, rng, state)


def _keyed_by_name(optimizer_state: dict) -> bool:
    """Sharded runs save optimizer state keyed by parameter name, others by position."""
    return any(isinstance(key, str) for key in optimizer_state.get("state", {}))


def load_checkpoint(path: Path, *, model, optimizer, scheduler, sharded: bool = False) -> LoopState:
    """Restores everything save_checkpoint wrote and returns the loop state.

    Args:
        optimizer: None for a DeepSpeed run, whose engine restores its own optimizer partitions.
        sharded: the model and optimizer are FSDP-sharded (every rank calls this).

    Raises:
        DamagedCheckpoint: see :func:`read_checkpoint`; nothing has been restored yet.
        TunesmithError: the checkpoint was written by another kind of run.
    """
    contents = read_checkpoint(path)
    if (optimizer is None) != (contents.optimizer is None):
        written, now = ("a ddp, fsdp or one-process", "deepspeed") if optimizer is None else ("a deepspeed", "not")
        raise TunesmithError(
            f"{path} was written by {written} run and this run is {now}: resume with the runtime.distributed "
            "setting it was written with"
        )
    optimizer_state = contents.optimizer or {}
    if optimizer_state.get("state") and _keyed_by_name(optimizer_state) != sharded:
        written, now = ("an fsdp", "ddp or one process") if not sharded else ("a ddp or one-process", "fsdp")
        raise TunesmithError(
            f"{path} was written by {written} run and this run uses {now}: resume with the same "
            "runtime.distributed setting (the number of processes may differ)"
        )
    _load_model_state(model, contents.model, path / "model.pt", sharded=sharded)
    if sharded:
        from tunesmith.train.sharding import load_full_optimizer_state

        load_full_optimizer_state(model, optimizer, optimizer_state)
    elif optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(contents.scheduler)
    _apply_rng_state(contents.rng)
    return contents.state


def load_latest_checkpoint(
    directory: Path, *, model, optimizer, scheduler, sharded: bool = False, log=print
) -> tuple[Path, LoopState] | None:
    """Restores the newest checkpoint under ``directory`` that is complete and intact.

    A damaged one (see :func:`read_checkpoint`) is logged with the reason and the one before it
    is tried; the damaged ones stay on disk and are replaced as the run reaches their step again.

    Returns:
        (the checkpoint, its loop state), or None when there is no checkpoint at all.

    Raises:
        TunesmithError: there are checkpoints but none is usable, or they were written by
            another kind of run (see :func:`load_checkpoint`).
    """
    problems = []
    for path in sorted((p for p in directory.glob("step-*") if p.is_dir()), reverse=True):
        try:
            state = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, sharded=sharded)
        except DamagedCheckpoint as error:
            log(f"Checkpoint {path.name} is unusable, skipping it: {error}")
            problems.append(str(error))
            continue
        _check_best_weights(directory / "best.pt")
        return path, state
    if problems:
        raise NotResumable(
            f"no checkpoint in {directory} can be resumed from: {'; '.join(problems)}. Restore the run "
            "directory from a copy, or train again from the start into a new runtime.output_dir"
        )
    return None


def _check_best_weights(path: Path) -> None:
    """Reads ``best.pt`` now, since the loop loads it only at the end of training."""
    if not path.is_file():
        return
    try:
        _load_tensors(path)
    except DamagedCheckpoint as error:
        raise NotResumable(
            f"{error}; the best weights so far are lost: delete {path} to resume anyway (the run then keeps the "
            "best weights it finds from here on, or its last ones)"
        ) from None


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
    try:
        weights = _load_tensors(path)
    except DamagedCheckpoint as error:
        raise TunesmithError(
            f"{error}; the best weights are lost: delete it and finish the run with its last weights by "
            f"tunesmith train --resume {path.parent.parent}"
        ) from None
    _load_model_state(model, weights, path, sharded=sharded)
    return True
