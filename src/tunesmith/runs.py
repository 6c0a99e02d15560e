"""The run directory: everything a run produces, written so that nothing is left half-written."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from tunesmith.errors import PATH_PROBLEMS, DiskFullError, StoppedPartWay, TunesmithError, disk_full

LOCKED_PACKAGES = (
    "tunesmith", "torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors",
    "numpy", "pandas", "scikit-learn", "scipy", "pydantic",
)  # fmt: skip


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Writes a file through a temporary sibling and a rename: readers never see half a file.

    Raises:
        DiskFullError: the disk filled up; the temporary file is gone and ``path`` is as it was.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as error:  # Ctrl-C included: never leave the temporary file behind
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if disk_full(error) is not None:
            raise DiskFullError(path) from error
        if isinstance(error, OSError) and error.filename and Path(error.filename).name.startswith(f".{path.name}."):
            # Name the file the user asked for, not its hidden temporary sibling.
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


@contextlib.contextmanager
def new_file(path: Path) -> Iterator[Any]:
    """A text handle for a file written a piece at a time that takes its name ``path`` only when
    complete: the lines go to a temporary sibling (the usual permissions), which is hard-linked
    to ``path`` at the end, so a file that appeared there meanwhile is never replaced. On any
    error (Ctrl-C included) the temporary file is removed and ``path`` is as it was.

    Raises:
        DiskFullError: the disk filled up.
        TunesmithError: ``path`` appeared while writing (the complete file is kept beside it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(name)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if disk_full(error) is not None:
            raise DiskFullError(path) from error
        raise
    appeared = TunesmithError(f"{path} appeared while it was being written; the complete file is kept in {tmp}")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise appeared from None
    except OSError:  # a file system without hard links: a rename, after one more look
        if path.exists():
            raise appeared from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def usual_permissions(folder: Path) -> None:
    """Gives every file under ``folder`` and the folders themselves the permissions a new file
    and folder get (0644 and 0755 under the usual umask): some writers (safetensors through
    transformers and PEFT) make their files private (0600), which a shared model must not be."""
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~_UMASK)


def replace_dir(tmp: Path, final: Path) -> None:
    """Moves a fully written temporary directory into place, replacing any old one.

    If the move fails, ``final`` is put back as it was and ``tmp`` is removed.
    """
    old = final.with_name(f".{final.name}.old")
    try:
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


TEMPORARY_NAMES = (".tmp-*", ".*.tmp", ".*.tmp.*", ".*.old")
"""What tunesmith's own half-written files and directories are called inside a run directory
(``.tmp-step-N``, ``.tmp-model``, ``.best.pt.tmp``, ``.NAME.tmp.png``, ``replace_dir``'s ``.NAME.old``)."""


