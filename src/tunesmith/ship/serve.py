"""``tunesmith serve``: a FastAPI app around a run directory or an export directory.

- ``POST /predict`` takes ``{"text": "..."}``, ``{"texts": ["...", ...]}``, or ``{"inputs": [...]}``
  with the inputs as the run's task takes them (question/context objects, pairs of texts, prompts);
  an input of the wrong kind gets 422 with the task's message naming it;
- a kind whose inputs are files (images: tasks.contract.Uploadable) takes them as bytes, never as
  paths the server would open: ``{"images": ["<base64>" or "data:image/png;base64,...", ...]}``
  at ``POST /predict``, or ``multipart/form-data`` parts named ``file`` at ``POST /predict/upload``
  (ship/uploads.py); a file over ``max_upload_bytes`` or an image over ``max_pixels`` (width x
  height, read before decoding) gets 413, a file that is not an image 422, each naming the file;
- ``GET /health``, ``GET /metadata`` (model, labels, metrics, data hash, the request form and
  limits), ``GET /metrics``
  (Prometheus text format);
- bodies over ``max_body_bytes`` and batches over ``max_batch`` get 413, malformed bodies 422,
  both with a ``detail`` that says what is wrong; with an API key, requests without it get 401
  (``/docs``, ``/redoc`` and ``/openapi.json`` included; ``/health`` stays open);
- requests that arrive together are batched: one worker runs the model; whatever queued while
  it ran (up to ``max_batch`` texts, after an optional ``batch_window_ms`` wait) goes into the
  next call;
- with ``log_path``, every prediction is appended to a JSONL file for ``tunesmith monitor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # FastAPI reads the handlers' annotations: module level
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tunesmith.errors import TunesmithError
from tunesmith.ship.http import UNAUTHORISED, Refused
from tunesmith.ship.openai_api import add_openai_routes
from tunesmith.ship.predictor import Predictor, backend_source, export_format
from tunesmith.ship.uploads import file_label, is_multipart, json_file, multipart_files
from tunesmith.tasks.contract import Chat, InputTooLarge, Uploadable, UploadLimits

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_UPLOAD_BYTES = 10_000_000
"""One uploaded file's bytes (a phone photo is 2-5 MB); the body limit applies as well."""
MAX_PIXELS = 40_000_000
"""One image's width x height (40 megapixels: 120 MB decoded as RGB)."""


