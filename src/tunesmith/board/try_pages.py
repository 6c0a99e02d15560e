"""The board's playground (``/runs/RUN/try``: predict with a finished run, or chat with a chat
model) and data page (``/data``: ``tunesmith inspect`` on a file, its report embedded).

The playground answers through what ``tunesmith serve`` answers with: ``ship.serve.Predictor``
loads the run (hashes verified, the serve stage required) and predicts through its task; a kind
whose inputs are files (``tasks.contract.Uploadable``) decodes an upload with its own
``decode_upload`` under the board's byte limit; a kind that chats (``tasks.contract.Chat``)
streams its reply from ``Chat.stream`` with the OpenAI routes' greedy settings. Which fields the
form shows is read from the run's own data, not from its kind: the first held-out row's input as
``Monitored.monitor_inputs`` gives it (a text, a record of named texts such as question and
context, or a pair of texts) is the form's shape and its example. Two loaded runs are kept (an
LRU), each with one thread that runs its model, as serve has.

The chat reply streams as server-sent events (``data: {"delta": ...}``), read in the page with
fetch() and a ReadableStream: a few lines, since htmx's SSE extension (GET only, no body) is not
vendored and would not carry the conversation.

The data page runs the CLI's inspection (``data.inspection.inspect_data`` with the same config
overrides, task check and label-error fold trainer as ``tunesmith inspect``) on files confined by
``Board.confine``; its report goes into a new ``RUNS_DIR/.board/inspect/<stamp>/``, never beside
the user's file.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from tunesmith.board.context import Board, templates
from tunesmith.errors import TunesmithError
from tunesmith.ship.http import Refused
from tunesmith.ship.openai_api import Message
from tunesmith.ship.serve import MAX_PIXELS, Predictor
from tunesmith.ship.uploads import file_label
from tunesmith.tasks.contract import Chat, InputTooLarge, Monitored, Sampling, Uploadable, UploadLimits

LOADED_RUNS = 2
"""Runs whose models stay loaded (least recently used first out)."""
MAX_TEXT_CHARS = 20_000
"""The characters of one playground input (serve's default ``max_text_chars``)."""
FORM_OVERHEAD = 64 * 1024
"""Bytes a multipart body may hold beyond its file (boundaries, headers, the other fields)."""
INSPECTIONS = Path(".board") / "inspect"
"""Where, under the runs folder, the data page's reports go (one new folder per inspection)."""
SETTING_PREFIXES = (
    "task.",
    "inspect.",
    "model.max_length",
    "model.name",
    "data.text_column",
    "data.label_column",
    "data.column_names",
)
"""The ``--set`` keys the data page takes: no key that names another file (data.validation, ...),
since every file the page reads must be confined to the allowed folders (a local model.name is)."""
EXAMPLE_SPLITS = ("validation", "test", "train")
REPORT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass
class InputForm:
    """The playground form of one run: ``shape`` "text" (one text), "record" (named texts, e.g.
    question and context), "row" (a table row's cells: numbers, categories, texts; an empty cell
    is a missing one), "pair" (two texts), "image" (an upload) or "chat"; ``fields`` are
    (name, example) in order."""

    shape: str
    fields: list[tuple[str, str]] = field(default_factory=list)

    def item(self, values: Any) -> Any:
        """The model input built from submitted form ``values``, as ``Task.predict`` takes it.

        Raises:
            Refused: 422 an empty field, 413 a text over ``MAX_TEXT_CHARS``.
        """
        texts = {}
        for name, _ in self.fields:
            value = values.get(name)
            text = value if isinstance(value, str) else ""
            if not text.strip() and self.shape != "row":
                raise Refused(422, f"'{name}' is empty: type a text to predict")
            if len(text) > MAX_TEXT_CHARS:
                raise Refused(413, f"a text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
            texts[name] = text
        if self.shape == "record":
            return texts
        if self.shape == "row":  # the task reads each cell by its column's kind
            return {name: text if text.strip() else None for name, text in texts.items()}
        if self.shape == "pair":
            return list(texts.values())
        return texts["text"]


@dataclass
class Loaded:
    """One run's loaded model (serve's Predictor), its form, and the one thread that runs it."""

    predictor: Predictor
    form: InputForm
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "tunesmith-board-model"))


