"""Bad inputs end to end: each case asserts the exact outcome — the exit code or status, a message that
names the input, no traceback, nothing partial left behind. Cases already proven closer to their code
are listed in docs/reliability.md with their tests; this file holds those that cross the CLI or a
network boundary, and the image-file corpus."""

from __future__ import annotations

import asyncio
import http.server
import json
import struct
import threading
import time
import zlib
from contextlib import contextmanager

import pytest
from PIL import Image

from llavakit.cli import main
from llavakit.errors import DataError, LlavakitError
from llavakit.imaging import load_image, read_size


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (no pixel data): what a bomb looks like to a reader."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def one_error_line(capsys, verb: str) -> str:
    """The CLI's stderr: exactly one line, ``llavakit VERB: error: ...``, and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("llavakit train: warning")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"llavakit {verb}: error: "), lines[0]
    return lines[0]


# --- image files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, needle", [
    ("empty.png", b"", "cannot be decoded"),
    ("text.jpg", b"hello, not a picture", "cannot be decoded"),
    ("bomb.png", png_header(30000, 30000), "far over the pixel limit"),
    ("huge.png", png_header(8000, 8000), "is 8000x8000 = 64000000 pixels, over the limit of 16777216"),
])
def test_unreadable_and_oversized_image_files_name_themselves(tmp_path, name, data, needle):
    path = tmp_path / name
    path.write_bytes(data)
    for read in (load_image, read_size):  # decoding, and the header check of `data inspect`
        with pytest.raises(DataError) as info:
            read(path)
        assert f"image {path}" in str(info.value) and needle in str(info.value)


def test_the_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    Image.new("RGB", (300, 2)).save(tmp_path / "thin.png")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an image over the limit"))
    with pytest.raises(DataError, match="thin.png is 300x2: this model pads it to a 300-pixel square"):
        load_image(tmp_path / "thin.png", max_pixels=1000, canvas=True)


def test_a_real_image_with_the_wrong_extension_loads_by_its_content(tmp_path):
    Image.new("RGB", (6, 4), (10, 20, 30)).save(tmp_path / "photo.jpg", format="PNG")
    img = load_image(tmp_path / "photo.jpg")
    assert img.size == (6, 4) and img.getpixel((0, 0)) == (10, 20, 30)  # PNG is lossless: exact pixels


def test_training_refuses_an_image_a_pad_model_would_blow_up(tmp_path):
    from llavakit.data.batching import pixel_image_fn
    from llavakit.imaging import DATA_MAX_PIXELS

    Image.new("RGB", (9000, 1)).save(tmp_path / "thin.png")  # 9000 pixels; padded: 81 million
    assert 9000 ** 2 > DATA_MAX_PIXELS
    with pytest.raises(DataError, match="pads it to a 9000-pixel square, .* raise data.max_image_pixels"):
        pixel_image_fn(lambda images: images, "pad")([tmp_path / "thin.png"])
    assert pixel_image_fn(lambda images: images, "square")([tmp_path / "thin.png"])["pixel_values"][0].size == (9000, 1)
    assert pixel_image_fn(lambda images: images, "pad", max_pixels=0)([tmp_path / "thin.png"])  # 0: no limit


def test_data_inspect_flags_unreadable_and_oversized_images_without_decoding_all(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    Image.new("RGB", (9000, 1)).save(tmp_path / "thin.png")  # 9000 pixels; tiny-random pads it to 81 million
    (tmp_path / "empty.png").write_bytes(b"")
    turn = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": i, "image": f"{name}.png", "conversations": turn}
                                for i, name in (("good", "ok"), ("hollow", "empty"), ("needle", "thin"))]))
    assert main(["data", "inspect", str(data), "--image-folder", str(tmp_path), "--model", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "images: 3 samples checked, 2 missing, unreadable or oversized" in out
    assert "hollow: image" in out and "empty.png cannot be decoded" in out and "good:" not in out
    assert "needle: image" in out and "pads it to a 9000-pixel square, over the limit of 67108864" in out


# --- remote images ----------------------------------------------------------------------------------

class _Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            for _ in range(100):  # a byte every 0.1 s: each read is quick, the whole takes 10 s
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def log_message(self, *args):
        pass


def test_a_trickling_image_host_is_cut_off_by_the_whole_fetch_deadline():
    from llavakit.serve.errors import ApiError
    from llavakit.serve.image_input import ImagePolicy, fetch_bytes
    from llavakit.serve.schema import ImagePart

    with serving(_Trickle) as url:
        policy = ImagePolicy(allow_remote=True, allow_private_hosts=True, remote_timeout=1.0)
        part = ImagePart(url + "/slow.png", "messages[0].content[0]")
        began = time.monotonic()
        with pytest.raises(ApiError) as info:
            asyncio.run(fetch_bytes(part, policy))
        assert time.monotonic() - began < 5
    assert info.value.status == 400 and info.value.code == "image_fetch_failed"
    assert info.value.message == "messages[0].content[0]: fetching the image took longer than 1.0 s"


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://example.com/a", "javascript:alert(1)",
                                 "ws://example.com/a.png"])
def test_unsupported_url_schemes_are_refused_by_name(url):
    from llavakit.serve.errors import ApiError
    from llavakit.serve.image_input import ImagePolicy, fetch_bytes
    from llavakit.serve.schema import ImagePart

    with pytest.raises(ApiError) as info:
        asyncio.run(fetch_bytes(ImagePart(url, "messages[0].content[1]"), ImagePolicy(allow_remote=True)))
    scheme = url.split(":")[0]
    assert info.value.status == 400 and info.value.code == "invalid_image_url"
    assert info.value.message.startswith(f"messages[0].content[1]: unsupported URL scheme {scheme!r}")


# --- CLI: train, datagen, infer, serve ---------------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
    ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
    ("optim.eps=-1", "optim.eps must be > 0"),
    ("optim.weight_decay=-1", "optim.weight_decay >= 0"),
])
def test_train_check_refuses_bad_optimizer_numbers(tmp_path, capsys, override, needle):
    data = tmp_path / "d.json"
    data.write_text("[]")
    code = main(["train", "--recipe", "tiny-stage1", "--check", f"data.path={data}",
                 f"output_dir={tmp_path / 'out'}", override])
    assert code == 2
    assert needle in one_error_line(capsys, "train")
    assert not (tmp_path / "out").exists()


def _coco(tmp_path, bbox) -> tuple:
    captions = {"images": [{"id": 5, "file_name": "5.png", "width": 100, "height": 100}],
                "annotations": [{"id": 1, "image_id": 5, "caption": "A red square."}]}
    instances = {**captions, "categories": [{"id": 1, "name": "square"}],
                 "annotations": [{"id": 77, "image_id": 5, "category_id": 1, "bbox": bbox,
                                  "color": "red", "size": "large"}]}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "instances.json").write_text(json.dumps(instances).replace('"NaN"', "NaN"))
    return tmp_path / "captions.json", tmp_path / "instances.json"


def test_datagen_a_nan_bbox_is_one_line_and_writes_nothing(tmp_path, capsys):
    captions, instances = _coco(tmp_path, [1, 2, "NaN", 4])
    out = tmp_path / "out.json"
    code = main(["datagen", "--captions", str(captions), "--instances", str(instances), "--out", str(out), "--quiet"])
    assert code == 2
    assert "image 5: annotation 77: bbox" in one_error_line(capsys, "datagen")
    assert not out.exists()


class _Teacher(http.server.BaseHTTPRequestHandler):
    """A teacher endpoint that records the model each request names, waits ``delay`` s and fails (500)."""

    delay = 0.0
    models: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.models.append(body.get("model"))
        time.sleep(self.delay)
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def serving(handler):
    """``handler`` on a loopback port for the block; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _datagen(captions, instances, out, url: str, key_env: str) -> list[str]:
    return ["datagen", "--captions", str(captions), "--instances", str(instances), "--out", str(out),
            "--teacher", "openai", "--quiet", "--base-url", url + "/v1", "--api-key-env", key_env,
            "--max-retries", "0", "--concurrency", "1"]


