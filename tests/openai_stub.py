"""A real OpenAI-compatible HTTP server for tests, on 127.0.0.1 and a free port, in a thread.

    with OpenAIStub(reply=lambda messages: "Hello.", latency=0.1) as stub:
        client = ChatClient(LLMConfig(model="stub", base_url=stub.base_url))
        ...
        stub.requests  # log: [{"path", "body", "headers", "status", "time"}, ...]

Behaviour (attributes may be changed while it runs):

- ``reply(messages) -> str``: the assistant text (default: "Stub reply to: <last user text>");
- ``latency``: seconds to wait before answering each request;
- ``fail_first`` / ``fail_status`` / ``retry_after``: the first N chat requests get that HTTP status
  (default 429), optionally with a ``Retry-After`` header;
- ``hang_first`` / ``hang_seconds``: the first N chat requests (after the failing ones) wait that
  long before answering (longer than a client's timeout);
- ``mode``: ``ok``; ``garbage`` (200 with a body that is not JSON); ``empty`` (empty content);
  ``no_choices`` (an empty ``choices`` list); ``wrong_shape`` (JSON without ``choices``);
- ``echo_key``: failure bodies quote the request's bearer key, in full and masked;
- ``finish_reason``: what each choice reports (``stop``; ``length`` to simulate truncation);
- ``usage``: whether replies carry token usage (whitespace-split word counts).

``max_in_flight`` records the most chat requests answered at once (to check concurrency limits).

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``. Reused by the eval tests.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def default_reply(messages: list[dict]) -> str:
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"Stub reply to: {str(last)[:60]}"


class OpenAIStub:
    def __init__(self, reply: Callable[[list[dict]], str] | None = None, *, latency: float = 0.0,
                 fail_first: int = 0, fail_status: int = 429, retry_after: float | None = None,
                 hang_first: int = 0, hang_seconds: float = 5.0, mode: str = "ok",
                 finish_reason: str = "stop", usage: bool = True, model: str = "stub-model"):
        self.reply = reply or default_reply
        self.latency = latency
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.hang_first = hang_first
        self.hang_seconds = hang_seconds
        self.mode = mode
        self.finish_reason = finish_reason
        self.usage = usage
        self.model = model
        self.echo_key = False  # failure messages quote the bearer key (to test that clients never keep it)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most chat requests being answered at once
        self._lock = threading.Lock()
        self._chat_calls = 0
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "the stub is not running"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "OpenAIStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # answer in one segment: no Nagle + delayed-ACK stall between headers and body
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    return self._send(400, {"error": {"message": "invalid JSON"}})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with stub._lock:
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    status, payload, headers = stub._answer(body, {k.lower(): v for k, v in self.headers.items()})
                finally:
                    with stub._lock:
                        stub.in_flight -= 1
                self._send(status, payload, headers)

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog (5) drops bursts of concurrent connects
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "OpenAIStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- behaviour --------------------------------------------------------------------------------
    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "chat"]

    def _answer(self, body: dict, request_headers: dict) -> tuple[int, object, dict]:
        with self._lock:
            n = self._chat_calls
            self._chat_calls += 1
        entry = {"path": "chat", "body": body, "headers": request_headers, "time": time.time(), "status": 200}
        with self._lock:
            self.requests.append(entry)
        if n < self.fail_first:
            entry["status"] = self.fail_status
            headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
            message = f"stub failure {n + 1}"
            if self.echo_key:  # like OpenAI's 401: "Incorrect API key provided: sk-ab****yz"
                key = request_headers.get("authorization", "").removeprefix("Bearer ")
                message += f"; key provided: {key} (masked: {key[:6]}{'*' * 12}{key[-4:]})"
            return self.fail_status, {"error": {"message": message, "type": "stub"}}, headers
        if n < self.fail_first + self.hang_first:
            self._stop.wait(self.hang_seconds)
        if self.latency:
            self._stop.wait(self.latency)
        if self.mode == "garbage":
            return 200, b"<html>this is not json {{{", {}
        if self.mode == "wrong_shape":
            return 200, {"hello": "world"}, {}
        messages = body.get("messages", [])
        text = "" if self.mode == "empty" else self.reply(messages)
        choices = [] if self.mode == "no_choices" else [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": self.finish_reason}]
        payload = {"id": f"chatcmpl-stub-{n}", "object": "chat.completion", "created": int(time.time()),
                   "model": body.get("model", self.model), "choices": choices}
        if self.usage:
            prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
            payload["usage"] = {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                                "total_tokens": prompt + len(text.split())}
        return 200, payload, {}


def fake_teacher_reply(messages: list[dict]) -> str:
    """A well-formed answer for each datagen prompt type (recognised by its system message)."""
    system = str(messages[0].get("content", "")) if messages else ""
    first = str(messages[-1].get("content", "")).splitlines()[0] if messages else ""
    if "Write a conversation" in system:
        return f"Question: What does the image show?\nAnswer: {first}\n\nQuestion: Is it colorful?\nAnswer: Yes, it is."
    if "Describe the image in rich detail" in system:
        return f"{first} The shapes are drawn flat and clean, each one separate from the others, on a calm backdrop."
    if "needs reasoning" in system:
        return ("Question: How many shapes would be left if one were removed?\nAnswer: I count the shapes first, "
                "then take one away, so one fewer shape would remain.")
    return default_reply(messages)


def _serve_forever() -> None:
    """``python tests/openai_stub.py --latency 0.1 [--reply teacher]``: prints the base URL, serves
    until stdin closes (so a parent process can run it without sharing its GIL)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--reply", choices=["echo", "teacher"], default="teacher")
    args = parser.parse_args()
    reply = fake_teacher_reply if args.reply == "teacher" else default_reply
    with OpenAIStub(reply=reply, latency=args.latency) as stub:
        print(stub.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    _serve_forever()