class LoadedRuns:
    """The last ``size`` runs used, loaded (a run loads once however many requests ask for it)."""

    def __init__(self, size: int = LOADED_RUNS):
        self.size, self.loaded, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, run: Path) -> Loaded:
        """The run's loaded model, loading it (and dropping the least recently used) if needed.

        Raises:
            TunesmithError: not a finished run, files changed since training, no serve stage.
        """
        key = str(run)
        with self.lock:  # loads one at a time: never two copies, never more than size at once
            if key in self.loaded:
                self.loaded.move_to_end(key)
                return self.loaded[key]
            predictor = Predictor(run)
            self.loaded[key] = Loaded(predictor, input_form(predictor, run))
            while len(self.loaded) > self.size:
                self.loaded.popitem(last=False)[1].executor.shutdown(wait=False)
            return self.loaded[key]


def input_form(predictor: Predictor, run: Path) -> InputForm:
    """The form a run's task takes (see the module docstring), with an example from its data."""
    task = predictor.scorer
    if isinstance(task, Chat) and "chat" in task.stages:
        return InputForm("chat")
    if isinstance(task, Uploadable):
        return InputForm("image", [("file", "")])
    example = _example(task, run)
    if isinstance(example, dict) and example and all(isinstance(v, str) for v in example.values()):
        return InputForm("record", list(example.items()))
    if isinstance(example, dict) and example:  # a table row: numbers and missing cells besides texts
        return InputForm("row", [(k, "" if v is None else f"{v:g}" if isinstance(v, float) else str(v))
                                 for k, v in example.items()])  # fmt: skip
    if isinstance(example, (list, tuple)) and example and all(isinstance(v, str) for v in example):
        return InputForm("pair", [(f"text {n}", v) for n, v in enumerate(example, 1)])
    return InputForm("text", [("text", example if isinstance(example, str) else "")])


def _example(task: Any, run: Path) -> Any:
    """The first row's input of the run's held-out data (``data/*.parquet``), None without one."""
    if not isinstance(task, Monitored):
        return None
    import pandas as pd

    for split in EXAMPLE_SPLITS:
        path = run / "data" / f"{split}.parquet"
        if path.is_file():
            try:
                inputs = task.monitor_inputs(pd.read_parquet(path).head(1))
            except Exception:  # noqa: BLE001 - an example is a convenience; the form works without one
                return None
            return inputs[0] if inputs else None
    return None


def run_path(board: Board, given: str) -> Path:
    """The run directory ``given`` names inside ``board.runs_dir`` (never a data folder).

    Raises:
        HTTPException: 404 for an absolute path, ``..``, a path leading outside, or no run there.
    """
    text = given.strip()
    parts = Path(text).parts
    root = board.runs_dir.resolve()
    if not text or Path(text).is_absolute() or text.startswith(("/", "\\")) or ".." in parts:
        raise HTTPException(404, f"run {text!r}: give a run's path relative to the runs folder {root} "
                                 "(no absolute path, no '..')")  # fmt: skip
    path = (root / text).resolve()
    if root not in path.parents:
        raise HTTPException(404, f"run {text!r} is outside the runs folder {root}")
    if not (path / "config.yaml").is_file():
        raise HTTPException(404, f"no run at {text!r} in {root}")
    return path


def router(board: Board) -> APIRouter:
    """The playground and data routes over ``board``."""
    routes = APIRouter()
    runs = LoadedRuns()
    _playground_routes(routes, board, runs)
    _data_routes(routes, board)
    return routes


def _page(name: str, status: int = 200, **values) -> HTMLResponse:
    return HTMLResponse(templates().get_template(name).render(**values), status_code=status)


async def _loaded(runs: LoadedRuns, run: Path, given: str) -> Loaded:
    try:
        return await asyncio.to_thread(runs.get, run)
    except TunesmithError as error:
        raise HTTPException(404, f"run {given!r} cannot be loaded: {error}") from None