@dataclass
class Stats:
    """Counters for /metrics (Prometheus text format)."""

    requests: dict[str, int] = field(default_factory=dict)
    predictions: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0
    batches: int = 0
    batch_texts: int = 0

    def request(self, status: int, seconds: float | None = None) -> None:
        self.requests[str(status)] = self.requests.get(str(status), 0) + 1
        if seconds is not None:
            self.latency_sum += seconds
            self.latency_count += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.latency_buckets[i] += 1

    def prometheus(self) -> str:
        lines = ["# HELP tunesmith_requests_total Requests by HTTP status.", "# TYPE tunesmith_requests_total counter"]
        lines += [f'tunesmith_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
        lines += ["# HELP tunesmith_predictions_total Texts predicted.", "# TYPE tunesmith_predictions_total counter",
                  f"tunesmith_predictions_total {self.predictions}",
                  "# HELP tunesmith_request_seconds Latency of successful /predict requests.",
                  "# TYPE tunesmith_request_seconds histogram"]  # fmt: skip
        lines += [
            f'tunesmith_request_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(LATENCY_BUCKETS, self.latency_buckets)
        ]
        lines += [f'tunesmith_request_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                  f"tunesmith_request_seconds_sum {self.latency_sum}", f"tunesmith_request_seconds_count {self.latency_count}",
                  "# HELP tunesmith_batch_texts Texts per model call.", "# TYPE tunesmith_batch_texts summary",
                  f"tunesmith_batch_texts_sum {self.batch_texts}", f"tunesmith_batch_texts_count {self.batches}"]  # fmt: skip
        return "\n".join(lines) + "\n"


class Batcher:
    """Collects concurrent requests into model calls: ``calls`` of them in flight at once, each
    on its own worker thread (one by default; an ONNX export on a CPU runs one a core, so a
    batch forms and runs while the one before it is still in the model)."""

    def __init__(self, predictor: Predictor, stats: Stats, *, max_batch: int, window: float, log_path: Path | None,
                 calls: int = 1):  # fmt: skip
        self.predictor, self.stats, self.max_batch, self.window = predictor, stats, max_batch, window
        self.log_path, self.log_lock = log_path, threading.Lock()
        self.queue: asyncio.Queue | None = None
        self.calls = calls
        self.executor = ThreadPoolExecutor(max_workers=calls, thread_name_prefix="tunesmith-model")
        self.task: asyncio.Task | None = None
        self.slots: asyncio.Semaphore | None = None
        self.running: set[asyncio.Task] = set()  # the calls in flight (held, so none is collected early)

    async def start(self) -> None:
        self.queue, self.slots = asyncio.Queue(), asyncio.Semaphore(self.calls)
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for call in list(self.running):
            call.cancel()
        self.executor.shutdown(wait=False)

    async def submit(self, texts: list[str]) -> list[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carried = None  # a request that did not fit into the previous call
        while True:
            waiting = [carried if carried is not None else await self.queue.get()]
            carried = None
            if self.window > 0:
                await asyncio.sleep(self.window)
            count = len(waiting[0][0])
            # Take what is already queued (no timeouts on get: nothing can be lost in between).
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if count + len(item[0]) > self.max_batch:
                    carried = item
                    break
                waiting.append(item)
                count += len(item[0])
            await self.slots.acquire()  # a free model thread; requests queue meanwhile
            call = asyncio.create_task(self._call(loop, waiting))
            self.running.add(call)
            call.add_done_callback(self.running.discard)

    async def _call(self, loop, waiting: list) -> None:
        """One model call for ``waiting`` (requests and their futures), then its answers."""
        try:
            texts = [t for texts, _ in waiting for t in texts]
            try:
                results = await loop.run_in_executor(self.executor, self._predict, texts)
            except TunesmithError:  # one request's bad input: each request alone, so only it fails
                for request_texts, future in waiting:
                    await self._answer_alone(loop, request_texts, future)
                return
            except Exception as error:  # the model failed: every waiting request gets the error
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                return
            start = 0
            for request_texts, future in waiting:
                if not future.done():
                    future.set_result(results[start : start + len(request_texts)])
                start += len(request_texts)
        finally:
            self.slots.release()

    async def _answer_alone(self, loop, texts: list, future: asyncio.Future) -> None:
        try:
            result = await loop.run_in_executor(self.executor, self._predict, texts)
        except Exception as error:  # noqa: BLE001 - handed to the request that sent it
            if not future.done():
                future.set_exception(error)
            return
        if not future.done():
            future.set_result(result)

    def _predict(self, texts: list) -> list[dict[str, Any]]:
        results = self.predictor.predict(texts)
        with self.log_lock:  # calls on several threads
            self.stats.batches += 1
            self.stats.batch_texts += len(texts)
            self.stats.predictions += len(texts)
        self.write_log(texts, results)
        return results

    def write_log(self, texts: list, results: list[dict[str, Any]]) -> None:
        """Appends one JSON line per prediction to the prediction log (``tunesmith monitor``
        reads it), when there is one."""
        if self.log_path is not None:
            now = datetime.now(UTC).isoformat()
            lines = "".join(
                json.dumps(
                    {"time": now, "text" if isinstance(t, str) else "input": t, **r},
                    ensure_ascii=False,
                    default=lambda value: f"<{type(value).__name__}>",
                )
                + "\n"  # a decoded image: its type
                for t, r in zip(texts, results)
            )
            # One write() on an O_APPEND descriptor: the lines of several worker processes never interleave.
            data = lines.encode("utf-8")
            with self.log_lock:
                descriptor = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    while data:
                        data = data[os.write(descriptor, data) :]
                finally:
                    os.close(descriptor)


class PredictRequest(BaseModel):
    """The body of ``POST /predict``: one text, a non-empty list of texts, or a non-empty list of
    ``inputs`` as the run's task takes them (texts, ``{"question", "context"}`` objects, pairs
    of texts, prompts); or, for a kind whose inputs are files (tasks.contract.Uploadable), a
    non-empty list of ``images`` (base64 or data URLs)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None
    inputs: list[Any] | None = None
    images: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        given = [name for name in ("text", "texts", "inputs", "images") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'text' (a string), 'texts' (a list of strings), 'inputs' "
                             "(a list of the run's inputs) or 'images' (a list of base64 image files)")  # fmt: skip
        if given[0] != "text" and not getattr(self, given[0]):
            raise ValueError(f"'{given[0]}' is empty")
        return self

    def field(self) -> str:
        """The field the inputs came in."""
        return next(name for name in ("text", "texts", "inputs", "images") if getattr(self, name) is not None)

    def items(self) -> list:
        """The inputs to predict, in order."""
        return [self.text] if self.text is not None else getattr(self, self.field())


def _characters(item: Any) -> int:
    """The characters of text in one input (a string, or the strings inside an object or list)."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(_characters(v) for v in item.values())
    if isinstance(item, list):
        return sum(_characters(v) for v in item)
    return 0


class Service:
    """What the routes share: the predictor behind its batcher, the counters, the key and the limits."""

    def __init__(self, predictor: Predictor, stats: Stats, batcher: Batcher, *, api_key: str | None,
                 max_batch: int, max_text_chars: int, max_body_bytes: int,
                 limits: UploadLimits = UploadLimits(MAX_UPLOAD_BYTES, MAX_PIXELS)) -> None:  # fmt: skip
        self.predictor, self.stats, self.batcher, self.api_key = predictor, stats, batcher, api_key
        self.executor = batcher.executor  # the model's one thread, shared with the OpenAI routes
        self.max_batch, self.max_text_chars, self.max_body_bytes = max_batch, max_text_chars, max_body_bytes
        self.limits = limits
        self.uploads = isinstance(predictor.scorer, Uploadable)  # the kind takes files, not JSON inputs
        # Uploads decode on worker threads (the event loop keeps answering), two requests at a
        # time: each holds one full-size image while it decodes.
        self.decoding = asyncio.Semaphore(2)

    def refuse(self, status: int, detail: Any) -> JSONResponse:
        self.stats.request(status)
        return JSONResponse({"detail": detail}, status_code=status)

    def log_rows(self, inputs: list, rows: list[dict[str, Any]]) -> None:
        """Writes predictions made outside /predict (the OpenAI routes) to the prediction log."""
        self.batcher.write_log(inputs, rows)

    def check_key(self, request: Request) -> None:
        """Refuses (401) a request without the API key, when there is one."""
        if self.api_key is None:
            return
        given = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given = given or bearer[7:]
        if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise Refused(401, UNAUTHORISED)

    async def read_body(self, request: Request) -> bytearray:
        """The body, refused (413) past max_body_bytes, declared or streamed."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise Refused(413, f"the body is {declared} bytes; the limit is {self.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # a body without Content-Length is cut off at the limit
            body.extend(chunk)
            if len(body) > self.max_body_bytes:
                raise Refused(413, f"the body is over {self.max_body_bytes} bytes; the limit is {self.max_body_bytes}")
        return body

    def parse(self, body: bytearray) -> tuple[PredictRequest, list]:
        """The request and its items; refuses a malformed body or a form the run does not take
        (422), too many items or too long texts (413)."""
        try:
            parsed = PredictRequest.model_validate_json(body)
        except ValidationError as error:
            problems = [
                {"field": ".".join(map(str, e["loc"])) or "(body)", "problem": e["msg"]} for e in error.errors()
            ]
            raise Refused(422, problems) from None
        kind, files = self.predictor.scorer.kind, parsed.field() == "images"
        if self.uploads and not files:
            raise Refused(422, f"this server's {kind} run takes images, not '{parsed.field()}': send "
                               '{"images": ["<base64>" or "data:image/png;base64,...", ...]} to POST /predict, or '
                               "file parts named 'file' to POST /predict/upload (a server never opens a path "
                               "it is sent)")  # fmt: skip
        if files and not self.uploads:
            raise Refused(422, f"this server's {kind} run takes 'text', 'texts' or 'inputs', not 'images'")
        items = parsed.items()
        if len(items) > self.max_batch:
            raise Refused(413, f"{len(items)} {'images' if files else 'texts'} in one request; the limit is "
                               f"{self.max_batch}")  # fmt: skip
        longest = 0 if files else max(_characters(t) for t in items)
        if longest > self.max_text_chars:
            raise Refused(413, f"a text has {longest} characters; the limit is {self.max_text_chars}")
        return parsed, items

    async def decode(self, files: Callable[[], list[tuple[str, bytes]]]) -> list:
        """The task's inputs for a request's files (``files()``: each named, as errors say it, with
        its bytes), decoded by the task on a worker thread.

        Raises:
            Refused: 413 a file over the limits, 422 one the task cannot decode, naming it.
        """
        scorer, processor = self.predictor.scorer, self.predictor.tokenizer

        def work() -> list:
            return [scorer.decode_upload(processor, data, where=where, limits=self.limits) for where, data in files()]

        async with self.decoding:
            try:
                return await asyncio.to_thread(work)
            except InputTooLarge as error:
                raise Refused(413, str(error)) from None
            except TunesmithError as error:
                raise Refused(422, str(error)) from None

    async def predict(self, request: Request) -> Any:
        """``POST /predict`` (JSON)."""
        started = time.perf_counter()
        try:
            self.check_key(request)
            parsed, items = self.parse(await self.read_body(request))
            if self.uploads:  # base64 is decoded on the worker thread too (a body may hold megabytes)
                sent, limit = items, self.limits.max_bytes
                items = await self.decode(lambda: [(file_label(n), json_file(value, file_label(n), limit))
                                                   for n, value in enumerate(sent, 1)])  # fmt: skip
        except Refused as refused:
            return self.refuse(refused.status, refused.detail)
        return await self.answer(items, started, one=parsed.text is not None)

    async def predict_upload(self, request: Request) -> Any:
        """``POST /predict/upload`` (multipart/form-data, one file part named ``file`` per image)."""
        started = time.perf_counter()
        try:
            self.check_key(request)
            if not is_multipart(request.headers):
                raise Refused(415, "send multipart/form-data with one file part named 'file' per image (or JSON "
                                   '{"images": [...]} to POST /predict)')  # fmt: skip
            body = await self.read_body(request)
            files = await multipart_files(request.headers, body, max_files=self.max_batch,
                                          max_bytes=self.limits.max_bytes)  # fmt: skip
            inputs = await self.decode(lambda: [(file_label(n, name), data) for n, (name, data) in enumerate(files, 1)])
        except Refused as refused:
            return self.refuse(refused.status, refused.detail)
        return await self.answer(inputs, started, names=[name for name, _ in files])

    async def answer(self, inputs: list, started: float, *, one: bool = False, names: list[str] | None = None) -> Any:
        """The model's rows for a request's inputs (through the batcher), the first alone when
        ``one``, each with its upload's file name when ``names`` gives one."""
        try:
            results = await self.batcher.submit(inputs)
        except TunesmithError as error:  # an input the task cannot take: the task's message names it
            return self.refuse(422, str(error))
        except Exception as error:  # noqa: BLE001 - a failed model call must answer, not hang
            return self.refuse(500, f"prediction failed: {type(error).__name__}: {error}")
        self.stats.request(200, time.perf_counter() - started)
        if names is not None:
            results = [{"file": name, **row} if name else row for name, row in zip(names, results)]
        return results[0] if one else {"predictions": results}

    def request_form(self) -> dict[str, Any]:
        """What ``/metadata`` says a request looks like: its routes and fields, and the limits."""
        limits = {"max_batch": self.max_batch, "max_body_bytes": self.max_body_bytes}
        if not self.uploads:
            return {"predict": "POST /predict (JSON)", "fields": {"text": "one text", "texts": "a list of texts",
                    "inputs": "a list of the run's inputs (texts, question/context objects, pairs of texts, prompts)"},
                    "limits": limits | {"max_text_chars": self.max_text_chars}}  # fmt: skip
        return {"predict": "POST /predict (JSON)", "upload": "POST /predict/upload (multipart/form-data)",
                "fields": {"images": "a list of image files, each base64-encoded or a data URL "
                                     "(data:image/png;base64,...)",
                           "file": "POST /predict/upload: one file part named 'file' per image"},
                "formats": list(self.predictor.scorer.upload_formats),
                "limits": limits | {"max_upload_bytes": self.limits.max_bytes,
                                    "max_pixels": self.limits.max_pixels}}  # fmt: skip

    def guarded(self, request: Request, answer: Callable[[], Any]) -> Any:
        """``answer()``, or the 401 for a request without the API key."""
        try:
            self.check_key(request)
        except Refused as refused:
            return self.refuse(refused.status, refused.detail)
        return answer()


def create_app(source: str | Path, *, api_key: str | None = None, max_batch: int = 64, max_text_chars: int = 20_000,
               max_body_bytes: int = 1_000_000, batch_window_ms: float = 0.0, log_path: str | Path | None = None,
               predictor: Predictor | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS, onnx_file: str | None = None, threads: int | None = None):  # fmt: skip
    """The FastAPI app serving ``source`` (a run or an export directory); ``max_upload_bytes``
    and ``max_pixels`` bound each uploaded file of a kind that takes files (images);
    ``onnx_file`` picks an ONNX export's model file, ``threads`` the CPU threads of a model call.
    An ONNX export served with ``threads`` unset runs one call a core, each on one thread."""
    calls = 1
    if predictor is None and threads is None and export_format(source) == "onnx":
        threads, calls = 1, max(1, len(os.sched_getaffinity(0)))
    predictor = predictor or Predictor(source, onnx_file, threads)
    stats = Stats()
    log = Path(log_path) if log_path is not None else None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    batcher = Batcher(predictor, stats, max_batch=max_batch, window=batch_window_ms / 1000, log_path=log,
                      calls=calls)  # fmt: skip
    service = Service(predictor, stats, batcher, api_key=api_key, max_batch=max_batch, max_text_chars=max_text_chars,
                       max_body_bytes=max_body_bytes, limits=UploadLimits(max_upload_bytes, max_pixels))  # fmt: skip

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    # With a key, the schema and its viewers need it too (they describe the private API).
    public_docs = {} if api_key is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="tunesmith", lifespan=lifespan, **public_docs)
    app.state.predictor, app.state.stats = predictor, stats

    @app.get("/health")
    async def health():
        return {"status": "ok", "backend": predictor.backend}

    if api_key is not None:
        _add_private_docs(app, service)
    _add_model_routes(app, service)
    if isinstance(predictor.scorer, Chat):  # a kind that chats also speaks the OpenAI API
        add_openai_routes(app, service, model_id=Path(predictor.metadata["source"]).name)
    return app


def _add_private_docs(app: FastAPI, service: Service) -> None:
    """/openapi.json, /docs and /redoc behind the API key."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        return service.guarded(request, lambda: JSONResponse(app.openapi()))

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        return service.guarded(request, lambda: get_swagger_ui_html(openapi_url="/openapi.json", title="tunesmith"))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        return service.guarded(request, lambda: get_redoc_html(openapi_url="/openapi.json", title="tunesmith"))


def _add_model_routes(app: FastAPI, service: Service) -> None:
    """/metadata, /metrics, /predict and, for a kind that takes files, /predict/upload."""

    @app.get("/metadata")
    async def metadata(request: Request):
        return service.guarded(request, lambda: service.predictor.metadata | {"request": service.request_form()})

    @app.get("/metrics")
    async def metrics(request: Request):
        return service.guarded(
            request, lambda: PlainTextResponse(service.stats.prometheus(), media_type="text/plain; version=0.0.4")
        )

    @app.post("/predict")
    async def predict(request: Request):
        return await service.predict(request)

    if service.uploads:

        @app.post("/predict/upload")
        async def predict_upload(request: Request):
            return await service.predict_upload(request)


WORKER_OPTIONS = "TUNESMITH_SERVE_WORKER"
"""The environment variable that hands ``serve``'s source and options to its worker processes."""


def serve(source: str | Path, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, backend: str = "auto",
          log=print, **options) -> None:  # fmt: skip
    """Runs the app with uvicorn: one process, or ``workers`` processes behind one port (each
    with its own model and batcher, and ``threads`` CPU threads a model call: by default the
    cores shared out among the workers); ``backend`` onnx serves a run through an ONNX export
    made on start (``ship.predictor.backend_source``)."""
    if host not in ("127.0.0.1", "localhost", "::1") and options.get("api_key") is None:
        log(f"WARNING: serving on {host} without an API key: anyone who can reach this port can use the model")
    if workers > 1 and options.get("threads") is None:
        options["threads"] = max(1, len(os.sched_getaffinity(0)) // workers)
    sock = bind(host, port)  # before the model loads: a taken port fails fast, and stays ours
    try:
        with _terminate_unwinds(), backend_source(source, backend, log) as loaded:
            _run(loaded, sock, host=host, port=port, workers=workers, log=log, options=options)
    finally:
        sock.close()


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """SIGTERM (docker stop, systemd, Kubernetes) raises KeyboardInterrupt here, as Ctrl-C does.
    uvicorn's server stops on it, then puts back the handler it found and sends the signal again:
    with Python's default handler the process would die there, before the temporary ONNX export
    of ``--backend onnx`` and the socket are cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _run(source: Path, sock: socket.socket, *, host: str, port: int, workers: int, log, options: dict) -> None:
    """serve() once the port is bound and the directory to load is known."""
    import uvicorn

    app = create_app(source, **options)  # in this process first: a model that cannot load fails here, once
    predictor = app.state.predictor
    log(f"Serving {predictor.metadata['source']} ({predictor.backend}) on http://{host}:{port}"
        + (f" with {workers} workers of {options['threads']} threads" if workers > 1 else ""))  # fmt: skip
    if workers == 1:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run(sockets=[sock])
        return
    del app, predictor
    from uvicorn.supervisors import Multiprocess

    os.environ[WORKER_OPTIONS] = json.dumps({"source": str(source), "options": options}, default=str)
    config = uvicorn.Config(f"{__name__}:worker_app", factory=True, host=host, port=port, workers=workers,
                            log_level="warning")  # fmt: skip
    Multiprocess(config, sockets=[sock]).run()


def worker_app():
    """The app of one ``serve --workers`` process, from the options ``serve`` left in the environment."""
    given = json.loads(os.environ[WORKER_OPTIONS])
    return create_app(given["source"], **given["options"])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (what uvicorn would open).

    Raises:
        TunesmithError: the port is taken, or the host is not an address of this machine.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise TunesmithError(f"--host {host}: not a name or address this machine resolves ({error})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closed port in TIME_WAIT is free
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise TunesmithError(f"port {port} on {host} is in use; choose another with --port") from None
        raise TunesmithError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --host or "
                             "--port (ports below 1024 need administrator rights)") from None  # fmt: skip
    sock.set_inheritable(True)
    return sock
