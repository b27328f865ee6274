"""From a request body to an engine row, and from the engine's events to OpenAI's response shapes.

:class:`RequestService` validates (:mod:`llavakit.serve.schema`), fetches and decodes images,
tokenizes (chat: the model's template; completions: the raw prompt), checks the context length and
submits to the :class:`~llavakit.serve.engine.Engine`. :class:`Shape` is what differs between
``chat.completion`` and ``text_completion`` bodies and stream chunks; the API's ``complete`` and
``stream`` handle both with it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from llavakit.errors import LlavakitError
from llavakit.serve.engine import Engine, EngineClosed, QueueFull
from llavakit.serve.errors import ApiError, bad
from llavakit.serve.image_input import decode_image, fetch_bytes
from llavakit.serve.models import accepts_images
from llavakit.serve.prompts import DEFAULT, PromptEncoder
from llavakit.serve.rows import Row, RowResult
from llavakit.serve.schema import ChatRequest, CompletionRequest, parse_chat_request, parse_completion_request


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes — by header or while reading —
    and (408) a body not complete within ``timeout`` seconds (a client that sends a byte and stalls)."""
    if timeout is not None:
        try:
            return await asyncio.wait_for(read_body(request, limit), timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout") from None
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad(f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"the request body is {declared} bytes; this server accepts at most {limit}",
                           code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body exceeds this server's limit of {limit} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class UploadGate:
    """At most ``per_client`` request bodies being read at once from one client address (``None`` or 0:
    no limit). One client that opens many uploads and stalls them gets 429 past its share, instead of
    holding connections and memory until each body's deadline. Behind a reverse proxy every client
    has the proxy's address: raise the limit there. Used from the event loop only, so no lock."""

    per_client: int | None = 64
    open: Counter = field(default_factory=Counter)

    @contextmanager
    def upload(self, client: str) -> Iterator[None]:
        if self.per_client and self.open[client] >= self.per_client:
            raise ApiError(429, f"{client} already has {self.open[client]} request bodies arriving; this server "
                                f"reads at most {self.per_client} at once per client", type="rate_limit_error",
                           code="too_many_uploads", headers={"Retry-After": "1"})
        self.open[client] += 1
        try:
            yield
        finally:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]


@dataclass(frozen=True)
class Shape:
    """What a response body and its stream chunks look like for one endpoint."""

    prefix: str  # of the id
    obj: str
    chunk_obj: str
    choice: Callable[[str, str], dict]  # (text, finish_reason) → the full choice
    delta: Callable[[str], dict]  # new text → a chunk's choice
    last: Callable[[str], dict]  # finish_reason → the final chunk's choice
    first: dict | None  # the opening chunk's choice (chat: the role), or None


CHAT = Shape(
    "chatcmpl", "chat.completion", "chat.completion.chunk",
    lambda text, reason: {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                          "logprobs": None},
    lambda text: {"index": 0, "delta": {"content": text}, "finish_reason": None},
    lambda reason: {"index": 0, "delta": {}, "finish_reason": reason},
    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
)
TEXT = Shape(
    "cmpl", "text_completion", "text_completion",
    lambda text, reason: {"index": 0, "text": text, "logprobs": None, "finish_reason": reason},
    lambda text: {"index": 0, "text": text, "logprobs": None, "finish_reason": None},
    lambda reason: {"index": 0, "text": "", "logprobs": None, "finish_reason": reason},
    None,
)


class RequestService:
    """Turns a validated request into an engine row; submits it; wraps results in envelopes."""

    def __init__(self, model, config, engine: Engine):
        self.model, self.config, self.engine = model, config, engine
        self.prompts = PromptEncoder(model)
        self.vocab_size = getattr(getattr(model.language_model, "config", None), "vocab_size", None)

    def _check_context(self, ids: list[int], max_new_tokens: int, param: str) -> None:
        try:
            self.prompts.check_context(ids, max_new_tokens, budget="max_tokens")
        except LlavakitError as exc:
            raise bad(str(exc), param, "context_length_exceeded") from None

    def _check_text_size(self, chars: int, param: str) -> None:
        try:
            self.prompts.check_text_size(chars)
        except LlavakitError as exc:
            raise bad(str(exc), param, "context_length_exceeded") from None

    def _check_model(self, name: str) -> None:
        if name != self.config.model_id:
            raise ApiError(404, f"model {name!r} does not exist here; this server serves "
                           f"{self.config.model_id!r} (GET /v1/models)", param="model", code="model_not_found")

    def build_row(self, req: ChatRequest, blobs: list[bytes]) -> Row:  # runs in a worker thread (CPU)
        self._check_text_size(sum(len(t.content) for t in req.turns) + len(req.system or ""), "messages")
        pad = getattr(getattr(getattr(self.model, "config", None), "vision", None), "image_mode", None) == "pad"
        images = [decode_image(b, p.param, self.config.images.max_pixels, pad) for b, p in zip(blobs, req.images)]
        pixels = self.model.preprocess(images) if images else None
        try:
            ids = self.prompts.encode(req.turns, DEFAULT if req.system is None else req.system)
        except LlavakitError as exc:
            raise bad(f"messages: {exc}", "messages") from None
        self._check_context(ids, req.params.max_new_tokens, "messages")
        return Row(ids, pixels, req.params)

    def build_completion_row(self, req: CompletionRequest) -> tuple[Row, str]:  # worker thread
        """The row and the echo text (the prompt as text when ``echo``, else "")."""
        if isinstance(req.prompt, str):
            self._check_text_size(len(req.prompt), "prompt")
            ids = self.prompts.encode_text(req.prompt)
        else:
            ids = list(req.prompt)
        image_id = getattr(self.model.processor, "image_token_id", None)
        if image_id is not None and image_id in ids:
            raise bad(f"prompt: holds the image placeholder {self.prompts.image_token} (id {image_id}); completions "
                      "take no images — use /v1/chat/completions with image_url parts", "prompt")
        if self.vocab_size and max(ids) >= self.vocab_size:
            raise bad(f"prompt: token id {max(ids)} is outside the vocabulary (size {self.vocab_size})", "prompt")
        self._check_context(ids, req.params.max_new_tokens, "prompt")
        echo = (req.prompt if isinstance(req.prompt, str) else self.prompts.decode(ids)) if req.echo else ""
        return Row(ids, None, req.params, template=False), echo

    async def prepare(self, raw: bytes) -> tuple[ChatRequest, Row]:
        req = parse_chat_request(raw, self.config.limits, self.prompts.image_token, self.config.image_placement)
        self._check_model(req.model)
        if req.images and not accepts_images(self.model):
            raise bad(f"model {self.config.model_id!r} is a text-only LLM: it does not accept image_url parts",
                      req.images[0].param, "images_not_supported")
        blobs = [await fetch_bytes(part, self.config.images) for part in req.images]
        return req, await run_in_threadpool(self.build_row, req, blobs)

    async def prepare_completion(self, raw: bytes) -> tuple[CompletionRequest, Row, str]:
        req = parse_completion_request(raw, self.config.limits)
        self._check_model(req.model)
        row, echo = await run_in_threadpool(self.build_completion_row, req)
        return req, row, echo

    def submit(self, row: Row) -> tuple[asyncio.Queue, object]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def listener(kind: str, value) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        try:
            handle = self.engine.submit(row, listener)
        except QueueFull as exc:
            raise ApiError(429, str(exc), type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        except EngineClosed as exc:
            raise ApiError(503, str(exc), type="server_error", code="shutting_down") from None
        return events, handle

    def envelope(self, cid: str, created: int, obj: str, choices: list, usage: RowResult | None = None) -> dict:
        out = {"id": cid, "object": obj, "created": created, "model": self.config.model_id, "choices": choices}
        if usage is not None:
            out["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.prompt_tokens + usage.completion_tokens}
        return out


def generation_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EngineClosed):
        return ApiError(503, str(exc), type="server_error", code="shutting_down")
    if isinstance(exc, LlavakitError):
        return bad(str(exc))
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


def ignored_header(ignored: list[str]) -> dict:
    """The response header naming parameters the request sent that this server accepts and ignores."""
    return {"X-Llavakit-Ignored-Params": ",".join(ignored)} if ignored else {}
