"""chat, infer and serve on the embedded default (`nano`: EfficientNet-Lite0 + SmolLM2-135M), offline."""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest
from PIL import Image
from reference_generation import answer

from llavakit.conversation.templates import Message
from llavakit.serve.api import ServeConfig, create_app
from llavakit.serve.chat import ChatSession
from llavakit.serve.cli import BackgroundServer
from llavakit.serve.infer import run_inference
from llavakit.serve.rows import GenParams

pytestmark = pytest.mark.integration


def png(colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 72), colour).save(buf, "PNG")
    return buf.getvalue()


def test_nano_server_answers_text_and_image_questions(nano_model):
    with BackgroundServer(create_app(nano_model, ServeConfig(model_id="nano"))) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=300)
        text = client.chat.completions.create(
            model="nano", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16, temperature=0)
        assert "Paris" in text.choices[0].message.content  # the LM alone, as a teacher / judge would use it
        url = "data:image/png;base64," + base64.b64encode(png()).decode()
        chunks = list(client.chat.completions.create(
            model="nano", stream=True, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": "Describe the image."}]}]))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed.strip()


def test_nano_infer_and_chat(nano_model, tmp_path):
    (tmp_path / "red.png").write_bytes(png())
    questions = [{"question_id": 1, "image": "red.png", "text": "What is in the image?"},
                 {"question_id": 2, "text": "What is the capital of France?"}]
    out = run_inference(nano_model, questions, tmp_path, tmp_path / "answers.jsonl", batch_size=2,
                        max_new_tokens=12, progress=False)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [1, 2] and "Paris" in answers[1]["text"]
    chat = ChatSession(nano_model, GenParams(max_new_tokens=16, temperature=0.0))
    assert "Paris" in chat.ask("What is the capital of France?")
    assert chat.ask("And of Germany?") == answer(nano_model, 
        [Message("user", "What is the capital of France?"), Message("assistant", chat.turns[1].content),
         Message("user", "And of Germany?")], max_new_tokens=16)
