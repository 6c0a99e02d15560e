"""OpenAI-compatible routes of ``tunesmith serve`` for a kind that chats (a causal LM):
``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``, with
``stream: true`` as server-sent events, token usage, and the OpenAI error shape
(``{"error": {"message", "type", "param"}}``), so the official ``openai`` client works against
the local base URL.

The request fields follow OpenAI's API reference (``max_tokens`` / ``max_completion_tokens``,
``temperature``, ``top_p``, ``stop``, ``n``, ``seed``, ``stream``); fields this server does not
act on (``logprobs``, ``tools``, ...) are refused by name rather than silently ignored. Chat
messages are rendered with the run's chat template exactly as in training. Written here rather
than taken from a serving engine (vLLM, TGI) because those do not run a tunesmith run directory
on this CPU stack; the request and response shapes are the OpenAI API's.

Concurrent non-streaming requests are batched: what queued while the model was busy, with the
same sampling settings (up to ``max_batch`` completions), is generated in one left-padded batch
with transformers' KV cache.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunesmith.ship.http import Gate, Refused
from tunesmith.tasks.contract import Completion, Sampling

UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call", "response_format",
               "logit_bias", "best_of", "echo", "suffix")  # fmt: skip
"""OpenAI request fields this server does not act on: refused by name (400)."""
MAX_TOKENS = 4096


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The content as text (OpenAI's list of ``{"type": "text", "text": ...}`` parts joined)."""
        if isinstance(self.content, str):
            return self.content
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in self.content):
            raise ValueError("only text content parts are supported")
        return "".join(part["text"] for part in self.content)


class CompletionRequest(BaseModel):
    """The fields of /v1/completions; /v1/chat/completions has ``messages`` instead of ``prompt``."""

    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    n: int = Field(1, gt=0, le=16)
    seed: int | None = None
    stream: bool = False
    prompt: str | list[str] | None = None
    messages: list[Message] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    def sampling(self, default_tokens: int) -> Sampling:
        return Sampling(max_new_tokens=self.max_completion_tokens or self.max_tokens or default_tokens,
                        temperature=self.temperature, top_p=self.top_p, stop=tuple(self.stop or ()),
                        seed=self.seed)  # fmt: skip


def _error(gate: Gate, status: int, message: str, param: str | None = None) -> JSONResponse:
    gate.stats.request(status)
    kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None},
                         "detail": message}, status_code=status)  # fmt: skip


class GenerationBatcher:
    """Batches concurrent completions that share their sampling settings into one generate call
    (on the model's one thread)."""

    def __init__(self, gate: Gate):
        self.gate, self.queue = gate, None
        self.worker: asyncio.Task | None = None

    async def submit(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        if self.queue is None:  # started on first use, inside the server's event loop
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((prompts, sampling, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            held = []
            count = len(waiting[0][0])
            while not self.queue.empty():
                item = self.queue.get_nowait()
                fits = item[1] == waiting[0][1] and count + len(item[0]) <= self.gate.max_batch
                (waiting if fits else held).append(item)
                count += len(item[0]) if fits else 0
            for item in held:  # another setting: the next round
                self.queue.put_nowait(item)
            prompts = [p for request, _, _ in waiting for p in request]
            predictor = self.gate.predictor
            try:
                found = await loop.run_in_executor(self.gate.executor, predictor.scorer.complete, predictor.model,
                                                   predictor.tokenizer, prompts, waiting[0][1])  # fmt: skip
            except Exception as error:  # noqa: BLE001 - every waiting request answers, none hangs
                for _, _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.gate.stats.batches += 1
            self.gate.stats.batch_texts += len(prompts)
            start = 0
            for request, _, future in waiting:
                if not future.done():
                    future.set_result(found[start : start + len(request)])
                start += len(request)


def add_openai_routes(app: FastAPI, gate: Gate, model_id: str) -> None:
    """/v1/models, /v1/chat/completions and /v1/completions on ``app`` for the chatting task."""
    batcher = GenerationBatcher(gate)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            gate.check_key(request)
        except Refused as refused:
            return _error(gate, refused.status, str(refused.detail))
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": int(time.time()),
                                            "owned_by": "tunesmith"}]}  # fmt: skip

    async def answer(request: Request, chat: bool):
        started = time.perf_counter()
        try:
            gate.check_key(request)
            parsed, prompts = _parse(await gate.read_body(request), gate, model_id, chat=chat)
        except Refused as refused:
            return _error(gate, refused.status, str(refused.detail), getattr(refused, "param", None))
        sampling = parsed.sampling(gate.predictor.scorer.generation.max_new_tokens)
        asked = _asked(parsed, prompts, chat)
        if parsed.stream:
            gate.stats.request(200)
            return StreamingResponse(
                _events(gate, prompts[0], sampling, model_id, chat, asked[0]), media_type="text/event-stream"
            )
        try:
            found = await batcher.submit([p for p in prompts for _ in range(parsed.n)], sampling)
        except Exception as error:  # noqa: BLE001 - a failed generation answers, not hangs
            return _error(gate, 500, f"generation failed: {type(error).__name__}: {error}")
        gate.stats.request(200, time.perf_counter() - started)
        gate.stats.predictions += len(found)
        texts = [text for text in asked for _ in range(parsed.n)]
        gate.log_rows(texts, [{"prompt": t, "completion": c.text} for t, c in zip(texts, found)])
        return _response(found, parsed.n, model_id, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, chat=False)