def _playground_routes(routes: APIRouter, board: Board, runs: LoadedRuns) -> None:
    @routes.get("/runs/{path:path}/try", response_class=HTMLResponse)
    async def try_page(path: str):
        loaded = await _loaded(runs, run_path(board, path), path)
        return _page("try.html", path=path, form=loaded.form, max_upload_bytes=board.max_upload_bytes,
                     formats=_formats(loaded))  # fmt: skip

    @routes.post("/runs/{path:path}/try", response_class=HTMLResponse)
    async def try_predict(path: str, request: Request):
        run = run_path(board, path)
        try:
            _check_declared(request, board.max_upload_bytes)
            loaded = await _loaded(runs, run, path)
            if loaded.form.shape == "chat":
                raise Refused(422, "a chat model: send the conversation to /runs/RUN/chat")
            inputs = await _inputs(loaded, request, board.max_upload_bytes)
            loop = asyncio.get_running_loop()
            rows = await loop.run_in_executor(loaded.executor, loaded.predictor.predict, inputs)
        except Refused as refused:
            return _page("try_result.html", refused.status, error=str(refused.detail))
        except TunesmithError as error:  # the task refused the input: its message names it
            return _page("try_result.html", 422, error=str(error))
        return _page("try_result.html", row=prediction_view(rows[0]))

    @routes.post("/runs/{path:path}/chat")
    async def chat(path: str, request: Request):
        loaded = await _loaded(runs, run_path(board, path), path)
        try:
            if loaded.form.shape != "chat":
                raise Refused(422, "not a chat model: use the playground's form (POST /runs/RUN/try)")
            prompt = _chat_prompt(loaded, await request.body())
        except Refused as refused:
            return JSONResponse({"detail": refused.detail}, status_code=refused.status)
        task = loaded.predictor.scorer
        sampling = Sampling(max_new_tokens=task.generation.max_new_tokens)  # greedy, as predict and serve
        return StreamingResponse(reply_events(loaded, prompt, sampling), media_type="text/event-stream")


def _formats(loaded: Loaded) -> list[str]:
    task = loaded.predictor.scorer
    return list(task.upload_formats) if isinstance(task, Uploadable) else []


