"""The web chat page in headless Chromium: upload an image, ask, watch the answer stream in, stop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from llavakit.serve.api import ServeConfig, create_app
from llavakit.serve.cli import BackgroundServer
from llavakit.serve.schema import Limits

CHROMIUM = Path(os.environ.get("LLAVAKIT_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# `bash scripts/setup.sh --dev` installs Debian's chromium, so a missing browser is a failure here,
# not a silent skip; on a machine without it, set LLAVAKIT_SKIP_BROWSER=1 to skip these tests.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(os.environ.get("LLAVAKIT_SKIP_BROWSER") == "1", reason="LLAVAKIT_SKIP_BROWSER=1"),
]


@pytest.fixture(scope="module", autouse=True)
def chromium_present():
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install it (apt-get install chromium, or bash scripts/setup.sh "
                    "--dev) or set LLAVAKIT_SKIP_BROWSER=1 to skip the browser tests")


@pytest.fixture(scope="module")
def server(tiny_model):
    config = ServeConfig(model_id="tiny-random", limits=Limits(max_tokens_cap=4000, default_max_tokens=64))
    with BackgroundServer(create_app(tiny_model, config)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api  # a dev dependency: its absence is a failure, not a skip
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny-random'")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def settings(page, temperature: str, max_tokens: str) -> None:
    if page.get_attribute("details", "open") is None:
        page.click("details summary")
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)


def engine(server) -> dict:
    return httpx.get(server.url + "/health").json()["engine"]


def test_upload_ask_and_see_a_streamed_answer(page, server, tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (64, 48), (250, 120, 0)).save(image)
    page.set_input_files("#image-input", str(image))
    page.wait_for_selector("#preview:not([hidden])")
    settings(page, "0", "40")
    page.fill("#prompt", "What is in the image?")
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    page.wait_for_function("document.querySelector('.msg.assistant:last-child').dataset.state === 'done'",
                           timeout=60_000)
    assert int(answer.get_attribute("data-chunks")) > 1  # arrived in pieces, not at once
    assert len(answer.locator(".text").text_content()) > 0
    assert page.locator(".msg.user img").count() == 1  # the image went with the question
    # multi-turn: the second question carries the first exchange (no image attached again)
    before = engine(server).get("finish_length", 0)
    page.fill("#prompt", "Tell me more.")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant')[1]?.dataset.state === 'done'",
                           timeout=60_000)
    assert page.locator(".msg.assistant").count() == 2 and engine(server)["finish_length"] == before + 1


def test_stop_button_cancels_generation_on_the_server(page, server):
    before = engine(server).get("finish_cancelled", 0)
    settings(page, "0", "1500")  # the tiny model's context is 2048
    page.fill("#prompt", "hello")
    page.click("#send")
    page.wait_for_function("Number(document.querySelector('.msg.assistant:last-child').dataset.chunks) >= 2",
                           timeout=60_000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('.msg.assistant:last-child').dataset.state === 'stopped'")
    deadline = time.monotonic() + 60
    while engine(server).get("finish_cancelled", 0) == before:
        assert time.monotonic() < deadline, "the server did not cancel the generation"
        time.sleep(0.05)
    assert page.is_enabled("#send") and not page.is_enabled("#stop")


def test_errors_are_shown(page, server):
    settings(page, "0", "999999")  # over the server's cap: a 400 the page must show
    page.fill("#prompt", "hi")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert "at most 4000" in page.text_content("#error")
    assert page.locator(".msg.assistant").last.get_attribute("data-state") == "error"


def test_pasting_an_image_attaches_it(page):
    page.evaluate("""async () => {
        const canvas = document.createElement('canvas');
        canvas.width = 20; canvas.height = 10;
        const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
        const data = new DataTransfer();
        data.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data}));
    }""")
    page.wait_for_selector("#preview:not([hidden])")
    assert page.get_attribute("#preview", "src").startswith("data:image/png;base64,")
    page.click("#clear-image")
    assert page.is_hidden("#preview")


def captured(page) -> list[dict]:
    """The JSON bodies of the page's chat requests, in order."""
    import json

    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") and r.method == "POST" else None)
    return bodies


def ask(page, text: str, k: int) -> None:
    """Send ``text`` and wait until the ``k``-th answer (0-based) is done."""
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant')[{k}]?.dataset.state === 'done'",
                           timeout=60_000)


def image_parts(body: dict) -> list[int]:
    """Per message of a request, how many image parts it carries."""
    return [sum(p.get("type") == "image_url" for p in m["content"]) if isinstance(m["content"], list) else 0
            for m in body["messages"]]


