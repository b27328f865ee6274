"""The FastAPI app: OpenAI-compatible chat completions (+ SSE streaming), models, health, web page.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (a raw text prompt, no template,
no images — the path of lmms-eval's and other harnesses' text tasks), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health``, ``GET /`` (the web chat page, :mod:`llavakit.serve.static`).
Requests become engine rows in :mod:`llavakit.serve.requests` (validated by
:mod:`llavakit.serve.schema`, parameters by :mod:`llavakit.serve.params`), and generation runs on
the :class:`~llavakit.serve.engine.Engine`'s worker thread, batched with other requests.
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
from starlette.exceptions import HTTPException as StarletteHTTPException

from llavakit.serve.engine import Engine, EngineConfig, QueueFull
from llavakit.serve.errors import ApiError, bad
from llavakit.serve.image_input import ImagePolicy
from llavakit.serve.models import accepts_images
from llavakit.serve.params import Limits
from llavakit.serve.requests import (CHAT, TEXT, RequestService, Shape, UploadGate, generation_error, ignored_header,
                                     read_body)
from llavakit.serve.rows import RowResult

log = logging.getLogger("llavakit.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = Path(__file__).parent / "static"


@dataclass
class ServeConfig:
    model_id: str
    api_key: str | None = None  # Bearer token; None: no auth
    max_body_bytes: int = 20 * 1024 * 1024
    body_timeout: float = 30.0  # seconds for a whole request body to arrive
    max_uploads_per_client: int | None = 64  # request bodies read at once from one address (None: no limit)
    allowed_origins: tuple[str, ...] = ()  # browser origins besides this server's own (e.g. http://localhost:3000)
    image_placement: str = "first"  # a first turn's single image goes before its text, as in training ("keep": as sent)
    bind_host: str = "127.0.0.1"  # where it listens: on a loopback address, Host must name this machine (DNS rebinding)
    limits: Limits = field(default_factory=Limits)
    images: ImagePolicy = field(default_factory=ImagePolicy)
    engine: EngineConfig = field(default_factory=EngineConfig)


async def _cancel_on_disconnect(request: Request, handle) -> None:
    """Wait for the client to hang up (the body is already read), then cancel its generation."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


async def complete(service: RequestService, request: Request, events: asyncio.Queue, handle, shape: Shape,
                   headers: dict, echo: str = "") -> Response:
    cid, created = f"{shape.prefix}-{uuid.uuid4().hex}", int(time.time())
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    try:
        while True:
            kind, value = await events.get()
            if kind == "done":
                if value.finish_reason == "cancelled":
                    return Response(status_code=204)  # the client is gone; nobody reads this
                choice = shape.choice(echo + value.text, value.finish_reason)
                return JSONResponse(service.envelope(cid, created, shape.obj, [choice], value), headers=headers)
            if kind == "error":
                raise generation_error(value)
    finally:
        watcher.cancel()
        handle.cancel()  # a no-op when the row already finished


def stream(service: RequestService, include_usage: bool, events: asyncio.Queue, handle, shape: Shape,
           headers: dict, echo: str = "") -> StreamingResponse:
    cid, created = f"{shape.prefix}-{uuid.uuid4().hex}", int(time.time())

    def sse(choices: list, usage: RowResult | None = None) -> str:
        return "data: " + json.dumps(service.envelope(cid, created, shape.chunk_obj, choices, usage)) + "\n\n"

    async def body():
        try:
            if shape.first is not None:
                yield sse([shape.first])
            if echo:
                yield sse([shape.delta(echo)])
            while True:
                kind, value = await events.get()
                if kind == "text":
                    yield sse([shape.delta(value)])
                elif kind == "done":
                    yield sse([shape.last(value.finish_reason)])
                    if include_usage:
                        yield sse([], value)
                    break
                else:
                    yield "data: " + json.dumps(generation_error(value).body()) + "\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:  # normal end, or the client went away (Starlette cancels this generator)
            handle.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def create_app(model, config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The app for ``model``; it owns ``engine`` (made from ``config.engine`` if not given)."""
    engine = engine or Engine(model, config.engine)
    service = RequestService(model, config, engine)

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="llavakit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if config.allowed_origins:  # a front-end on another origin: the browser needs CORS answers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
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
        """Origin, then Bearer key, for /v1/* (a dependency, so streaming responses are not wrapped).

        A browser sends ``Origin`` with a cross-site request; one that is neither this server's own
        (same host and port as ``Host``) nor in ``allowed_origins`` is refused (403), key or no key:
        a web page the user visits cannot drive a server on their machine.
        """
        host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
        if config.bind_host in LOOPBACK and host not in LOOPBACK:
            raise ApiError(403, f"Host {host[:100]!r} is not this machine; a server on a loopback address answers "
                           "requests for localhost / 127.0.0.1 only", code="host_forbidden")
        origin = request.headers.get("origin")
        if origin is not None and origin not in config.allowed_origins:
            own = {f"http://{request.headers.get('host', '')}", f"https://{request.headers.get('host', '')}"}
            if origin not in own:
                raise ApiError(403, f"requests from the web origin {origin[:100]} are refused (this server allows "
                               "its own page; start it with --allow-origin ORIGIN to allow another)",
                               code="origin_forbidden")
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
                "vision": accepts_images(model), "max_images": config.limits.max_images}

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

    uploads = UploadGate(config.max_uploads_per_client)

    async def body(request: Request) -> bytes:
        with uploads.upload(request.client.host if request.client else "unknown"):
            return await read_body(request, config.max_body_bytes, config.body_timeout)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        raw = await body(request)  # holds no engine slot
        with engine.preparing():  # a batch being collected waits for this request
            req, row = await service.prepare(raw)
            events, handle = service.submit(row)
        if req.stream:
            return stream(service, req.include_usage, events, handle, CHAT, ignored_header(req.ignored))
        return await complete(service, request, events, handle, CHAT, ignored_header(req.ignored))

    @v1.post("/completions")
    async def completions(request: Request):
        raw = await body(request)
        with engine.preparing():
            req, row, echo = await service.prepare_completion(raw)
            events, handle = service.submit(row)
        if req.stream:
            return stream(service, req.include_usage, events, handle, TEXT, ignored_header(req.ignored), echo)
        return await complete(service, request, events, handle, TEXT, ignored_header(req.ignored), echo)

    app.include_router(v1)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