def test_datagen_an_unset_api_key_variable_sends_nothing(tmp_path, capsys, monkeypatch):
    captions, instances = _coco(tmp_path, [1, 2, 30, 40])
    monkeypatch.delenv("LLAVAKIT_TEST_UNSET_KEY", raising=False)
    teacher = type("Teacher", (_Teacher,), {"models": []})
    with serving(teacher) as url:
        code = main([*_datagen(captions, instances, tmp_path / "out.json", url, "LLAVAKIT_TEST_UNSET_KEY"),
                     "--model", "m"])
    assert code == 2
    assert "LLAVAKIT_TEST_UNSET_KEY" in one_error_line(capsys, "datagen")
    assert teacher.models == [] and not (tmp_path / "out.json").exists()


def test_datagen_a_second_run_on_the_same_output_is_refused_and_pays_nothing(tmp_path, capsys, monkeypatch):
    import os
    import subprocess
    import sys

    captions, instances = _coco(tmp_path, [1, 2, 30, 40])
    teacher = type("Teacher", (_Teacher,), {"models": [], "delay": 2.0})  # the first run holds the output meanwhile
    with serving(teacher) as url:
        common = _datagen(captions, instances, tmp_path / "o.json", url, "LLAVAKIT_TEST_KEY")
        first = subprocess.Popen([sys.executable, "-m", "llavakit", *common, "--model", "first"],
                                 env={**os.environ, "LLAVAKIT_TEST_KEY": "k"}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not teacher.models and time.monotonic() < deadline:  # the first run is asking its teacher
                time.sleep(0.1)
            assert teacher.models == ["first"]
            monkeypatch.setenv("LLAVAKIT_TEST_KEY", "k")
            assert main([*common, "--model", "second"]) == 2
            assert "o.json is being written by another run" in one_error_line(capsys, "datagen")
        finally:
            first.kill()
            first.wait()
    assert "second" not in teacher.models


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(images / "red.png")
    (tmp_path / "secret.png").write_bytes((images / "red.png").read_bytes())
    (images / "link.png").symlink_to(tmp_path / "secret.png")
    return images


@pytest.mark.parametrize("question, needle", [
    ({"question_id": "q9", "image": 42, "text": "hi"}, "record 1 (question_id 'q9'): image must be a file path"),
    ({"question_id": "up", "image": "../secret.png", "text": "hi"}, "question up: image '../secret.png' resolves outside"),
    ({"question_id": "abs", "image": "ABS", "text": "hi"}, "question abs: image 'ABS' resolves outside"),
    ({"question_id": "sym", "image": "link.png", "text": "hi"}, "question sym: image 'link.png' resolves outside"),
    ({"question_id": "two", "image": "red.png", "text": "<image> and <image>?"},
     "question two: the text holds 2 <image> placeholders but a question has one image"),
    ({"question_id": "long", "text": "word " * 3000}, "question long: "),
])
def test_infer_bad_questions_name_the_question_and_leave_no_answers(tmp_path, capsys, folder, question, needle):
    if question.get("image") == "ABS":  # an absolute path: known only once tmp_path is
        question = {**question, "image": str(tmp_path / "secret.png")}
        needle = needle.replace("ABS", question["image"])
    qfile, out = tmp_path / "q.jsonl", tmp_path / "answers.jsonl"
    qfile.write_text(json.dumps(question) + "\n")
    code = main(["infer", "tiny-random", "--questions", str(qfile), "--image-folder", str(folder), "--out", str(out),
                 "--max-new-tokens", "2", "--quiet"])
    assert code == 2
    line = one_error_line(capsys, "infer")
    assert needle in line
    if question["question_id"] == "long":
        assert "context" in line
    assert not out.exists() or out.read_text() == ""


def test_serve_takes_its_key_from_the_environment_not_the_command_line(monkeypatch):
    from llavakit.cli import build_parser
    from llavakit.serve.cli import config_from_args

    monkeypatch.setenv("LLAVAKIT_API_KEY", "from-env")
    argv = ["serve", "tiny-random"]
    assert config_from_args(build_parser(argv).parse_args(argv), "m").api_key == "from-env"
    monkeypatch.delenv("LLAVAKIT_API_KEY")
    assert config_from_args(build_parser(argv).parse_args(argv), "m").api_key is None


@pytest.mark.parametrize("text", ["x" * 70_000, "🙂" * 70_000])  # 70 KB and 280 KB of UTF-8
def test_a_prompt_no_context_could_hold_is_refused_before_tokenizing(tiny_model, text):
    from llavakit.serve.api import ServeConfig
    from llavakit.serve.errors import ApiError
    from llavakit.serve.requests import RequestService
    from llavakit.serve.schema import Limits, parse_chat_request
    from llavakit.serve.chat import ChatSession
    from llavakit.serve.rows import GenParams

    assert len(text) > 32 * 2048  # tiny-random's context
    service = RequestService(tiny_model, ServeConfig(model_id="m"), engine=None)
    service.prompts.encode = lambda *a, **k: pytest.fail("tokenized a prompt over the size bound")
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    with pytest.raises(ApiError) as info:
        service.build_row(parse_chat_request(raw, Limits(), service.prompts.image_token, "first"), [])
    assert info.value.code == "context_length_exceeded" and "is 70000 characters" in info.value.message
    chat = ChatSession(tiny_model, GenParams(4))
    chat.prompts.encode = service.prompts.encode
    with pytest.raises(LlavakitError, match="the conversation with this question is 70000 characters"):
        chat.ask(text)
    assert chat.turns == []