def _check_declared(request: Request, limit: int) -> None:
    """Refuses (413) a body whose declared size is past the upload limit, before it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise Refused(413, f"the upload is {int(declared):,} bytes; the limit is {limit:,} "
                           "(tunesmith board --max-upload-bytes)")  # fmt: skip


async def _inputs(loaded: Loaded, request: Request, limit: int) -> list:
    """The one model input a playground form sent: its texts, or its image decoded by the task.

    Raises:
        Refused: 413 over a limit, 422 an empty field or a file the task cannot decode.
    """
    from starlette.datastructures import UploadFile

    form = await request.form(max_files=1, max_fields=16)
    try:
        if loaded.form.shape != "image":
            return [loaded.form.item(form)]
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise Refused(422, "no image: choose a file to upload")
        where = file_label(1, upload.filename)
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        raise Refused(413, f"{where} is over {limit:,} bytes; the limit is {limit:,}")
    if not data:
        raise Refused(422, f"{where}: empty (no bytes)")
    predictor = loaded.predictor
    try:  # decoded on a worker thread, as serve does: the page keeps answering
        return [await asyncio.to_thread(predictor.scorer.decode_upload, predictor.tokenizer, data, where=where,
                                        limits=UploadLimits(limit, MAX_PIXELS))]  # fmt: skip
    except InputTooLarge as error:
        raise Refused(413, str(error)) from None
    except TunesmithError as error:
        raise Refused(422, str(error)) from None


def prediction_view(row: dict[str, Any]) -> dict[str, Any]:
    """A prediction row laid out for the page, by the shape of each value (not by task kind):
    plain values, scores (names to numbers, highest first) and lists of records (entities)."""
    values, tables = [], []
    for key, value in row.items():
        if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            ranked = sorted(value.items(), key=lambda item: -item[1])
            tables.append({"key": key, "columns": ["", key], "rows": [list(item) for item in ranked]})
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for v in value for k in v))
            tables.append({"key": key, "columns": columns, "rows": [[v.get(c, "") for c in columns] for v in value]})
        elif isinstance(value, (list, tuple)):
            values.append((key, ", ".join(map(str, value)) or "(none)"))
        elif isinstance(value, dict):
            values.append((key, json.dumps(value, ensure_ascii=False)))
        else:
            values.append((key, "" if value is None else str(value)))
    return {"plain": values, "tables": tables}


def _chat_prompt(loaded: Loaded, body: bytes) -> str:
    """The conversation in ``{"messages": [{role, content}, ...]}`` rendered as in training.

    Raises:
        Refused: 422 a body that is not such a conversation ending with a non-empty user turn.
    """
    from pydantic import ValidationError

    try:
        raw = json.loads(body)
        messages = [Message.model_validate(m) for m in raw["messages"]]
        turns = [{"role": m.role, "content": m.text()} for m in messages]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, ValueError, ValidationError) as error:
        detail = error.errors()[0]["msg"] if isinstance(error, ValidationError) else str(error)
        raise Refused(422, f'send {{"messages": [{{"role": "user", "content": "..."}}, ...]}} ({detail})') from None
    if not turns or turns[-1]["role"] != "user":
        raise Refused(422, "messages: end with the user's turn")
    if not turns[-1]["content"].strip():
        raise Refused(422, "'message' is empty: type something to send")
    if sum(len(t["content"]) for t in turns) > MAX_TEXT_CHARS:
        raise Refused(413, f"the conversation is over {MAX_TEXT_CHARS} characters; the limit is {MAX_TEXT_CHARS}")
    predictor = loaded.predictor
    return predictor.scorer.prompt(predictor.tokenizer, turns)


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def reply_events(loaded: Loaded, prompt: str, sampling: Sampling):
    """Server-sent events of one reply: ``{"delta": piece}`` as the model writes it, then
    ``{"done": true, "text": reply}`` (or ``{"error": ...}``). The pieces are the OpenAI stream's:
    leading whitespace dropped, joined and stripped they are ``Chat.complete``'s text.

    Generation runs on the run's model thread; the pieces are read on another. Should the
    generation fail, the reader thread would wait for a piece that never comes, so the model
    thread's future is watched beside it and the failure ends the stream."""
    loop = asyncio.get_running_loop()
    predictor, started = loaded.predictor, []

    def run(work):
        started.append(loop.run_in_executor(loaded.executor, work))
        return started[-1]

    pieces = iter(predictor.scorer.stream(predictor.model, predictor.tokenizer, prompt, sampling, run))
    generating, finished, text = set(started), object(), ""
    while True:
        step = asyncio.ensure_future(loop.run_in_executor(None, next, pieces, finished))
        while generating and not step.done():
            done, _ = await asyncio.wait({step, *generating}, return_when=asyncio.FIRST_COMPLETED)
            for future in done & generating:
                generating.discard(future)
                if future.exception() is not None:
                    error = future.exception()
                    yield _event({"error": f"generation failed: {type(error).__name__}: {error}"})
                    return
        piece = await step
        if piece is finished:
            break
        piece = piece if text else piece.lstrip()
        if piece:
            text += piece
            yield _event({"delta": piece})
    yield _event({"done": True, "text": text.strip()})


