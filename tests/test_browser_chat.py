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
