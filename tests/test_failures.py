"""Failures that are not the user's input: internal errors, a full disk, a run that dies midway.

Each ends in one `error:` line (exit 2 for what the user can fix, 3 for an internal error, the
traceback in a log file), and leaves no temporary file and no half-made run directory behind.
The disk-full cases run on a real 2-4 MiB tmpfs where this machine lets the test mount one, and
inject ENOSPC at the write helpers otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.cli import app
from tunesmith.errors import DiskFullError, TunesmithError, disk_full
from tunesmith.runs import RunDir, atomic_write, replace_dir
from tunesmith.train.callbacks import Callback

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logs = tmp_path.parent / f"{tmp_path.name}-logs"  # the error logs, outside the user's directory
    logs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(logs))
    return logs


def _one_line(result, code: int, *words: str) -> str:
    """Checks the output is one `error:` line holding every word (whitespace aside), no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1, result.output
    flat = "".join(result.output.split())
    for word in words:
        assert "".join(word.split()) in flat, f"{word!r} not in:\n{result.output}"
    return result.output


def _hidden(root: Path) -> list[str]:
    """Temporary files and directories (tunesmith's all start with a dot) under root."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*") if p.name != ".lock")


def _write_config(tmp_path: Path, tiny_model_dir: Path, output_dir: Path, **sections) -> Path:
    import pandas as pd

    data = tmp_path / "sentiment.csv"
    if not data.exists():
        pd.DataFrame(sentiment_rows(60)).to_csv(data, index=False)
    sections.setdefault("train", {}).setdefault("num_epochs", 1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_model_dir, data, output_dir, **sections)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One finished tiny run to predict with and export (read only)."""
    root = tmp_path_factory.mktemp("finished")
    config = _write_config(root, tiny_model_dir, root / "run")
    return api.train(config, console=_quiet()).run_dir


def _quiet():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))  # noqa: SIM115


# -- the one place: internal errors, --debug, SystemExit ---------------------------------------


def _boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line")