def _data_routes(routes: APIRouter, board: Board) -> None:
    from tunesmith.tasks.build import TASK_KINDS, stages_of

    kinds = [k for k in TASK_KINDS if "inspect" in stages_of(k)]
    running = asyncio.Lock()  # one inspection at a time: each may train folds

    @routes.get("/data", response_class=HTMLResponse)
    async def data_page():
        return _page("data.html", kinds=kinds, form={}, roots=board.roots)

    @routes.post("/data", response_class=HTMLResponse)
    async def data_inspect(request: Request):
        form = await request.form(max_files=0, max_fields=16)
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        page = "data_result.html" if request.headers.get("hx-request") else "data.html"
        shown = {"kinds": kinds, "form": values, "roots": board.roots}
        try:
            files, overrides = data_request(board, values)
            async with running:
                stamp, lines = await asyncio.to_thread(run_inspection, board, files, overrides)
        except Refused as refused:
            return _page(page, refused.status, error=str(refused.detail), **shown)
        except TunesmithError as error:  # the CLI's message: a missing or unreadable file, a bad setting
            return _page(page, 422, error=str(error), **shown)
        return _page(page, stamp=stamp, summary=lines, **shown)

    @routes.get("/data/reports/{stamp}/{name:path}")
    async def data_report(stamp: str, name: str):
        folder = (board.runs_dir / INSPECTIONS).resolve() / stamp
        path = (folder / name).resolve()
        if "/" in stamp or stamp in ("", ".", "..") or folder.resolve() not in path.parents or not path.is_file():
            raise HTTPException(404, f"no report file {stamp}/{name}")
        # The report is tunesmith's own self-contained page (inline style, data: images) showing the
        # user's rows: no script or outside request may run in it.
        return FileResponse(path, headers={"Content-Security-Policy": REPORT_POLICY})


def data_request(board: Board, values: dict[str, str]) -> tuple[list[Path], list[str]]:
    """The confined data files (the first is train, further lines of ``heldout`` are held out)
    and the ``--set`` overrides a data page form asks for.

    Raises:
        Refused: 422 no file named or a setting the page does not take; 403 a file outside the
            allowed folders.
    """
    given = [values.get("path", "").strip(), *values.get("heldout", "").splitlines()]
    given = [g.strip() for g in given if g.strip()]
    if not given or not values.get("path", "").strip():
        raise Refused(422, "data file: empty; give a path inside " + ", ".join(str(r) for r in board.roots))
    try:
        files = [board.confine(g, "data file") for g in given]
    except TunesmithError as error:
        raise Refused(403, str(error)) from None
    overrides = [f"{key}={values[name].strip()}" for name, key in
                 (("task", "task.type"), ("text_column", "data.text_column"), ("label_column", "data.label_column"),
                  ("label_errors", "inspect.label_errors")) if values.get(name, "").strip()]  # fmt: skip
    for line in values.get("settings", "").splitlines():
        if line.strip():
            key = line.split("=", 1)[0].strip()
            if "=" not in line or not key.startswith(SETTING_PREFIXES):
                raise Refused(422, f"setting {line.strip()!r}: give KEY=VALUE with a key under "
                                   f"{', '.join(SETTING_PREFIXES)} (the files come from the path fields)")  # fmt: skip
            if key == "model.name":  # a local model folder must lie inside the allowed folders too
                try:
                    line = f"model.name={board.confine_model(line.split('=', 1)[1].strip())}"
                except TunesmithError as error:
                    raise Refused(403, str(error)) from None
            overrides.append(line.strip())
    return files, overrides


def run_inspection(board: Board, files: list[Path], overrides: list[str]) -> tuple[str, list[str]]:
    """``tunesmith inspect FILES --set OVERRIDES`` into a new ``RUNS_DIR/.board/inspect/<stamp>/``:
    the stamp and the CLI's summary lines. A failed inspection leaves no folder behind.

    Raises:
        TunesmithError: the CLI's message (a missing or unreadable file, a setting, a task kind
            inspect does not cover).
    """
    from tunesmith import api
    from tunesmith.config import load_config
    from tunesmith.data.inspection import inspect_data, summary_lines
    from tunesmith.runs import unused_path
    from tunesmith.study.cv import fold_classifier
    from tunesmith.tasks import build_task, require_stage

    config = load_config(None, overrides)
    task = build_task(config)
    require_stage(task, "inspect")
    target = unused_path(board.runs_dir / INSPECTIONS / f"{datetime.now():%Y%m%d-%H%M%S}")
    try:
        report = inspect_data(config, [str(f) for f in files], target, task=task, progress=False,
                              fit_fold=fold_classifier(config, train=api.train), log=lambda message: None)  # fmt: skip
    except BaseException:
        if target.is_dir() and not any(target.iterdir()):  # ours, and empty: nothing to keep
            target.rmdir()
        raise
    return target.name, summary_lines(report)