def test_six_image_conversation_stays_within_the_image_limit(page, tmp_path):
    bodies = captured(page)
    settings(page, "0", "4")
    for k in range(6):
        path = tmp_path / f"picture{k}.png"
        Image.new("RGB", (32, 24), (40 * k, 100, 200 - 30 * k)).save(path)
        page.set_input_files("#image-input", str(path))
        page.wait_for_selector("#preview:not([hidden])")
        ask(page, f"What is in picture {k}?", k)
    assert page.locator(".msg.assistant[data-state='done']").count() == 6  # no turn failed
    assert page.locator(".msg.user img").count() == 6  # each image stays on its own turn
    assert [sum(image_parts(b)) for b in bodies] == [1, 2, 3, 4, 4, 4]  # the server's limit: 4
    assert image_parts(bodies[-1]) == [0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1]  # the newest four, each on its turn
    assert bodies[-1]["messages"][-1]["content"][0]["type"] == "image_url"  # image first, as in training
    assert "2 earlier images are no longer sent" in page.text_content("#notice")


def _sse(text: str) -> str:
    import json

    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": text[i:i + 25]}, "finish_reason": None}]}
               for i in range(0, len(text), 25)]
    chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
               {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}]
    return "".join("data: " + json.dumps(c) + "\n\n" for c in chunks) + "data: [DONE]\n\n"


def test_markdown_renders_and_markup_in_a_reply_stays_text(page):
    reply = ("**Bold** and `code` and *soft*\n\n- one\n- two\n\n1. first\n\n"
             "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>\n"
             "[click](javascript:window.pwned=3) [site](https://example.org/)\n```\n<b>kept</b>\n```")
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=_sse(reply)))
    ask(page, "hi", 0)
    answer = page.locator(".msg.assistant").last
    assert answer.locator("strong").text_content() == "Bold"
    assert answer.locator("em").text_content() == "soft"
    assert answer.locator("p code").text_content() == "code"
    assert answer.locator("ul li").count() == 2 and answer.locator("ol li").count() == 1
    assert answer.locator("pre code").text_content() == "<b>kept</b>"
    assert answer.locator("img, script, b, iframe").count() == 0  # no element from the reply's markup
    assert '<img src=x onerror="window.pwned=1">' in answer.text_content()  # shown as text
    assert [answer.locator("a").nth(i).get_attribute("href") for i in range(answer.locator("a").count())] == [
        "https://example.org/"]  # a javascript: link stays text
    page.wait_for_timeout(200)
    assert page.evaluate("window.pwned") is None
    assert "7 tokens" in answer.locator(".stats").text_content() and "tok/s" in answer.locator(".stats").text_content()


def test_copy_regenerate_and_edit_the_last_question(page, server):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    bodies = captured(page)
    settings(page, "0", "6")
    ask(page, "first question", 0)
    first = page.evaluate("document.querySelector('.msg.assistant').raw")
    page.click(".msg.assistant .action.copy")
    page.wait_for_function("document.querySelector('.msg.assistant .action.copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == first
    page.click(".action.regenerate")
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 1 && "
                           "document.querySelector('.msg.assistant').dataset.state === 'done'", timeout=60_000)
    assert len(bodies) == 2 and bodies[1]["messages"] == bodies[0]["messages"]  # the same question again
    assert page.evaluate("document.querySelector('.msg.assistant').raw") == first  # greedy: the same answer
    page.click(".msg.user .action.edit")
    assert page.input_value("#prompt") == "first question" and page.locator(".msg").count() == 0
    page.fill("#prompt", "second question")
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg.assistant')?.dataset.state === 'done'", timeout=60_000)
    assert [m["content"] for m in bodies[-1]["messages"]] == ["second question"]


def test_conversation_and_settings_survive_a_reload(page):
    settings(page, "0", "5")
    ask(page, "keep me", 0)
    page.reload()
    page.wait_for_function("document.getElementById('model').textContent === 'tiny-random'")
    assert page.locator(".msg.user .text").first.text_content() == "keep me"
    assert page.locator(".msg.assistant").count() == 1 and page.input_value("#max-tokens") == "5"
    page.click("#new-chat")
    page.reload()
    page.wait_for_function("document.getElementById('model').textContent === 'tiny-random'")
    assert page.locator(".msg").count() == 0


def test_sampling_controls_go_into_the_request(page):
    bodies = captured(page)
    settings(page, "0.7", "4")
    page.fill("#top-p", "0.9")
    page.fill("#seed", "7")
    page.fill("#stop", "END\nSTOP")
    ask(page, "hello", 0)
    body = bodies[-1]
    assert (body["temperature"], body["top_p"], body["seed"], body["stop"]) == (0.7, 0.9, 7, ["END", "STOP"])
    assert body["stream_options"] == {"include_usage": True}


def test_favicon_is_served(server):
    resp = httpx.get(server.url + "/favicon.ico")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("image/svg")