def test_internal_error_is_one_line_with_a_log(monkeypatch, _in_tmp):
    monkeypatch.setattr(api, "predict", _boom)
    result = runner.invoke(app, ["predict", "somewhere", "--text", "hello"])
    output = _one_line(result, 3, "tunesmith predict failed (internal error)", "RuntimeError: boom", "test_failures.py",
                       "full traceback in", "--debug")  # fmt: skip
    assert "second line" not in output
    logs = list(_in_tmp.glob("tunesmith-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in "".join(output.split())
    text = logs[0].read_text(encoding="utf-8")
    assert "Traceback" in text and "RuntimeError: boom" in text and "predict" in text


def test_debug_shows_the_traceback_instead_of_a_log(monkeypatch, _in_tmp):
    monkeypatch.setattr(api, "predict", _boom)
    result = runner.invoke(app, ["--debug", "predict", "somewhere", "--text", "hello"])
    assert result.exit_code == 3
    assert "Traceback" in result.output and "RuntimeError: boom" in result.output
    assert result.output.count("error:") == 1
    assert not list(_in_tmp.glob("tunesmith-error-*.log"))


def test_debug_shows_the_traceback_of_a_user_error_too(tmp_path):
    result = runner.invoke(app, ["--debug", "predict", str(tmp_path), "--text", "hello"])
    assert result.exit_code == 2
    assert "Traceback" in result.output and "not a tunesmith run directory" in result.output


def test_a_library_calling_sys_exit_is_one_line(monkeypatch):
    def give_up(*args, **kwargs):
        sys.exit(1)

    monkeypatch.setattr(api, "predict", give_up)
    result = runner.invoke(app, ["predict", "somewhere", "--text", "hello"])
    _one_line(result, 3, "tunesmith predict failed (internal error)", "stopped it with exit code 1")


def test_a_command_ending_itself_keeps_its_exit_code(monkeypatch):
    def stop(*args, **kwargs):
        raise typer.Exit(1)  # what monitor does on drift: a RuntimeError that is not a failure

    monkeypatch.setattr(api, "predict", stop)
    result = runner.invoke(app, ["predict", "somewhere", "--text", "hello"])
    assert result.exit_code == 1 and "error:" not in result.output


def test_every_command_goes_through_the_one_place():
    import inspect

    for command in app.registered_commands:
        assert "_guarded(" in inspect.getsource(command.callback), command.callback.__name__


def test_real_process_prints_one_line_for_an_internal_error(tmp_path, _in_tmp):
    """A real interpreter and terminal streams, not the test runner: exit 3, one line, the log."""
    program = ("import sys, tunesmith.api as api\n"
               "def broken(*args, **kwargs):\n    raise ZeroDivisionError('a bug')\n"
               "api.predict = broken\nfrom tunesmith.cli import main\nsys.argv[0] = 'tunesmith'\nmain()\n")  # fmt: skip
    env = dict(os.environ, TMPDIR=str(_in_tmp))
    for debug in ([], ["--debug"]):
        command = [sys.executable, "-c", program, *debug, "predict", "somewhere", "--text", "hello"]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 3, done.stderr
        assert done.stdout == "" and done.stderr.count("error:") == 1, done.stderr
        assert "ZeroDivisionError: a bug" in done.stderr
        assert ("Traceback" in done.stderr) == bool(debug), done.stderr
    assert len(list(_in_tmp.glob("tunesmith-error-*.log"))) == 1  # from the run without --debug


# -- the write helpers ----------------------------------------------------------------------


class _FullHandle:
    """A file handle on a disk with no space left."""

    def __init__(self, fd):
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_atomic_write_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, code):
    target = tmp_path / "report.json"
    target.write_text("the old report", encoding="utf-8")

    def full(fd, *args, **kwargs):
        handle = _FullHandle(fd)
        handle.write = lambda data: (_ for _ in ()).throw(OSError(code, os.strerror(code)))
        return handle

    monkeypatch.setattr(os, "fdopen", full)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*report\.json: free space"):
        atomic_write(target, "a new report")
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "the old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_replace_dir_that_fails_puts_the_old_directory_back(tmp_path, monkeypatch):
    final, tmp = tmp_path / "model", tmp_path / ".tmp-model"
    final.mkdir()
    (final / "weights").write_text("old", encoding="utf-8")
    tmp.mkdir()
    (tmp / "weights").write_text("new", encoding="utf-8")
    real = os.replace

    def replace(source, target):
        if Path(source) == tmp:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        replace_dir(tmp, final)
    assert (final / "weights").read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_disk_full_is_recognised_in_the_words_of_libraries():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device", "/x/y")).path == "/x/y"
    wrapped = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_full(wrapped) is not None
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise ValueError("saving failed") from inner
    except ValueError as outer:
        assert disk_full(outer) is not None
    assert disk_full(RuntimeError("shapes do not match")) is None
    assert disk_full(OSError(errno.EACCES, "Permission denied", "/x")) is None


# -- a fresh run that fails ------------------------------------------------------------------


def test_failed_run_without_a_checkpoint_is_removed_with_the_parents_it_made(tmp_path, tiny_model_dir, monkeypatch):
    config = _write_config(tmp_path, tiny_model_dir, tmp_path / "new" / "runs" / "run")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "mine.txt").write_text("the user's", encoding="utf-8")

    def broken(*args, **kwargs):
        raise RuntimeError("model went wrong")

    monkeypatch.setattr(api, "fit", broken)
    result = runner.invoke(app, ["train", str(config)])
    _one_line(result, 3, "RuntimeError: model went wrong", "no checkpoint yet", "was removed")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["mine.txt"]  # runs/ went, the rest stays


def test_ctrl_c_before_the_first_checkpoint_removes_the_run(tmp_path, tiny_model_dir, monkeypatch):
    config = _write_config(tmp_path, tiny_model_dir, tmp_path / "run")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "fit", interrupted)
    result = runner.invoke(app, ["train", str(config)])
    _one_line(result, 2, "interrupted; the run had no checkpoint yet", f"{tmp_path / 'run'} was removed")
    assert "--resume" not in result.output and not (tmp_path / "run").exists()


