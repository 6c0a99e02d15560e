"""The run directory: everything a run produces, written so that nothing is left half-written."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError

LOCKED_PACKAGES = (
    "tunesmith", "torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors",
    "numpy", "pandas", "scikit-learn", "scipy", "pydantic",
)  # fmt: skip


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Writes a file through a temporary sibling and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Moves a fully written temporary directory into place, replacing any old one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


class RunDir:
    """Paths and file helpers for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path | None) -> RunDir:
        """Makes a new run directory; refuses to reuse one that exists.

        Raises:
            TunesmithError: the directory already exists (nothing in it is touched).
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
            raise TunesmithError(
                f"Run directory {path} already exists; choose a new runtime.output_dir "
                f"(--set runtime.output_dir=...) or resume it with: tunesmith train --resume {path}"
            )
        path.mkdir(parents=True)
        return cls(path)

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

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text)

    def write_json(self, name: str, value: Any) -> None:
        atomic_write(self.path / name, json.dumps(value, indent=2, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")

    def metrics_lines(self) -> int:
        if not self.metrics_log.exists():
            return 0
        return sum(1 for _ in self.metrics_log.open(encoding="utf-8"))

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
        recorded = self.read_json("hashes.json")
        present = self._hashed_files()
        changed = [n for n in recorded if n in present and sha256_file(present[n]) != recorded[n]]
        missing = [n for n in recorded if n not in present]
        added = [n for n in present if n not in recorded]
        if changed or missing or added:
            parts = [f"{label}: {', '.join(names[:5])}" for label, names in
                     (("changed", changed), ("missing", missing), ("not recorded", added)) if names]  # fmt: skip
            raise TunesmithError(f"{self.path}: files do not match hashes.json ({'; '.join(parts)})")

    def truncate_metrics(self, lines: int) -> None:
        """Keeps the first ``lines`` records (what was logged up to a checkpoint)."""
        if self.metrics_log.exists():
            kept = self.metrics_log.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
            atomic_write(self.metrics_log, "".join(kept))


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 of one (torchrun sets RANK)."""
    return os.environ.get("RANK", "0") == "0"


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