class RunDir:
    """Paths and file helpers for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.created_dirs: list[Path] = []
        """The directories :meth:`create` made (the run directory, then parents it had to add)."""

    @classmethod
    def create(cls, path: str | Path | None) -> RunDir:
        """Makes a new run directory; refuses to reuse one that exists.

        Raises:
            TunesmithError: the directory already exists (nothing in it is touched), or it cannot
                be made there (a file in the way, no permission, a full disk).
        """
        if path is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = Path("runs") / stamp
            suffix = 1
            while path.exists():
                suffix += 1
                path = Path("runs") / f"{stamp}-{suffix}"
        path = Path(path)
        if path.exists():
            raise TunesmithError(existing_run_message(path))
        missing = [p for p in (path, *path.parents) if not p.exists()]
        try:
            path.mkdir(parents=True)
        except OSError as error:
            for made in missing:  # parents made before the failure (rmdir refuses anything else)
                with contextlib.suppress(OSError):
                    made.rmdir()
            if disk_full(error) is not None:
                raise DiskFullError(path) from error
            reason = PATH_PROBLEMS.get(error.errno, f"{error.strerror}: choose another path")
            raise TunesmithError(f"cannot create the run directory {path} (runtime.output_dir): {reason}") from error
        run = cls(path)
        run.created_dirs = missing
        return run

    def discard(self) -> None:
        """Removes a run directory that :meth:`create` made, and the parents it made that are now
        empty; a directory this object did not create is never touched."""
        if not self.created_dirs:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.created_dirs[1:]:
            try:
                parent.rmdir()
            except OSError:  # not empty: something else lives there now
                break

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """Opens an existing run directory.

        Raises:
            TunesmithError: it is not a tunesmith run directory.
        """
        run = cls(path)
        if not (run.path / "config.yaml").is_file():
            raise TunesmithError(f"{run.path} is not a tunesmith run directory (no config.yaml in it)")
        return run

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def finished(self) -> bool:
        """True once the run wrote its model and final metrics: there is nothing left to resume."""
        return (self.model_dir / "config.json").is_file() and (self.path / "metrics.json").is_file()

    @property
    def federated(self) -> bool:
        """True for a run of ``tunesmith federate`` (its plan of clients, ``federation/shards.json``)."""
        return (self.path / "federation" / "shards.json").is_file()

    @property
    def resume_command(self) -> str:
        """The command that continues this run: a federated run's, or train's."""
        return "tunesmith federate --resume" if self.federated else "tunesmith train --resume"

    def has_checkpoint(self) -> bool:
        """True when ``checkpoints/`` holds a complete checkpoint that a resume can start from, or a
        federated run has saved a round's global weights."""
        # manifest.json is written last into every checkpoint (train/checkpoint.py); older ones lack it
        # and are refused by resume, so they do not count.
        if (self.path / "federation" / "state.json").is_file():  # a federated run's record of its rounds
            return True
        return any(
            (step / "state.json").is_file() and (step / "manifest.json").is_file()
            for step in self.checkpoints_dir.glob("step-*")
        )

    def remove_temporary(self) -> list[Path]:
        """Removes tunesmith's own half-written files (:data:`TEMPORARY_NAMES`) anywhere in the run
        directory, as left by a write that failed; returns what it removed."""
        found = sorted({p for pattern in TEMPORARY_NAMES for p in self.path.rglob(pattern)}, reverse=True)
        for path in found:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return found

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text)

    def write_json(self, name: str, value: Any) -> None:
        atomic_write(self.path / name, json.dumps(value, indent=2, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def temperature(self) -> float | None:
        """The softmax temperature fitted on the validation split (``calibration.json``), or None
        when the run has none (not a single-label classifier, or no validation split)."""
        path = self.path / "calibration.json"
        return float(self.read_json("calibration.json")["temperature"]) if path.is_file() else None

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")

    def metrics_lines(self) -> int:
        if not self.metrics_log.exists():
            return 0
        return sum(1 for _ in self.metrics_log.open(encoding="utf-8"))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds an exclusive lock on ``.lock`` in the run directory while one process trains it,
        so that a second ``train --resume`` refuses instead of writing the same files. It is an
        advisory ``flock``: the kernel drops it when the process ends, however it ends, so a
        killed run never leaves a stale lock behind.

        Raises:
            TunesmithError: another process holds the lock.
        """
        with (self.path / ".lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TunesmithError(
                    f"{self.path} is being trained by another process right now (it holds {self.path / '.lock'}); "
                    "wait for it to finish or stop it, then resume"
                ) from None
            yield

    HASHED = ("model", "adapter", "config.yaml", "task.json", "calibration.json")
    """What a finished run's ``hashes.json`` covers: everything a deployed model is made of."""

    def _hashed_files(self) -> dict[str, Path]:
        found = {}
        for name in self.HASHED:
            path = self.path / name
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] * path.is_file()
            found |= {p.relative_to(self.path).as_posix(): p for p in files}
        return found

    def record_hashes(self) -> None:
        """Writes ``hashes.json``: the SHA-256 of every file of the model, its config and labels."""
        self.write_json("hashes.json", {name: sha256_file(path) for name, path in self._hashed_files().items()})

    def verify_hashes(self) -> None:
        """Raises TunesmithError naming every file that changed, went missing or appeared since
        ``record_hashes``."""
        if not (self.path / "hashes.json").is_file():
            raise TunesmithError(f"{self.path} has no hashes.json: it did not finish, or predates recorded hashes")
        mismatch = hash_mismatch(self.read_json("hashes.json"), self._hashed_files())
        if mismatch:
            raise TunesmithError(f"{self.path}: files do not match hashes.json ({mismatch})")

    def truncate_metrics(self, lines: int) -> None:
        """Keeps the first ``lines`` records (what was logged up to a checkpoint)."""
        if self.metrics_log.exists():
            kept = self.metrics_log.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
            atomic_write(self.metrics_log, "".join(kept))


def hash_mismatch(recorded: dict[str, str], present: dict[str, Path]) -> str:
    """How the files ``present`` differ from the SHA-256 hashes ``recorded`` for them (names that
    changed, went missing or were not recorded), or "" when they match."""
    changed = [n for n in recorded if n in present and sha256_file(present[n]) != recorded[n]]
    missing = [n for n in recorded if n not in present]
    added = [n for n in present if n not in recorded]
    return "; ".join(f"{label}: {', '.join(names[:5])}" for label, names in
                     (("changed", changed), ("missing", missing), ("not recorded", added)) if names)  # fmt: skip


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


RUN_PARTS = ("checkpoints", "data", "hashes.json")
"""Parts of a run directory, besides ``RunDir.HASHED``, that no other output may be written into:
resume reads the checkpoints and the data splits back."""


def is_run_dir(path: Path) -> bool:
    """True for a tunesmith run directory: a folder holding config.yaml and task.json."""
    try:
        return (path / "config.yaml").is_file() and (path / "task.json").is_file()
    except OSError:  # an unreadable folder is not one we could have written
        return False


def existing_run_message(path: Path, what: str = "runtime.output_dir") -> str:
    """Why a new run may not go to ``path``, which exists; resume is suggested only when there is
    something to resume from.

    Args:
        what: the option or key that named the path.
    """
    existing = RunDir(path)
    resumable = (path / "config.yaml").is_file() and existing.has_checkpoint() and not existing.finished
    hint = f" or resume it with: {existing.resume_command} {path}" if resumable else ""
    if what != "runtime.output_dir":
        return f"{what} {path} already exists; choose a new path (tunesmith never overwrites a run){hint}"
    return f"Run directory {path} already exists; choose a new runtime.output_dir (--set runtime.output_dir=...){hint}"


def claim_output(path: str | Path, *, kind: Literal["dir", "file"], what: str, run: bool = False,
                 note: str = "") -> Path:  # fmt: skip
    """Checks that a command may write ``path``; the one rule of every command that writes.

    Tunesmith writes only what is new: an existing file (or link) is never replaced, and an
    existing directory is used only when it is empty. An output may not go into the parts of a
    run directory its hashes, resume or data depend on (model/, adapter/, checkpoints/, data/,
    ...), and a new run directory may not lie anywhere inside another run. Call it before any
    slow work, so that a refusal costs nothing.

    Args:
        path: what the command is about to write.
        kind: "dir" for a directory the command fills, "file" for a single file.
        what: the option or key that named the path (``--out``), so the message says what to change.
        run: ``path`` will be a run directory: it must not exist yet, not even empty.
        note: why the path is refused, when there is more to say than that it exists.

    Returns:
        ``path`` as a Path.

    Raises:
        TunesmithError: the path exists (and is not an empty directory where a directory is
            expected), or lies inside a run where it must not.
    """
    path = Path(path)
    why = f" ({note})" if note else ""
    never = "tunesmith never overwrites what it did not create"
    if path.is_symlink() or path.exists():
        if kind == "file" and path.is_dir():
            raise TunesmithError(f"{what} {path} is a directory{why}; give the path of a new file")
        if run:  # a run directory must not exist yet, not even empty
            raise TunesmithError(existing_run_message(path, what))
        if kind == "file" or not path.is_dir():
            raise TunesmithError(f"{what} {path} already exists{why}; choose a new path ({never})")
        if any(path.iterdir()):
            raise TunesmithError(
                f"{what} {path} already exists and is not empty{why}; choose a new or empty directory ({never})"
            )
    resolved = path.resolve()
    for parent in resolved.parents:  # all of them: a run inside a CV or study folder is still a run
        if not is_run_dir(parent):
            continue
        part = resolved.relative_to(parent).parts[0]
        if run:
            raise TunesmithError(f"{what} {path} lies inside the run directory {parent}; a run may not be "
                                 "nested in another run: choose a path outside it")  # fmt: skip
        if part in (*RunDir.HASHED, *RUN_PARTS):
            raise TunesmithError(f"{what} {path} lies inside {part} of the run {parent}, which its hashes and resume "
                                 "check; writing there would break that run: choose a path outside it")  # fmt: skip
    return path


def unused_path(path: str | Path) -> Path:
    """``path`` when nothing is there, else the first free ``NAME-2``, ``NAME-3``, ... beside it
    (before the suffix): default output names never collide with what exists."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.is_symlink() or candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 of one (torchrun sets RANK)."""
    return os.environ.get("RANK", "0") == "0"


def leave_process_group() -> None:
    """Shuts down this process's torch.distributed group, if it has one, before the interpreter
    exits: a group left for interpreter shutdown to tear down can abort the process ("terminate
    called without an active exception") after its work is done. Each rank calls it when its
    own work ends; the shutdown is local (no collective), so a rank that finishes early does
    not wait for the others."""
    distributed = sys.modules.get("torch.distributed")  # never imports torch for a command that did not
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the working directory, with -dirty when there are changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_lock(device: str) -> dict[str, Any]:
    """Package versions, interpreter, platform, device and threads of this run."""
    import torch

    versions = {}
    for name in LOCKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "git_commit": git_commit(),
        "command": sys.argv,
    }