def _parse(body: bytearray, gate: Gate, model_id: str, *, chat: bool) -> tuple[CompletionRequest, list[str]]:
    """The request and its rendered prompts; Refused (400, 404, 413) naming the problem."""
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Refused(400, f"the body is not JSON ({error})") from None
    if not isinstance(raw, dict):
        raise Refused(400, "the body must be a JSON object")
    for name in UNSUPPORTED:
        if raw.get(name) not in (None, False, []):
            raise Refused(400, f"{name} is not supported by this server")
    needed, other = ("messages", "prompt") if chat else ("prompt", "messages")
    if other in raw:
        raise Refused(400, f"{other} belongs to /v1/{'completions' if chat else 'chat/completions'}; this route "
                           f"takes {needed}")  # fmt: skip
    try:
        parsed = CompletionRequest.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        raise Refused(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if parsed.model != model_id:
        raise Refused(404, f"the model {parsed.model!r} does not exist; this server has {model_id!r}")
    prompts = _prompts(parsed, gate, chat=chat)
    if parsed.stream and (parsed.n > 1 or len(prompts) > 1):
        raise Refused(400, "stream: true takes one prompt and n: 1")
    if len(prompts) * parsed.n > gate.max_batch:
        raise Refused(413, f"{len(prompts) * parsed.n} completions in one request; the limit is {gate.max_batch}")
    longest = max(len(p) for p in prompts)
    if longest > gate.max_text_chars:
        raise Refused(413, f"a prompt has {longest} characters; the limit is {gate.max_text_chars}")
    return parsed, prompts


def _prompts(parsed: CompletionRequest, gate: Gate, *, chat: bool) -> list[str]:
    if not chat:
        prompts = [parsed.prompt] if isinstance(parsed.prompt, str) else parsed.prompt
        if not prompts or any(not p for p in prompts):
            raise Refused(400, "prompt: give a non-empty text or list of texts")
        return prompts
    if not parsed.messages:
        raise Refused(400, "messages: give a non-empty list of {role, content} messages")
    try:
        messages = [{"role": m.role, "content": m.text()} for m in parsed.messages]
    except ValueError as error:
        raise Refused(400, f"messages: {error}") from None
    if messages[-1]["role"] == "assistant":
        raise Refused(400, "messages: the last message is the assistant's; end with the user's turn")
    predictor = gate.predictor
    return [predictor.scorer.prompt(predictor.tokenizer, messages)]


def _asked(parsed: CompletionRequest, prompts: list[str], chat: bool) -> list[str]:
    """What each prompt asks, for the prediction log (monitor compares it with the training
    prompts): a conversation's last user turn; a completion's prompt as sent."""
    if not chat:
        return prompts
    return [next((m.text() for m in reversed(parsed.messages) if m.role == "user"), parsed.messages[-1].text())]


def _response(found: list[Completion], n: int, model_id: str, chat: bool) -> dict[str, Any]:
    prompt_tokens = sum(c.prompt_tokens for c in found[::n])  # each prompt once, however many choices it has
    choices = [({"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
                if chat else {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None})
               for i, c in enumerate(found)]  # fmt: skip
    completion_tokens = sum(c.completion_tokens for c in found)
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model_id, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}  # fmt: skip


async def _events(gate: Gate, prompt: str, sampling: Sampling, model_id: str, chat: bool, asked: str):
    """Server-sent events: one chunk per piece of text, a last chunk with the finish reason,
    then ``[DONE]``; the whole completion goes to the prediction log."""
    loop = asyncio.get_running_loop()
    predictor = gate.predictor
    streamer = predictor.scorer.stream(predictor.model, predictor.tokenizer, prompt, sampling,
                                       lambda work: loop.run_in_executor(gate.executor, work))  # fmt: skip
    ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())

    def chunk(piece: str | None, finish: str | None = None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        body = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": model_id, "choices": [choice]}  # fmt: skip
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    if chat:
        yield chunk(None, first=True)
    text, stopped, finished = "", False, object()
    while True:
        piece = await loop.run_in_executor(None, next, iter(streamer), finished)
        if piece is finished:
            break
        if stopped or not piece:
            continue
        ends = [(text + piece).find(s) for s in sampling.stop if s in text + piece]
        if ends:  # a stop string: send up to it, then let the generation run out unread
            piece, stopped = (text + piece)[: min(ends)][len(text) :], True
        if not text:
            piece = piece.lstrip()
        text += piece
        if piece:
            yield chunk(piece)
    reason = (
        "stop"
        if stopped
        else "length"
        if len(predictor.tokenizer(text)["input_ids"]) >= sampling.max_new_tokens
        else "stop"
    )
    gate.log_rows([asked], [{"prompt": asked, "completion": text}])
    yield chunk(None, finish=reason)
    yield "data: [DONE]\n\n"
