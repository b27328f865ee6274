"""The FastAPI app: OpenAI-compatible chat completions (+ SSE streaming), models, health, web page.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``,
``GET /`` (the web chat page, :mod:`llavakit.serve.static`). Requests are validated by
:mod:`llavakit.serve.schema`, images resolved by :mod:`llavakit.serve.image_input`, and generation
runs on the :class:`~llavakit.serve.engine.Engine`'s worker thread, batched with other requests.
Every refusal is OpenAI's error JSON with a 4xx status; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llavakit.errors import LlavakitError
from llavakit.serve.batch import Row, RowResult
from llavakit.serve.engine import Engine, EngineClosed, EngineConfig, QueueFull
from llavakit.serve.image_input import ImagePolicy, decode_image, fetch_bytes
from llavakit.serve.models import accepts_images
from llavakit.serve.prompts import DEFAULT, PromptEncoder
from llavakit.serve.schema import ApiError, ChatRequest, Limits, bad, parse_chat_request

log = logging.getLogger("llavakit.serve")
STATIC = Path(__file__).parent / "static"


@dataclass
class ServeConfig:
    model_id: str
    api_key: str | None = None  # Bearer token; None: no auth
    max_body_bytes: int = 20 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    images: ImagePolicy = field(default_factory=ImagePolicy)
    engine: EngineConfig = field(default_factory=EngineConfig)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes — by header or while reading."""
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


class ChatService:
    """Turns a validated request into an engine row and the engine's events into OpenAI responses."""

    def __init__(self, model, config: ServeConfig, engine: Engine):
        self.model, self.config, self.engine = model, config, engine
        self.prompts = PromptEncoder(model)
        lm_config = getattr(model.language_model, "config", None)
        self.context_length = getattr(lm_config, "max_position_embeddings", None)

    def build_row(self, req: ChatRequest, blobs: list[bytes]) -> Row:  # runs in a worker thread (CPU)
        images = [decode_image(b, p.param, self.config.images.max_pixels) for b, p in zip(blobs, req.images)]
        pixels = self.model.preprocess(images) if images else None
        try:
            ids = self.prompts.encode(req.turns, DEFAULT if req.system is None else req.system)
        except LlavakitError as exc:
            raise bad(f"messages: {exc}", "messages") from None
        if self.context_length and len(ids) + req.params.max_new_tokens > self.context_length:
            raise bad(f"the prompt is {len(ids)} tokens and max_tokens is {req.params.max_new_tokens}, over the "
                      f"model's context of {self.context_length}", "messages", "context_length_exceeded")
        return Row(ids, pixels, req.params)

    async def prepare(self, raw: bytes) -> tuple[ChatRequest, Row]:
        req = parse_chat_request(raw, self.config.limits, self.prompts.image_token)
        if req.model != self.config.model_id:
            raise ApiError(404, f"model {req.model!r} does not exist here; this server serves "
                           f"{self.config.model_id!r} (GET /v1/models)", param="model", code="model_not_found")
        if req.images and not accepts_images(self.model):
            raise bad(f"model {self.config.model_id!r} is a text-only LLM: it does not accept image_url parts",
                      req.images[0].param, "images_not_supported")
        blobs = [await fetch_bytes(part, self.config.images) for part in req.images]
        return req, await run_in_threadpool(self.build_row, req, blobs)

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


async def _cancel_on_disconnect(request: Request, handle) -> None:
    """Wait for the client to hang up (the body is already read), then cancel its generation."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


async def complete(service: ChatService, request: Request, events: asyncio.Queue, handle) -> Response:
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    try:
        while True:
            kind, value = await events.get()
            if kind == "done":
                if value.finish_reason == "cancelled":
                    return Response(status_code=204)  # the client is gone; nobody reads this
                choice = {"index": 0, "message": {"role": "assistant", "content": value.text},
                          "finish_reason": value.finish_reason, "logprobs": None}
                return JSONResponse(service.envelope(cid, created, "chat.completion", [choice], value))
            if kind == "error":
                raise generation_error(value)
    finally:
        watcher.cancel()
        handle.cancel()  # a no-op when the row already finished


def stream(service: ChatService, req: ChatRequest, events: asyncio.Queue, handle) -> StreamingResponse:
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def sse(choices: list, usage: RowResult | None = None) -> str:
        return "data: " + json.dumps(service.envelope(cid, created, "chat.completion.chunk", choices, usage)) + "\n\n"

    async def body():
        try:
            yield sse([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            while True:
                kind, value = await events.get()
                if kind == "text":
                    yield sse([{"index": 0, "delta": {"content": value}, "finish_reason": None}])
                elif kind == "done":
                    yield sse([{"index": 0, "delta": {}, "finish_reason": value.finish_reason}])
                    if req.include_usage:
                        yield sse([], value)
                    break
                else:
                    yield "data: " + json.dumps(generation_error(value).body()) + "\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:  # normal end, or the client went away (Starlette cancels this generator)
            handle.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def create_app(model, config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The app for ``model``; it owns ``engine`` (made from ``config.engine`` if not given)."""
    engine = engine or Engine(model, config.engine)
    service = ChatService(model, config, engine)

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="llavakit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.service = engine, service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull):
        err = ApiError(429, str(exc), type="rate_limit_error", code="queue_full")
        return JSONResponse(err.body(), status_code=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(bad(f"invalid request: {exc.errors()}").body(), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error for %s %s", request.method, request.url.path)
        err = ApiError(500, f"internal server error: {type(exc).__name__}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    async def authenticate(request: Request) -> None:
        """Bearer-key check for /v1/* (a dependency, so streaming responses are not wrapped)."""
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise ApiError(401, "invalid or missing API key (send the header Authorization: Bearer <key>)",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])

    def model_card() -> dict:
        return {"id": config.model_id, "object": "model", "created": 0, "owned_by": "llavakit",
                "vision": accepts_images(model)}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_id, "vision": accepts_images(model), "engine": engine.stats()}

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != config.model_id:
            raise ApiError(404, f"model {model_id!r} does not exist here; this server serves {config.model_id!r}",
                           param="model", code="model_not_found")
        return model_card()

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        with engine.preparing():  # a batch being collected waits for this request
            raw = await read_body(request, config.max_body_bytes)
            req, row = await service.prepare(raw)
            events, handle = service.submit(row)
        if req.stream:
            return stream(service, req, events, handle)
        return await complete(service, request, events, handle)

    app.include_router(v1)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
