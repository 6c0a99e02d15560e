"""The runs the board lists: the run directories under the runs folder, each one's status, and a
summary of it (task, model, data, main scores) cached by the files it is read from.

A run's status, from what a run directory holds (the board only reads; it never writes there):

- ``running``: a process holds the run's ``.lock`` (``RunDir.lock``'s flock), or the run was made
  under ``STARTING_SECONDS`` ago and has no ``.lock`` yet (its data is being prepared);
- ``finished``: ``RunDir.finished`` (model and final metrics written);
- ``killed``: none of these, but a complete checkpoint: ``tunesmith train --resume`` continues it
  (a run stopped by Ctrl-C, a kill or a full disk; ``runs.after_failed_run`` keeps it so);
- ``failed``: none of these and nothing to resume from (a process killed before its first
  checkpoint; a run that fails otherwise is removed by ``after_failed_run``), or the board job
  that last wrote it failed (``board.jobs``: an error a resume would meet again).

The lock is probed with a shared, non-blocking flock that is dropped at once: it fails while a
trainer holds its exclusive lock. (For the microseconds the probe holds it, a ``train --resume``
started at that instant would refuse as if the run were being trained.)

The summary cache is keyed by each run's path and the size and mtime of the files the summary is
read from, so a refresh of 200 runs re-reads only what changed; status is probed on every call.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import Config
from tunesmith.runs import RunDir, is_run_dir
from tunesmith.tasks.build import build_task

STATUSES = ("running", "finished", "killed", "failed")
STARTING_SECONDS = 120
"""How long a new run directory without a ``.lock`` counts as running (preparing its data)."""
SUMMARY_FILES = ("config.yaml", "task.json", "metrics.json", "metrics.jsonl")
TAIL_BYTES = 64 * 1024
"""How much of the end of metrics.jsonl the summary reads (the last records are enough)."""


@dataclass
class Score:
    """One split's main score and its interval (None where the run has none)."""

    value: float
    low: float | None = None
    high: float | None = None


@dataclass
class RunSummary:
    """What the runs table shows of one run (status and duration aside, which change by the second)."""

    path: str
    """The run directory relative to the runs folder, with ``/`` (its URL part)."""
    task: str
    model: str
    strategy: str
    data: str
    """The name of the training data's source (a file name or a Hub id)."""
    metric: str
    """The main validation metric: the one that picked the best checkpoint."""
    validation: Score | None
    test: Score | None
    started: float
    """When config.yaml was written (the run's start), seconds since the epoch."""
    steps: int | None
    """The last step logged in metrics.jsonl."""


def find_runs(root: Path) -> list[Path]:
    """Every run directory under ``root``, its sub-folders included (study trials, CV folds,
    seeds), without descending into a run or a hidden folder."""
    found: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable or gone meanwhile: not a folder the board can show
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if is_run_dir(path):
                found.append(path)
            else:
                pending.append(path)
    return found


def lock_held(run: Path) -> bool:
    """True while a process holds ``run/.lock`` (``RunDir.lock``); the file is opened read-only."""
    try:
        handle = open(run / ".lock", "rb")  # noqa: SIM115 (closed below; "a" would create it)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a file system without flock: nobody can hold it there either
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def run_status(run: Path, now: float | None = None, job: str | None = None) -> str:
    """``running``, ``finished``, ``killed`` or ``failed`` (see the module docstring).

    Args:
        job: the state of the newest board job that wrote the run (``board.jobs.Job.state``), if
            any: a job that "failed" makes a resumable run ``failed`` (it failed on a mistake).
    """
    if lock_held(run):
        return "running"
    directory = RunDir(run)
    if directory.finished:
        return "finished"
    if directory.has_checkpoint() and job != "failed":
        return "killed"
    if not (run / ".lock").exists() and _mtime(run / "config.yaml", 0.0) > (now or time.time()) - STARTING_SECONDS:
        return "running"
    return "failed"


def run_end(run: Path, status: str, now: float) -> float:
    """When the run last wrote what it logs: now while it runs."""
    if status == "running":
        return now
    return max(_mtime(run / name, 0.0) for name in ("config.yaml", "metrics.jsonl", "metrics.json"))


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default


