"""tunesmith board: a local web application over run directories (``tunesmith board``).

Front end: server-rendered HTML (jinja2 templates under ``resources/board/templates``, autoescaped)
with htmx for partial updates and uPlot for the curves, both vendored as static files under
``resources/board/static`` (see NOTICE.txt there). Why: the board must run on a user's machine
after ``pip install`` with no Node build step and no network (no CDN); htmx keeps the interactive
parts (the runs table refreshing, the launch form's errors, the playground) as small HTML
fragments rendered by the same Python that renders whole pages, and uPlot draws thousands of
points in a few milliseconds from a 50 KB file. Live curves come over server-sent events, which
need no extra protocol or library beside FastAPI's streaming response.

Every page's router is built by one module (``runs_pages``, ``jobs_pages``, ``try_pages``) from
the shared ``Board``; this module adds the key check, the static files and the error pages.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from tunesmith.board.context import Board, cross_site, templates

STATIC = Path(__file__).resolve().parents[1] / "resources" / "board" / "static"
COOKIE = "tunesmith_board_key"


def create_app(board: Board):
    """The board's FastAPI application over ``board`` (its folders, key and job queue)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, PlainTextResponse
    from fastapi.staticfiles import StaticFiles

    from tunesmith.board import jobs_pages, runs_pages, try_pages
    from tunesmith.board.jobs import JobQueue

    if board.jobs is None:
        board.jobs = JobQueue(board.runs_dir)
    app = FastAPI(title="tunesmith board", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        """With an API key: the ``X-API-Key`` header, the cookie, or ``?key=`` once (which sets the cookie)."""
        if board.api_key is None:
            return await call_next(request)
        given = request.headers.get("x-api-key") or request.cookies.get(COOKIE) or request.query_params.get("key")
        if not given or not hmac.compare_digest(given.encode(), board.api_key.encode()):
            return PlainTextResponse("this board needs its API key: open it once with ?key=KEY", status_code=401)
        response = await call_next(request)
        if request.query_params.get("key"):
            response.set_cookie(COOKIE, board.api_key, httponly=True, samesite="strict")
        return response

    @app.middleware("http")
    async def same_site_only(request: Request, call_next):
        """A page on another site may post a plain form to a board on localhost (no preflight):
        every request that changes something must come from the board's own pages."""
        if request.method not in ("GET", "HEAD", "OPTIONS") and (refused := cross_site(request.headers)):
            return PlainTextResponse(refused, status_code=403)
        return await call_next(request)

    # Added last, so outermost: the Host check first, then the body limit (which must see the
    # inner middlewares' and routes' reads to stop them).
    app.add_middleware(BodyLimit, limit=board.max_upload_bytes + try_pages.FORM_OVERHEAD)
    if board.api_key is None:  # without a key only the Host check stands between a rebound name and the board
        app.add_middleware(KnownHosts, hosts=board.hosts)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # runs_pages last: its GET /runs/{path} (a run and its sub-pages) would shadow /runs/{path}/try.
    for module in (jobs_pages, try_pages, runs_pages):
        app.include_router(module.router(board))

    @app.exception_handler(404)
    async def not_found(request: Request, error):
        return HTMLResponse(templates().get_template("error.html").render(message=str(error.detail)), status_code=404)

    app.state.board = board
    return app


def host_name(header: str) -> str:
    """A Host header's name without its port: ``[::1]:8000`` gives ``[::1]``, ``box.lan:80``
    gives ``box.lan``, and a bare IPv6 address (``::1``) stays whole."""
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class KnownHosts:
    """ASGI middleware answering 400 to a request whose ``Host`` names none of ``hosts`` (any
    port): a rebound DNS name pointing a page at the board is refused. Starlette's
    TrustedHostMiddleware does this, but the starlette that flwr 1.42 allows (1.3) cuts a Host
    header at its first colon, so it refuses ``[::1]:8000``, the IPv6 loopback."""

    def __init__(self, app, hosts: list[str]):
        self.app, self.hosts = app, set(hosts)

    async def __call__(self, scope, receive, send):
        if scope.get("type") not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_name(header) in self.hosts:
            return await self.app(scope, receive, send)
        from starlette.responses import PlainTextResponse

        return await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)


class BodyLimit:
    """ASGI middleware answering 413 to a request body over ``limit`` bytes: at once when its
    ``Content-Length`` says so, else (a chunked body) as soon as the bytes received pass it.
    Starlette has no body limit of its own (its form parser limits only a part's size)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":  # lifespan and websocket messages carry no body
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception as error:  # starlette's http middlewares wrap it in an ExceptionGroup
            if started or not _holds_too_large(error):
                raise
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        text = (f"the request body is larger than the board accepts ({self.limit} bytes; "
                "tunesmith board --max-upload-bytes raises it)").encode()  # fmt: skip
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(text)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": text})


class BodyTooLarge(Exception):
    """Raised inside ``BodyLimit`` when a streamed body passes its limit."""


def _holds_too_large(error: BaseException) -> bool:
    """Whether ``error`` is a ``BodyTooLarge``, or an exception group holding one."""
    inner = error.exceptions if isinstance(error, BaseExceptionGroup) else ()
    return isinstance(error, BodyTooLarge) or any(_holds_too_large(e) for e in inner)
