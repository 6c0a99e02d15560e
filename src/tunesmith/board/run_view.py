"""What the page of one run reads from its directory: progress and ETA, the log tail, the
metrics.jsonl records as server-sent events, the predictions worst first, the validation curves.

The events are written here rather than with a server-sent-events package because they are a
few lines of text (``id``/``event``/``data`` fields, a comment to keep the connection open) over
FastAPI's streaming response; ``id`` is the byte offset in metrics.jsonl after the record, so a
browser that reconnects (``Last-Event-ID``) continues where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.board.runs_index import parse_record, read_mapping, run_status, tail_records
from tunesmith.config import Config
from tunesmith.evaluate.predictions import mistakes, prediction_row, predictions_path, read_predictions
from tunesmith.train.loop import plan_steps

LOG_LINES = 200
PAGE_ROWS = 50
POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}  # fmt: skip
"""The run files the board serves (its plots); never HTML or SVG, which could run scripts."""


def progress(run: Path, status: str) -> dict[str, Any]:
    """Steps done of the total, samples per second and the time left, from metrics.jsonl and the
    config (the total as the training loop plans it: ``train.loop.plan_steps``)."""
    metrics = read_mapping(run / "metrics.json")
    train = [r for r in tail_records(run / "metrics.jsonl") if r.get("split") == "train"]
    done = metrics.get("training", {}).get("steps") or (train[-1].get("step") if train else 0) or 0
    total = metrics.get("training", {}).get("steps") if status == "finished" else planned_steps(run)
    speeds = [r["samples_per_second"] for r in train[-10:] if isinstance(r.get("samples_per_second"), (int, float))]
    speed = float(np.median(speeds)) if speeds else None
    config = read_mapping(run / "config.yaml").get("train") or {}
    per_step = (config.get("batch_size") or 0) * (config.get("gradient_accumulation_steps") or 1)
    left = None
    if status == "running" and total and speed and per_step and done < total:
        left = (total - done) * per_step / speed
    share = min(1.0, done / total) if total else None
    return {"done": int(done), "total": total, "share": share, "samples_per_second": speed, "seconds_left": left}


def planned_steps(run: Path) -> int | None:
    """The run's total steps from its training rows and config; None when they cannot be read."""
    rows = ((read_mapping(run / "data_manifest.json").get("splits") or {}).get("train") or {}).get("rows")
    try:
        config = Config.model_validate(read_mapping(run / "config.yaml"))
    except ValueError:  # pydantic's ValidationError: a config this version cannot read
        return None
    if not rows:
        return None
    return plan_steps(math.ceil(rows / config.train.batch_size), config)[1]


def log_files(run: Path, job_log: Path | None) -> list[Path]:
    """What the log tail shows: the ``*.log`` files in the run directory, then the log of the
    board job that wrote the run (``RUNS/.board/jobs/ID.log``) when there is one."""
    found = sorted(p for p in run.glob("*.log") if p.is_file() and not p.is_symlink())
    return found + ([job_log] if job_log is not None and job_log.is_file() else [])


def log_tail(path: Path, lines: int = LOG_LINES) -> str:
    """The last ``lines`` lines of a log (read from its end; a log can be large)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 256 * lines))
            text = handle.read().decode("utf-8", "replace")
    except OSError as error:
        return f"(cannot read {path.name}: {error.strerror})"
    # A progress bar rewrites its line with carriage returns: keep what the line last said.
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:])


def finite(value: Any) -> Any:
    """A record with NaN and infinities as None: JSON as browsers parse it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def event(data: Any, *, name: str | None = None, ident: int | None = None) -> str:
    """One server-sent event."""
    head = (f"id: {ident}\n" if ident is not None else "") + (f"event: {name}\n" if name else "")
    return f"{head}data: {json.dumps(finite(data), separators=(',', ':'))}\n\n"


def new_records(path: Path, offset: int) -> tuple[list[tuple[int, dict[str, Any]]], int, bool]:
    """The whole records of metrics.jsonl after byte ``offset``, each with the offset after it;
    the new offset; and whether the file was rewritten shorter (a resume cuts it back to its
    checkpoint: the reader starts again from 0)."""
    try:
        size = path.stat().st_size
    except OSError:
        return [], offset, False
    if size < offset:
        return [], 0, True
    if size == offset:
        return [], offset, False
    with path.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read(size - offset)
    found = []
    for line in chunk.split(b"\n")[:-1]:  # the last piece is a line still being written (or empty)
        offset += len(line) + 1
        record = parse_record(line)
        if record is not None:
            found.append((offset, record))
    return found, offset, False


async def metric_events(run: Path, offset: int, disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """metrics.jsonl from byte ``offset`` as server-sent events, then each record as it is
    written; an ``end`` event (with the status) once the run is no longer running and every
    record is sent; a ``reset`` event when the file was cut back (the client clears its curves)."""
    yield "retry: 3000\n\n"
    quiet = time.monotonic()
    while True:
        running = run_status(run) == "running"  # before reading: whatever it wrote before it stopped is read
        records, offset, reset = new_records(run / "metrics.jsonl", offset)
        if reset:
            yield event({}, name="reset", ident=0)
            continue
        for ident, record in records:
            yield event(record, ident=ident)
        if not running:
            yield event({"status": run_status(run)}, name="end", ident=offset)
            return
        if records:
            quiet = time.monotonic()
        elif time.monotonic() - quiet > KEEP_ALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet = time.monotonic()
        if await disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)


def worst_first(run: Path, split: str) -> tuple[list[dict[str, Any]], str]:
    """Every row of ``predictions_SPLIT.parquet``, its mistakes first as ``mistakes`` orders them
    (the most confident first where the model gives a confidence, else the worst ``row_metric``;
    for a task with one class per row, across all classes), then the rows it got right; and the
    name of ``row_metric``."""
    found = read_predictions(predictions_path(run, split))
    rows = found.rows
    wrong = mistakes(found, per_class=len(rows), limit=len(rows))
    if found.by_class:  # mistakes() groups them by gold class; the board ranks them all together
        confident = any(r["confidence"] is not None for r in wrong)
        sign = 1 if found.higher_is_better else -1  # the worst row_metric first
        wrong.sort(key=lambda r: (-(r["confidence"] or 0.0) if confident else 0.0, sign * r[found.metric]))
    listed = {r["row"] for r in wrong}
    right = [prediction_row(r, found.metric) for r in rows.itertuples() if int(r.row) not in listed]
    for r in wrong:
        r["wrong"] = True
    return wrong + right, found.metric


def validation_curve(run: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of ``metric`` in every validation record of metrics.jsonl."""
    try:
        lines = (run / "metrics.jsonl").read_bytes().split(b"\n")
    except OSError:
        return []
    points = []
    for record in filter(None, map(parse_record, lines)):
        value, step = record.get(metric), record.get("step")
        if record.get("split") == "validation" and isinstance(value, (int, float)) and isinstance(step, int):
            points.append((record["step"], float(value)))
    return points


def plots(run: Path) -> list[str]:
    """The names of the run's images (its plots), which the board serves."""
    return sorted(p.name for p in run.iterdir() if p.suffix.lower() in IMAGE_TYPES and p.is_file()
                  and not p.is_symlink() and not p.name.startswith("."))  # fmt: skip