def _stamp(run: Path) -> tuple:
    stamps = []
    for name in SUMMARY_FILES:
        try:
            info = (run / name).stat()
            stamps.append((info.st_mtime_ns, info.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def read_mapping(path: Path) -> dict[str, Any]:
    """A JSON or YAML file's mapping, or {} when it is missing, damaged or not a mapping (a run
    being written: the board shows what it can and reads it again on the next refresh)."""
    try:
        text = path.read_text(encoding="utf-8")
        loaded = yaml.load(text, Loader=yaml.CSafeLoader) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def tail_records(path: Path, size: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The whole records among the last ``size`` bytes of a metrics.jsonl."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
            lines = handle.read().split(b"\n")
    except OSError:
        return []
    return [record for record in map(parse_record, lines[1:-1] if len(lines) > 2 else lines[:-1]) if record]


def parse_record(line: bytes) -> dict[str, Any] | None:
    """One metrics.jsonl line as a dict, or None for a damaged one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@cache
def default_metric(kind: str) -> str:
    """The task kind's own validation metric (``Task.default_metric``)."""
    return build_task(Config.model_validate({"task": {"type": kind}})).default_metric[0]


def main_metric(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The metric that picks the best checkpoint: as the run recorded it, else as configured,
    else the task's default."""
    recorded = metrics.get("training", {}).get("metric")
    if recorded:
        return recorded
    configured = (config.get("train") or {}).get("metric")
    if configured:
        return configured
    kind = (config.get("task") or {}).get("type")
    try:
        return default_metric(kind) if kind else ""
    except (ValueError, TypeError):  # an unknown kind: a config the board cannot read
        return ""


def split_score(metrics: dict[str, Any], split: str, metric: str) -> Score | None:
    """``metric`` of ``split`` in a metrics.json, with its interval where it has one."""
    values = metrics.get(split) or {}
    value = values.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    interval = (values.get("confidence_intervals") or {}).get(metric) or {}
    return Score(float(value), interval.get("low"), interval.get("high"))


def source_name(source: Any) -> str:
    """A data source as the table shows it: a file's name, a Hub id as it is."""
    if not source:
        return ""
    text = str(source)
    return text if text.startswith("hf:") else Path(text).name


def summarise(run: Path, root: Path) -> RunSummary:
    """A run's summary from its config.yaml, metrics.json and the end of its metrics.jsonl."""
    config, metrics = read_mapping(run / "config.yaml"), read_mapping(run / "metrics.json")
    model = config.get("model") or {}
    metric = main_metric(config, metrics)
    records = tail_records(run / "metrics.jsonl")
    validation = split_score(metrics, "validation", metric)
    if validation is None:  # still training: its latest validation score so far
        latest = [r for r in records if r.get("split") == "validation" and isinstance(r.get(metric), (int, float))]
        validation = Score(float(latest[-1][metric])) if latest else None
    steps = metrics.get("training", {}).get("steps") or next(
        (r["step"] for r in reversed(records) if isinstance(r.get("step"), int)), None
    )
    return RunSummary(
        path=run.relative_to(root).as_posix(), task=str((config.get("task") or {}).get("type", "")),
        model=source_name(model.get("name")), strategy=str(model.get("strategy") or ""),
        data=source_name((config.get("data") or {}).get("train")), metric=metric, validation=validation,
        test=split_score(metrics, "test", metric), started=_mtime(run / "config.yaml", 0.0), steps=steps,
    )  # fmt: skip


class RunsIndex:
    """The runs under one folder with their summaries, cached by the files each is read from."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._cache: dict[Path, tuple[tuple, RunSummary]] = {}
        self._lock = threading.Lock()

    def summary(self, run: Path) -> RunSummary:
        """One run's summary, read again only when one of its files changed."""
        stamp = _stamp(run)
        with self._lock:
            cached = self._cache.get(run)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found = summarise(run, self.root)
        with self._lock:
            self._cache[run] = (stamp, found)
        return found

    def rows(self, jobs: dict[Path, str] | None = None) -> list[dict[str, Any]]:
        """Every run as a row of the runs table: its summary, status and duration in seconds.

        Args:
            jobs: the state of the newest board job of each run directory (resolved paths).
        """
        now, rows, jobs = time.time(), [], jobs or {}
        runs = find_runs(self.root)
        with self._lock:  # forget runs that are gone
            for gone in set(self._cache) - set(runs):
                del self._cache[gone]
        for run in runs:
            summary = self.summary(run)
            status = run_status(run, now, jobs.get(run.resolve()) if jobs else None)
            duration = max(0.0, run_end(run, status, now) - summary.started)
            rows.append({"summary": summary, "status": status, "duration": duration})
        return rows


def sort_rows(rows: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    """Rows sorted by a column of the runs table; runs without a value go last either way."""

    def value(row: dict[str, Any]) -> Any:
        summary = row["summary"]
        match key:
            case "status" | "duration":
                return row[key]
            case "validation" | "test":
                score = getattr(summary, key)
                return None if score is None or math.isnan(score.value) else score.value
            case _:
                found = getattr(summary, key, None)
                return found.lower() if isinstance(found, str) else found

    present = [r for r in rows if value(r) not in (None, "")]
    missing = [r for r in rows if value(r) in (None, "")]
    return sorted(present, key=value, reverse=descending) + missing


def filter_rows(rows: list[dict[str, Any]], text: str, status: str) -> list[dict[str, Any]]:
    """Rows whose name, task, model, strategy or data contain ``text`` (any case) and whose status
    is ``status`` (any when empty)."""
    words = text.strip().lower().split()
    kept = []
    for row in rows:
        s = row["summary"]
        haystack = " ".join((s.path, s.task, s.model, s.strategy, s.data, row["status"])).lower()
        if (not status or row["status"] == status) and all(w in haystack for w in words):
            kept.append(row)
    return kept


def duration_text(seconds: float) -> str:
    """``1h 02m``, ``3m 05s`` or ``12s``."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"
