"""What chat / infer / serve load: LLaVA models, and text-only LLMs (the teacher / judge case)."""

from __future__ import annotations

import httpx
import openai
import pytest

from llavakit.conversation.templates import Message
from llavakit.errors import LlavakitError
from llavakit.serve.api import ServeConfig, create_app
from llavakit.serve.cli import BackgroundServer
from llavakit.serve.models import TextModel, accepts_images, load_servable, model_name
from reference_generation import answer


@pytest.fixture(scope="module")
def lm_dir(tiny_model, tmp_path_factory):
    """The tiny model's language model saved as a plain transformers dir."""
    path = tmp_path_factory.mktemp("plain-lm")
    tiny_model.language_model.save_pretrained(path)
    tiny_model.tokenizer.save_pretrained(path)
    return path


def test_a_plain_transformers_dir_serves_as_a_text_llm(tiny_model, lm_dir):
    text_model = load_servable(str(lm_dir), text_only=True)
    assert isinstance(text_model, TextModel) and not accepts_images(text_model)
    question = [Message("user", "What is two plus two?")]
    # the same LM and template as the LLaVA model answering without an image: the same answer
    assert answer(text_model, question, max_new_tokens=12) == answer(tiny_model, question, max_new_tokens=12)
    with pytest.raises(LlavakitError, match="cannot take images"):
        text_model.preprocess([])


def test_plain_dir_without_text_only_is_refused_with_a_hint(lm_dir):
    with pytest.raises(LlavakitError, match="--text-only"):
        load_servable(str(lm_dir))


def test_unknown_specs_are_refused(tmp_path):
    with pytest.raises(LlavakitError, match="not a preset"):
        load_servable("no-such-model", text_only=True)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(LlavakitError, match="neither a llavakit checkpoint"):
        load_servable(str(tmp_path / "notes.txt"), text_only=True)
    with pytest.raises(LlavakitError, match="--template applies to --text-only"):
        load_servable("tiny-random", template="v0")


def test_text_only_preset_keeps_the_template():
    model = load_servable("tiny-random", text_only=True)
    assert model.name == "tiny-random" and model.processor.stop_str == "<|im_end|>"
    assert model_name("tiny-random") == "tiny-random" and model_name("/a/b/ckpt") == "ckpt"


def test_text_llm_server_answers_text_and_refuses_images(lm_dir):
    text_model = load_servable(str(lm_dir), text_only=True)
    app = create_app(text_model, ServeConfig(model_id="judge"))
    with BackgroundServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        resp = client.chat.completions.create(
            model="judge", messages=[{"role": "system", "content": "You are a judge."},
                                     {"role": "user", "content": "Score this answer."}], max_tokens=6, temperature=0)
        want = answer(text_model, [Message("system", "You are a judge."), Message("user", "Score this answer.")],
                                 max_new_tokens=6)
        assert resp.choices[0].message.content == want
        assert httpx.get(srv.url + "/health").json()["vision"] is False
        with pytest.raises(openai.BadRequestError, match="text-only"):
            client.chat.completions.create(model="judge", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])


@pytest.mark.integration
def test_the_embedded_gguf_file_serves_as_a_text_llm():
    from llavakit.model.lm import EMBEDDED, embedded_dir

    folder, gguf = embedded_dir("SmolLM2-135M-Instruct")
    model = load_servable(str(folder / gguf), text_only=True)
    assert model.name == EMBEDDED["SmolLM2-135M-Instruct"].gguf_file
    reply = answer(model, [Message("user", "What is the capital of France?")], max_new_tokens=12)
    assert "Paris" in reply