@contextlib.contextmanager
def settled_on_failure(run: RunDir, *, fresh: bool) -> Iterator[None]:
    """Any failure inside (Ctrl-C and a full disk included) leaves the run as
    :func:`after_failed_run` says and is raised again, as a DiskFullError when the disk filled up."""
    try:
        yield
    except BaseException as error:
        failure = after_failed_run(run, error, fresh=fresh)
        if failure is error:
            raise
        raise failure from error


def after_failed_run(run: RunDir, error: BaseException, *, fresh: bool) -> BaseException:
    """Leaves a run that failed either gone or resumable, never half-made, and says which.

    A fresh run without a checkpoint has nothing to continue, and one that failed on a mistake a
    resume would meet again (a TunesmithError such as a non-finite loss; not a full disk or
    Ctrl-C) is not worth continuing: the directory this call created is removed, so the same
    command can start again. Otherwise the directory is kept without its half-written files. The
    error to raise gets a note saying what became of the run. A finished run is never removed.

    Returns:
        ``error``, or a DiskFullError for it when the disk filled up.
    """
    full = None if isinstance(error, TunesmithError) else disk_full(error, written=run.path)  # before space is freed
    failure = error if full is None else full
    recurs = isinstance(failure, TunesmithError) and not isinstance(failure, (DiskFullError, StoppedPartWay))
    if run.finished:  # e.g. a failed forgetting check: the run is complete and its message says so
        return failure
    if fresh and not run.has_checkpoint():
        run.discard()
        failure.add_note(f"the run had no checkpoint yet, so its directory {run.path} was removed")
    elif fresh and recurs:
        run.discard()
        failure.add_note(f"a resume would fail the same way, so the run directory {run.path} was removed")
    else:
        run.remove_temporary()
        if not recurs:  # a TunesmithError's own message says what to do; resuming would not help
            again = ", or start again with another runtime.output_dir" if fresh else ""
            failure.add_note(f"{run.path} is kept: continue it with {run.resume_command} {run.path}{again}")
    return failure
