"""`llavakit serve MODEL`: the OpenAI-compatible API and the web chat page on one port.

    llavakit serve nano                                  # http://127.0.0.1:8000  (page at /)
    llavakit serve runs/stage2 --api-key "$KEY" --host 0.0.0.0
    llavakit serve nano --text-only                      # just SmolLM2: a datagen teacher / eval judge
    llavakit serve path/to/model.gguf --text-only        # any transformers dir or GGUF as a text LLM

Clients: ``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY or "none")``. Limits and
security defaults are in docs/serving.md. :class:`BackgroundServer` runs the same app on a thread
(tests, benchmarks, notebooks).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

from llavakit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a preset (nano, tiny-random, ...), a llavakit checkpoint dir, or with "
                        "--text-only also a transformers LM dir or a .gguf file")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port, 1-65535")
    parser.add_argument("--model-id", help="the id clients send as `model` (default: the preset or dir name)")
    parser.add_argument("--text-only", action="store_true", help="serve only the language model (no images)")
    parser.add_argument("--template", help="conversation template for --text-only models (default: chat_template)")
    parser.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: where the model loads)")
    sec = parser.add_argument_group("security")
    sec.add_argument("--api-key", default=os.environ.get("LLAVAKIT_API_KEY"),
                     help="require Authorization: Bearer KEY on /v1/* (default: $LLAVAKIT_API_KEY, else none)")
    sec.add_argument("--allow-origin", metavar="ORIGIN", action="append", default=[],
                     help="a browser origin (e.g. http://localhost:3000) whose pages may call the API; repeatable "
                          "(default: only this server's own page)")
    sec.add_argument("--allow-local-files", metavar="DIR", type=Path,
                     help="let requests name image files inside DIR (default: refused)")
    sec.add_argument("--allow-remote-images", action="store_true",
                     help="let the server fetch http(s) image URLs (default: refused, no SSRF); public hosts only")
    sec.add_argument("--allow-private-image-hosts", action="store_true",
                     help="with --allow-remote-images: also fetch from loopback / private / link-local addresses")
    parser.add_argument("--image-placement", choices=["first", "keep"], default="first",
                        help="where a first question's single image goes: before its text, as in training "
                             "(first), or where the client put it (keep)")
    lim = parser.add_argument_group("limits")
    lim.add_argument("--max-body-mb", type=float, default=20.0, help="request body limit (default 20 MB)")
    lim.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="per image (default 4096x4096)")
    lim.add_argument("--max-images", type=int, default=4, help="image parts per request (default 4)")
    lim.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask for")
    lim.add_argument("--body-timeout", type=float, default=30.0, help="seconds for a request body to arrive")
    lim.add_argument("--max-uploads-per-client", type=int, default=64,
                     help="request bodies read at once from one client address; more get 429 (0: no limit; "
                          "behind a reverse proxy all clients share its address)")
    lim.add_argument("--default-max-tokens", type=int, default=512, help="max_tokens when a request gives none")
    eng = parser.add_argument_group("batching")
    eng.add_argument("--max-batch-size", type=int, default=16, help="requests per shared generate call")
    eng.add_argument("--batch-window-ms", type=float, default=20.0,
                     help="keep collecting a batch while requests arrive less than this apart (default 20 ms)")
    eng.add_argument("--max-wait-ms", type=float, default=250.0,
                     help="but start a batch at most this long after its first request (default 250 ms)")
    eng.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429 (default 64)")
    eng.add_argument("--max-cohorts", type=int, default=4,
                     help="batches generating at once, taking turns: arrivals never wait for a long batch (default 4)")
    eng.add_argument("--slice-ms", type=float, default=100.0,
                     help="a batch's turn while another one is active or waiting (default 100 ms)")
    eng.add_argument("--no-join-running", action="store_true",
                     help="arrivals never join a running batch (they form their own and take turns)")
    eng.add_argument("--join-gap-ms", type=float, default=0.0,
                     help="at least this long between two joins into a running batch: arrivals meanwhile are "
                          "prefilled and merged together (default 0: each joins at the next step)")
    eng.add_argument("--trim-heap-s", type=float, default=0.0,
                     help="hand freed heap memory back to the OS (glibc malloc_trim) at most this often, in "
                          "seconds; 0: never")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def config_from_args(args, model_id: str):
    from llavakit.serve.api import ServeConfig
    from llavakit.serve.engine import EngineConfig
    from llavakit.serve.image_input import ImagePolicy
    from llavakit.serve.schema import Limits

    for name in ("max_images", "max_tokens_cap", "default_max_tokens", "max_image_pixels"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    if not args.body_timeout > 0:
        raise ConfigError(f"--body-timeout must be > 0, got {args.body_timeout}")
    if args.max_uploads_per_client < 0:
        raise ConfigError(f"--max-uploads-per-client must be >= 0 (0: no limit), got {args.max_uploads_per_client}")
    root = args.allow_local_files
    if root is not None and not root.is_dir():
        raise ConfigError(f"--allow-local-files {root}: not a directory")
    body = int(args.max_body_mb * 1024 * 1024)
    return ServeConfig(
        model_id=model_id,
        api_key=args.api_key or None,
        max_body_bytes=body,
        body_timeout=args.body_timeout,
        max_uploads_per_client=args.max_uploads_per_client or None,
        allowed_origins=tuple(args.allow_origin),
        image_placement=args.image_placement,
        bind_host=args.host,
        limits=Limits(args.max_tokens_cap, min(args.default_max_tokens, args.max_tokens_cap), args.max_images),
        images=ImagePolicy(max_pixels=args.max_image_pixels, max_bytes=body, local_root=root,
                           allow_remote=args.allow_remote_images,
                           allow_private_hosts=args.allow_private_image_hosts),
        engine=EngineConfig(args.max_batch_size, args.batch_window_ms, args.max_queue, args.max_wait_ms,
                            args.max_cohorts, args.slice_ms, not args.no_join_running, args.join_gap_ms,
                            args.trim_heap_s),
    )


def run(args) -> int:
    import uvicorn

    from llavakit.serve.api import create_app
    from llavakit.serve.models import load_servable, model_name

    model_id = args.model_id or model_name(args.model)
    config = config_from_args(args, model_id)  # validate before loading weights
    model = load_servable(args.model, text_only=args.text_only, template=args.template, device=args.device)
    app = create_app(model, config)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print(f"llavakit serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              "port can use the model", file=sys.stderr)
    print(f"llavakit serve: {model_id} at http://{args.host}:{args.port}/  (API base http://{args.host}:"
          f"{args.port}/v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """Run an app with uvicorn on a daemon thread: ``with BackgroundServer(app) as srv: srv.url``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning"):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, name="llavakit-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
