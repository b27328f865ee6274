"""The server against careless and hostile clients: every case is a 4xx naming the problem, and the
server keeps serving (keep-alive connections stay usable)."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from llavakit.serve.engine import EngineConfig
from tests.test_serve_api import MODEL, running

HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def server(tiny_model):
    with running(tiny_model, body_timeout=1.0, allowed_origins=("http://localhost:3000",),
                 engine=EngineConfig(max_queue=2)) as srv:
        yield srv


def post(client: httpx.Client, srv, content: bytes | str, **headers) -> httpx.Response:
    return client.post(srv.url + "/v1/chat/completions", content=content,
                       headers={"Content-Type": "application/json", **headers}, timeout=60)


@pytest.mark.parametrize("name, body, needle", [
    ("nested 100k deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("lone surrogate", '{"model": "tiny-random", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "lone UTF-16 surrogate"),
    ("5000-digit max_tokens", '{"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], '
     '"max_tokens": ' + "9" * 5000 + "}", "an integer of 5000 digits; at most 100"),
])
def test_malformed_bodies_are_400_and_the_connection_stays_usable(server, name, body, needle):
    with httpx.Client() as client:
        resp = post(client, server, body)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]  # OpenAI's error shape
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert needle in error["message"] and error["code"] == "invalid_json"
        again = post(client, server, __import__("json").dumps(HELLO))
        assert again.status_code == 200
        local = [r.extensions["network_stream"].get_extra_info("client_addr") for r in (resp, again)]
        assert local[0] == local[1]  # the same keep-alive connection, not a new one


def _png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_a_thin_image_is_not_padded_into_a_huge_square(server):
    body = {**HELLO, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _png(20000, 1)}}, {"type": "text", "text": "hi"}]}]}
    resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "image_too_large"
    assert "pads it to a 20000-pixel square" in resp.json()["error"]["message"]


def test_a_huge_prompt_is_refused_before_tokenizing(server):
    body = {**HELLO, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    assert "2000000 characters" in resp.json()["error"]["message"]


def test_stalled_bodies_time_out_and_hold_no_slot(server):
    stalled = [_stall(server.url) for _ in range(4)]  # more than max_queue (2): each would otherwise hold a slot
    try:
        time.sleep(0.3)  # the four are being read by now (the body deadline is 1 s)
        assert httpx.post(server.url + "/v1/chat/completions", json=HELLO, timeout=60).status_code == 200
        for s in stalled:
            reply = _reply(s)
            assert reply.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in reply
    finally:
        for s in stalled:
            s.close()


def _stall(url: str):
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{")
    return s


def _reply(s: socket.socket) -> str:
    s.settimeout(30)
    reply = ""
    while "}}" not in reply:  # headers and body may arrive in separate packets
        piece = s.recv(4096).decode()
        if not piece:
            break
        reply += piece
    return reply


def test_one_client_gets_only_its_share_of_uploads(tiny_model):
    with running(tiny_model, body_timeout=1.0, max_uploads_per_client=2) as srv:
        stalled = [_stall(srv.url) for _ in range(2)]
        try:
            time.sleep(0.3)  # both bodies are being read
            third = httpx.post(srv.url + "/v1/chat/completions", json=HELLO, timeout=60)
            assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_uploads"
            assert third.json()["error"]["type"] == "rate_limit_error" and third.headers["Retry-After"] == "1"
            assert "127.0.0.1 already has 2 request bodies arriving" in third.json()["error"]["message"]
            assert all(_reply(s).startswith("HTTP/1.1 408") for s in stalled)
        finally:
            for s in stalled:
                s.close()
        # the deadline gave the share back
        assert httpx.post(srv.url + "/v1/chat/completions", json=HELLO, timeout=60).status_code == 200


def test_cross_site_posts_are_refused_by_origin(server):
    evil = httpx.post(server.url + "/v1/chat/completions", content='{"model": "x"}',
                      headers={"Origin": "http://evil.example", "Content-Type": "text/plain"}, timeout=60)
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "origin_forbidden"
    own = server.url  # the page served by this server
    assert httpx.post(server.url + "/v1/chat/completions", json=HELLO, headers={"Origin": own},
                      timeout=60).status_code == 200
    assert httpx.post(server.url + "/v1/chat/completions", json=HELLO, headers={"Origin": "http://localhost:3000"},
                      timeout=60).status_code == 200


@pytest.mark.parametrize("args, needle", [
    (["--port", "99999"], "--port must be between 1 and 65535, got 99999"),
    (["--body-timeout", "0"], "--body-timeout must be > 0, got 0.0"),
    (["--max-uploads-per-client", "-1"], "--max-uploads-per-client must be >= 0 (0: no limit), got -1"),
])
def test_serve_options_are_checked_before_the_model_loads(args, needle):
    proc = subprocess.run([sys.executable, "-m", "llavakit", "serve", "tiny-random", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"llavakit serve: error: {needle}"]


def test_a_loopback_server_answers_only_for_its_own_host_names(server):
    rebound = httpx.post(server.url + "/v1/chat/completions", json=HELLO, timeout=60,
                         headers={"Host": "attacker.example:8000", "Origin": "http://attacker.example:8000"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_forbidden"
    port = server.url.rsplit(":", 1)[1]
    assert httpx.post(server.url + "/v1/chat/completions", json=HELLO, timeout=60,
                      headers={"Host": f"localhost:{port}"}).status_code == 200


def test_an_allowed_origin_gets_cors_answers(server):
    pre = httpx.options(server.url + "/v1/chat/completions", timeout=60, headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_an_upload_limit_of_zero_or_none_means_no_limit():
    from llavakit.serve.errors import ApiError
    from llavakit.serve.requests import UploadGate

    for unlimited in (UploadGate(0), UploadGate(None)):
        with unlimited.upload("a"), unlimited.upload("a"), unlimited.upload("a"):
            assert unlimited.open["a"] == 3
        assert not unlimited.open  # every count given back
    one = UploadGate(1)
    with one.upload("a"), one.upload("b"):  # a share per address
        with pytest.raises(ApiError, match="a already has 1 request bodies arriving"):
            with one.upload("a"):
                pass
    assert not one.open
