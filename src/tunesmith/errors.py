"""The one exception type that carries a user's mistake to the CLI; the recognition of the
file-system errors a user fixes too (a full disk, a path that cannot be written); and, for
every other error, the log file and the one line the CLI shows instead of a traceback."""

import errno
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path


class TunesmithError(Exception):
    """A problem the user can fix: a bad file, column, label, config value or path.

    The CLI prints the message without a traceback and exits with code 2, so the
    message must say what was wrong, where, and how to fix it.
    """


class NotResumable(TunesmithError):
    """A run that cannot be continued as it is (none of its checkpoints can be read back): the
    message says what to do instead, and nothing may suggest ``--resume``."""


class StoppedPartWay(TunesmithError):
    """A run that stopped before its end for a reason a resume gets past (a federation whose
    rounds ended early): its directory is kept, and the message says how to continue it."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How libraries that do their own I/O (safetensors, pyarrow, torch's zip writer) word the same
# failure when they hand it on without an errno.
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull", "QuotaExceeded")


class DiskFullError(TunesmithError):
    """The disk (or the user's quota) filled up while tunesmith wrote ``path``."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else str(path)
        where = f" while writing {self.path}" if self.path else ""
        super().__init__(f"disk full{where}: free space or choose another output directory")


def disk_full(error: BaseException, written: Path | None = None) -> DiskFullError | None:
    """The :class:`DiskFullError` behind ``error`` when it, or an error that caused it, is a full
    disk or quota (``ENOSPC``, ``EDQUOT``); None for any other error.

    Args:
        error: any exception, as caught at the top of a command.
        written: the directory being written, if known. torch.save reports a full disk without
            an errno or its words ("unexpected pos ..."), so a failed torch write counts as a full
            disk when this directory's file system has (almost) no space left.
    """
    if written is not None and _torch_write_failed(error):
        try:
            if shutil.disk_usage(written).free < _NEARLY_FULL_BYTES:
                return DiskFullError(written)
        except OSError:
            pass
    found = None
    for link in _chain(error):
        if isinstance(link, DiskFullError):
            return link
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return DiskFullError(link.filename or written)
        if found is None and any(words in str(link) for words in _DISK_FULL_WORDS):
            found = DiskFullError(written)
    return found


def _chain(error: BaseException | None):
    """``error``, then the error that caused it (or was being handled), and so on, each once."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


_NEARLY_FULL_BYTES = 1 << 20
_TORCH_WRITE_WORDS = ("inline_container.cc", "PytorchStreamWriter")


def _torch_write_failed(error: BaseException | None) -> bool:
    return any(
        isinstance(link, RuntimeError) and any(words in str(link) for words in _TORCH_WRITE_WORDS)
        for link in _chain(error)
    )


# Errors of the file system that a user fixes by choosing another path or changing permissions,
# each with what to tell them.
PATH_PROBLEMS = {
    errno.EACCES: "permission denied: choose a path you may write to, or change its permissions",
    errno.EPERM: "operation not permitted: choose a path you may write to, or change its permissions",
    errno.EROFS: "the file system is read-only: choose another output directory",
    errno.ENOTDIR: "a part of this path is a file, not a directory: choose another path",
    errno.EISDIR: "this is a directory where a file was expected: choose another path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ELOOP: "too many symbolic links: choose another path",
    errno.EEXIST: "it already exists: choose another path",
}


def path_error(error: BaseException) -> TunesmithError | None:
    """A user's problem behind an unexpected error: a full disk (:func:`disk_full`), or a path
    that cannot be used (permission, read-only file system, a file where a directory should be).
    None for anything else, which is then an internal error.

    Args:
        error: any exception, as caught at the top of a command.
    """
    full = disk_full(error)
    if full is not None:
        return full
    if isinstance(error, OSError) and error.errno in PATH_PROBLEMS and error.filename:
        problem = PATH_PROBLEMS[error.errno]
        if error.errno == errno.EEXIST and os.path.isfile(error.filename):  # making a directory where a file is
            problem = "it is a file, and a directory is needed there: choose another path"
        return TunesmithError(f"cannot use {error.filename}: {problem}")
    return None


def write_traceback(error: BaseException) -> Path | None:
    """Writes the full traceback of ``error`` (its causes and notes too) and the command line to a
    new file ``tunesmith-error-TIME-*.log`` in the temporary directory, outside anything the user
    owns.

    Returns:
        The log file, or None when it could not be written (the temporary directory is full too).
    """
    name = None
    try:
        fd, name = tempfile.mkstemp(prefix=f"tunesmith-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"command: {shlex.join(sys.argv)}\npython: {sys.version.split()[0]}\n\n")
            handle.write("".join(traceback.format_exception(error)))
    except OSError:
        if name is not None:
            Path(name).unlink(missing_ok=True)
        return None
    return Path(name)


def raised_at(error: BaseException) -> str:
    """Where ``error`` was raised, as ``module.py:LINE in FUNCTION``; when that is inside a library,
    the last tunesmith frame that led there follows it."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    ours = [f for f in frames if "tunesmith" in Path(f.filename).parts]
    place = _frame(frames[-1])
    return place if not ours or ours[-1] is frames[-1] else f"{place}, called from {_frame(ours[-1])}"


def _frame(frame: traceback.FrameSummary) -> str:
    parts = Path(frame.filename).parts
    # From the package down: site-packages/torch/nn/x.py -> torch/nn/x.py.
    start = max((i + 1 for i, part in enumerate(parts) if part in ("site-packages", "src")), default=len(parts) - 1)
    return f"{'/'.join(parts[start:])}:{frame.lineno} in {frame.name}"
