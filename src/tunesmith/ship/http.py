"""What the server's routes share: the refusal a route answers with, and the service a route
module is handed (``serve.Service``), so route modules (``ship/openai_api.py``) need not import
the app that holds them."""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse

UNAUTHORISED = "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)"


class Refused(Exception):
    """A request answered with an error status and a ``detail`` that says what is wrong."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        self.status, self.detail = status, detail


class Gate(Protocol):
    """What a route module asks of the service: the key check, the bounded body, the refusal
    (counted in /metrics), the model and the limits."""

    predictor: Any
    stats: Any
    executor: Any
    """The one thread that runs the model."""
    max_batch: int
    max_text_chars: int

    def log_rows(self, inputs: list, rows: list[dict]) -> None:
        """Appends predictions to the prediction log (``serve --log``), when there is one."""
        ...

    def check_key(self, request: Request) -> None:
        """Raises Refused(401) without the API key, when there is one."""
        ...

    async def read_body(self, request: Request) -> bytearray:
        """The body; Refused(413) past the limit."""
        ...

    def refuse(self, status: int, detail: Any) -> JSONResponse:
        """The error response (counted)."""
        ...