def test_existing_directory_suggests_resume_only_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000004").mkdir(parents=True)
    (run / "config.yaml").write_text("{}", encoding="utf-8")
    with pytest.raises(Exception, match="already exists") as refused:
        RunDir.create(run)
    assert "--resume" not in str(refused.value)
    (run / "checkpoints" / "step-00000004" / "state.json").write_text("{}", encoding="utf-8")
    with pytest.raises(Exception, match="already exists") as refused:  # no manifest: not a complete checkpoint
        RunDir.create(run)
    assert "--resume" not in str(refused.value)
    (run / "checkpoints" / "step-00000004" / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(Exception, match=f"resume it with: tunesmith train --resume {run}"):
        RunDir.create(run)


def test_run_directory_under_a_file_is_a_user_error(tmp_path, tiny_model_dir):
    (tmp_path / "blocker").write_text("a file", encoding="utf-8")
    config = _write_config(tmp_path, tiny_model_dir, tmp_path / "blocker" / "run")
    result = runner.invoke(app, ["train", str(config)])
    _one_line(result, 2, "cannot create the run directory", "blocker/run", "runtime.output_dir", "not a directory")


class _StopAfter(Callback):
    """Raises ``error`` at the end of step ``step`` (before that step's checkpoint)."""

    def __init__(self, step: int, error: BaseException):
        self.step, self.error = step, error

    def on_step_end(self, state, logs) -> None:
        if state.step == self.step:
            raise self.error


def test_failed_run_with_a_checkpoint_is_kept_and_resumes(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    config = _write_config(tmp_path, tiny_model_dir, run, runtime={"checkpoint_every_steps": 2})
    with pytest.raises(DiskFullError) as failed:  # the disk fills up in step 3, after the checkpoint of step 2
        error = OSError(errno.ENOSPC, "No space left on device", str(run / "checkpoints" / ".tmp-step-00000003"))
        api.train(config, console=_quiet(), callbacks=[_StopAfter(3, error)])
    assert f"continue it with tunesmith train --resume {run}" in "; ".join(failed.value.__notes__)
    assert (run / "checkpoints" / "step-00000002" / "state.json").is_file()
    assert _hidden(run) == []
    again = runner.invoke(app, ["train", str(config)])
    _one_line(again, 2, "already exists", f"resume it with: tunesmith train --resume {run}")
    resumed = runner.invoke(app, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert (run / "metrics.json").is_file()


def test_failed_run_that_a_resume_would_repeat_is_removed_even_with_a_checkpoint(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    config = _write_config(tmp_path, tiny_model_dir, run, runtime={"checkpoint_every_steps": 2})
    with pytest.raises(TunesmithError, match="non-finite") as failed:  # after the checkpoint of step 2
        api.train(config, console=_quiet(), callbacks=[_StopAfter(3, TunesmithError("non-finite loss at step 3"))])
    assert "a resume would fail the same way" in "; ".join(failed.value.__notes__)
    assert "--resume" not in "; ".join(failed.value.__notes__) and not run.exists()
    again = runner.invoke(app, ["train", str(config)])  # the same command starts again
    assert again.exit_code == 0, again.output
    assert (run / "metrics.json").is_file()


# -- a real full disk ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """Mounts a tmpfs of the requested size at tmp_path/disk (root only); skips where not allowed."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(where)], check=False)  # a file a library left open


def _fill(disk: Path, leave: int = 0) -> None:
    """Fills the disk, leaving about ``leave`` bytes."""
    free = shutil.disk_usage(disk).free - leave
    with open(disk / "filler", "wb") as handle:
        try:
            while free > 0:
                handle.write(b"\0" * min(free, 1 << 20))
                free -= 1 << 20
            handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_predict_output_on_a_full_disk(small_disk, finished_run):
    disk = small_disk("1m")
    _fill(disk)
    result = runner.invoke(app, ["predict", str(finished_run), "--text", "great", "--output", str(disk / "out.jsonl")])
    _one_line(result, 2, f"disk full while writing {disk / 'out.jsonl'}", "free space or choose another output")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_inspect_on_a_full_disk(small_disk, tmp_path):
    import pandas as pd

    disk = small_disk("1m")
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(40)).to_csv(data, index=False)
    _fill(disk)
    result = runner.invoke(app, ["inspect", str(data), "--out", str(disk / "report"), "--label-errors", "off"])
    _one_line(result, 2, "disk full while writing", "free space or choose another output")
    assert _hidden(disk) == []


def test_export_on_a_full_disk(small_disk, finished_run):
    disk = small_disk("2m")
    _fill(disk, leave=64 << 10)
    result = runner.invoke(app, ["export", str(finished_run), "--out", str(disk / "exported"), "--format", "hf"])
    _one_line(result, 2, "disk full", "free space or choose another output")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_train_on_a_full_disk_leaves_no_run_directory(small_disk, tmp_path, tiny_model_dir):
    disk = small_disk("1m")
    config = _write_config(tmp_path, tiny_model_dir, disk / "run")
    _fill(disk, leave=16 << 10)
    result = runner.invoke(app, ["train", str(config)])
    _one_line(result, 2, "disk full while writing", "free space", "no checkpoint yet", "was removed")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_resume_on_a_full_disk_keeps_the_checkpoints(small_disk, tiny_model_dir):
    """torch.save says "unexpected pos ..." on a full disk: still reported as a full disk."""
    disk = small_disk("64m")
    run = disk / "run"
    config = _write_config(disk.parent, tiny_model_dir, run, runtime={"checkpoint_every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        api.train(config, console=_quiet(), callbacks=[_StopAfter(3, KeyboardInterrupt())])
    checkpoint = run / "checkpoints" / "step-00000002"
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    _fill(disk, leave=64 << 10)
    result = runner.invoke(app, ["train", "--resume", str(run)])
    _one_line(result, 2, f"disk full while writing {run}", "free space", f"tunesmith train --resume {run}")
    assert _hidden(run) == []
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    torch.load(checkpoint / "model.pt", weights_only=True)  # still whole
