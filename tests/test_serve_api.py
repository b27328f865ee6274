"""The OpenAI-compatible API, driven by the official `openai` client against a running server."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time

import httpx
import openai
import pytest
from PIL import Image

from llavakit.conversation.templates import Message
from llavakit.serve.api import ServeConfig, create_app
from llavakit.serve.batch import generate_rows
from llavakit.serve.cli import BackgroundServer
from llavakit.serve.engine import EngineConfig
from llavakit.serve.image_input import ImagePolicy
from llavakit.serve.prompts import PromptEncoder
from llavakit.serve.rows import GenParams, Row
from llavakit.serve.schema import Limits

MODEL = "tiny-random"


def png_bytes(size=(40, 30), colour=(0, 200, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def data_url(raw: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def image_message(url: str, text="What is in the image?") -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}


@contextlib.contextmanager
def running(model, **overrides):
    config = ServeConfig(model_id=MODEL, max_body_bytes=overrides.pop("max_body_bytes", 2 * 1024 * 1024),
                         limits=overrides.pop("limits", Limits(max_tokens_cap=2000, default_max_tokens=16, max_images=2)),
                         images=overrides.pop("images", ImagePolicy()),
                         engine=overrides.pop("engine", EngineConfig()), **overrides)
    with BackgroundServer(create_app(model, config)) as srv:
        yield srv


def client(srv, key="none") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=120)


def stats(srv) -> dict:
    return httpx.get(srv.url + "/health").json()["engine"]


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tiny_model):
    with running(tiny_model) as srv:
        yield srv


def expected(model, messages, max_new_tokens, images=()):
    ids = PromptEncoder(model).encode(messages)
    pixels = model.preprocess(list(images)) if images else None
    return generate_rows(model, [Row(ids, pixels, GenParams(max_new_tokens))])[0]


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client(server).models.retrieve(MODEL).id == MODEL
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["vision"] is True


def test_plain_text_answer_is_the_models_answer(server, tiny_model):
    resp = client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=9, temperature=0)
    want = expected(tiny_model, [Message("user", "Hello there")], 9)
    assert resp.choices[0].message.content == want.text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == want.prompt_tokens and resp.usage.completion_tokens == 9
    assert resp.usage.total_tokens == want.prompt_tokens + 9


def test_image_part_goes_through_the_vision_tower(server, tiny_model):
    raw = png_bytes()
    resp = client(server).chat.completions.create(
        model=MODEL, messages=[image_message(data_url(raw))], max_tokens=7, temperature=0)
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    # the client sent text, then image; the server places it first, as training does
    want = expected(tiny_model, [Message("user", "<image>\nWhat is in the image?")], 7, [img])
    assert resp.choices[0].message.content == want.text
    assert resp.usage.prompt_tokens == want.prompt_tokens  # includes the image's 16 token positions


def test_image_placement_keep_uses_the_clients_order(tiny_model):
    raw = png_bytes()
    with running(tiny_model, image_placement="keep") as srv:
        resp = client(srv).chat.completions.create(
            model=MODEL, messages=[image_message(data_url(raw))], max_tokens=7, temperature=0)
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    want = expected(tiny_model, [Message("user", "What is in the image?\n<image>")], 7, [img])
    assert resp.choices[0].message.content == want.text


def test_system_and_multi_turn_messages(server, tiny_model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again"}]
    resp = client(server).chat.completions.create(model=MODEL, messages=messages, max_tokens=5, temperature=0)
    turns = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Again")]
    ids = PromptEncoder(tiny_model).encode(turns, "Be brief.")
    assert resp.usage.prompt_tokens == len(ids)
    assert resp.choices[0].message.content == generate_rows(tiny_model, [Row(ids, None, GenParams(5))])[0].text


def test_streaming_adds_up_to_the_plain_answer(server):
    c = client(server)
    kwargs = dict(model=MODEL, messages=[image_message(data_url(png_bytes()))], max_tokens=12, temperature=0)
    plain = c.chat.completions.create(**kwargs)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices


def test_stream_ends_with_done_marker(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


BIG = "A" * (3 * 1024 * 1024)
BAD_REQUESTS = {
    "malformed JSON": (b'{"model": "tiny-random", "messages": [', 400, "not valid JSON"),
    "bad base64": ({"messages": [image_message("data:image/png;base64,@@not-base64@@")]}, 400, "invalid base64"),
    "not an image": ({"messages": [image_message(data_url(b"these bytes are no picture"))]}, 400, "not an image"),
    "too many images": ({"messages": [image_message(data_url(png_bytes()))] * 3}, 400, "too many images"),
    "unsupported part": ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
                         400, "unsupported content part type 'input_audio'"),
    "unknown model": ({"model": "gpt-9"}, 404, "'gpt-9' does not exist"),
    "too large body": ({"messages": [{"role": "user", "content": BIG}]}, 413, "at most"),
    "max_tokens over cap": ({"max_tokens": 5000}, 400, "at most 2000"),
    "image placeholder in text": ({"messages": [{"role": "user", "content": "look <image>"}]}, 400, "placeholder"),
    "remote URL refused": ({"messages": [image_message("http://169.254.169.254/x.png")]}, 400, "--allow-remote-images"),
    "local file refused": ({"messages": [image_message("/etc/passwd")]}, 400, "--allow-local-files"),
    "last turn not user": ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                           400, "last message"),
    "unsupported parameter": ({"n": 3}, 400, "n=3 is not supported"),
    "non-image data URL": ({"messages": [image_message("data:text/plain;base64,aGk=")]}, 400, "not image/*"),
    "seed out of range": ({"seed": 2**64}, 400, "seed must be an integer between 0 and"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_4xx_with_a_useful_message_and_the_server_keeps_serving(server, case):
    payload, status, needle = BAD_REQUESTS[case]
    if isinstance(payload, dict):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0,
                **payload}
        resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    else:
        resp = httpx.post(server.url + "/v1/chat/completions", content=payload,
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert needle in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    ok = client(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                                temperature=0)
    assert ok.usage.completion_tokens == 2


def test_openai_client_raises_typed_errors(server):
    c = client(server)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="too many images"):
        c.chat.completions.create(model=MODEL, messages=[image_message(data_url(png_bytes()))] * 3)


def test_concurrent_requests_are_batched(tiny_model):
    with running(tiny_model, engine=EngineConfig(max_batch_size=8, batch_window_ms=300)) as srv:
        c = client(srv)
        results: list = [None] * 6

        def ask(i):
            results[i] = c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=5, temperature=0)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(r is not None and r.usage.completion_tokens == 5 for r in results)
        engine = stats(srv)
        assert engine["largest_batch"] > 1 and engine["batches"] < 6


def test_client_disconnect_cancels_generation(tiny_model):
    with running(tiny_model) as srv:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1500,
                "stream": True, "temperature": 0}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60) as resp:
            lines = resp.iter_lines()
            received = 0
            while received < 3:
                line = next(lines)
                received += '"content"' in line and '"role"' not in line
            # generated text is arriving and the request is running; now hang up
            assert stats(srv).get("finish_cancelled", 0) == 0 and stats(srv)["running"] == 1
        wait_for(lambda: stats(srv).get("finish_cancelled", 0) == 1)
        assert 3 <= stats(srv)["completion_tokens"] < 1500
        ok = client(srv).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                                temperature=0)
        assert ok.choices[0].finish_reason == "length"


def test_full_queue_answers_429_with_retry_after(tiny_model):
    with running(tiny_model, engine=EngineConfig(max_batch_size=1, batch_window_ms=0, max_queue=1, max_cohorts=1)) as srv:
        long_body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1500,
                     "stream": True, "temperature": 0}  # greedy: no early end-of-sequence
        short = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=long_body, timeout=60) as resp:
            lines = resp.iter_lines()  # keep the iterator: dropping it would close the stream
            next(lines)
            wait_for(lambda: stats(srv)["running"] == 1)
            waiting = threading.Thread(target=httpx.post, args=(srv.url + "/v1/chat/completions",),
                                       kwargs={"json": short, "timeout": 120})
            waiting.start()
            wait_for(lambda: stats(srv)["queued"] == 1)
            refused = httpx.post(srv.url + "/v1/chat/completions", json=short, timeout=60)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        waiting.join(120)
        assert stats(srv)["finish_length"] >= 1


def test_api_key_is_required_when_set(tiny_model):
    with running(tiny_model, api_key="s3cret") as srv:
        msg = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.AuthenticationError):
            client(srv, "wrong").chat.completions.create(model=MODEL, messages=msg, max_tokens=2)
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        assert client(srv, "s3cret").chat.completions.create(model=MODEL, messages=msg, max_tokens=2).usage
        assert httpx.get(srv.url + "/health").status_code == 200


def test_local_files_only_inside_the_allowed_directory(tiny_model, tmp_path):
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "ok.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (allowed / "escape.png").symlink_to(tmp_path / "secret.png")
    with running(tiny_model, images=ImagePolicy(local_root=allowed)) as srv:
        c = client(srv)
        for url in (str(allowed / "ok.png"), "ok.png", f"file://{allowed / 'ok.png'}"):
            assert c.chat.completions.create(model=MODEL, messages=[image_message(url)], max_tokens=2).usage
        for url in (str(tmp_path / "secret.png"), "../secret.png", str(allowed / "escape.png")):
            with pytest.raises(openai.BadRequestError, match="outside the directory"):
                c.chat.completions.create(model=MODEL, messages=[image_message(url)], max_tokens=2)


def test_remote_images_when_allowed(tiny_model):
    from fastapi import FastAPI
    from fastapi.responses import Response

    images = FastAPI()
    images.get("/cat.png")(lambda: Response(png_bytes(), media_type="image/png"))
    with BackgroundServer(images) as origin, running(
            tiny_model, images=ImagePolicy(allow_remote=True, allow_private_hosts=True)) as srv:
        resp = client(srv).chat.completions.create(
            model=MODEL, messages=[image_message(origin.url + "/cat.png")], max_tokens=2, temperature=0)
        assert resp.usage.completion_tokens == 2
        with pytest.raises(openai.BadRequestError, match="HTTP 404"):
            client(srv).chat.completions.create(model=MODEL, messages=[image_message(origin.url + "/no.png")])


def test_remote_images_from_private_addresses_are_refused_even_after_a_redirect(tiny_model):
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse, Response

    images = FastAPI()
    images.get("/cat.png")(lambda: Response(png_bytes(), media_type="image/png"))
    with BackgroundServer(images) as origin, running(tiny_model, images=ImagePolicy(allow_remote=True)) as srv:
        for url in (origin.url + "/cat.png", "http://169.254.169.254/latest/meta-data", "http://[::1]:1/x.png"):
            with pytest.raises(openai.BadRequestError, match="non-public address"):
                client(srv).chat.completions.create(model=MODEL, messages=[image_message(url)], max_tokens=2)
    # a redirect is checked like the first hop: a permitted origin that redirects to a private one
    hop = FastAPI()
    with BackgroundServer(images) as inner:
        hop.get("/r.png")(lambda: RedirectResponse(inner.url + "/cat.png"))
        with BackgroundServer(hop) as outer, running(
                tiny_model, images=ImagePolicy(allow_remote=True, allow_private_hosts=True, max_redirects=1)) as srv:
            ok = client(srv).chat.completions.create(model=MODEL, messages=[image_message(outer.url + "/r.png")],
                                                     max_tokens=2, temperature=0)
            assert ok.usage.completion_tokens == 2  # followed by hand, one hop
        with BackgroundServer(hop) as outer, running(
                tiny_model, images=ImagePolicy(allow_remote=True, allow_private_hosts=True, max_redirects=0)) as srv:
            with pytest.raises(openai.BadRequestError, match="more than 0 redirects"):
                client(srv).chat.completions.create(model=MODEL, messages=[image_message(outer.url + "/r.png")])


def test_unusable_local_paths_are_400_not_500(tiny_model, tmp_path):
    with running(tiny_model, images=ImagePolicy(local_root=tmp_path)) as srv:
        for url in ("a\x00b.png", "x" * 5000 + ".png"):
            with pytest.raises(openai.BadRequestError, match="not a readable file path"):
                client(srv).chat.completions.create(model=MODEL, messages=[image_message(url)], max_tokens=2)
        assert client(srv).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=2).usage


def test_image_pixel_limit(tiny_model):
    with running(tiny_model, images=ImagePolicy(max_pixels=100 * 100)) as srv:
        with pytest.raises(openai.BadRequestError, match="101x100 = 10100 pixels, over the limit of 10000"):
            client(srv).chat.completions.create(
                model=MODEL, messages=[image_message(data_url(png_bytes((101, 100))))], max_tokens=2)


def test_abandoned_plain_request_is_cancelled(tiny_model):
    import socket

    with running(tiny_model) as srv:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1500,
                           "temperature": 0}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {srv.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sock = socket.create_connection((srv.host, srv.port))
        sock.sendall(head + body)
        wait_for(lambda: stats(srv)["running"] == 1)
        sock.close()  # the client gives up before the answer
        wait_for(lambda: stats(srv).get("finish_cancelled", 0) == 1)
        assert stats(srv)["completion_tokens"] < 1500
