"""The exported processor's chat template renders what llavakit trained on, id for id, from the
standard multimodal messages of transformers (``content: [{"type": "image"}, {"type": "text"}]``)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llavakit.conversation.processor import place_image
from llavakit.conversation.templates import Message
from llavakit.interop.hf_llava import export_hf_llava
from llavakit.model import build_model, get_preset
from reference_generation import prepare

IMAGE = Image.new("RGB", (40, 30), (200, 40, 40))


def _export(tmp_path, template, system_prompt=None, adds_bos=False):
    from transformers import AutoProcessor

    cfg = get_preset("tiny-random")
    cfg.template, cfg.system_prompt = template, system_prompt
    model = build_model(cfg).eval()
    if adds_bos:  # a SentencePiece-style (Llama / Vicuna) tokenizer: it puts <s> first itself
        model.tokenizer.add_bos_token = True
        model.set_template(template)  # a processor that sees the tokenizer as it now is
    export_hf_llava(model, tmp_path / "hf")
    return model, AutoProcessor.from_pretrained(tmp_path / "hf")


def _theirs(processor, messages):
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=[IMAGE], text=prompt, return_tensors="pt")


def _ours(model, turns):
    msgs = place_image([Message(role, text) for role, text in turns], "<image>", "first", None)
    return model.processor.encode_prompt(msgs)


TEXT_THEN_IMAGE = [{"role": "user", "content": [{"type": "text", "text": "What colour is the square?"},
                                                 {"type": "image"}]}]
MULTI_TURN = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    {"role": "user", "content": "And its size?"},
]


@pytest.mark.parametrize("template", ["chat_template", "v0", "vicuna_v1"])
def test_apply_chat_template_gives_llavakits_ids(tmp_path, template):
    model, processor = _export(tmp_path, template)
    theirs = _theirs(processor, TEXT_THEN_IMAGE)["input_ids"][0].tolist()
    assert theirs == _ours(model, [("user", "What colour is the square?\n<image>")])  # the image moved first
    theirs = _theirs(processor, MULTI_TURN)["input_ids"][0].tolist()
    assert theirs == _ours(model, [("user", "<image>\nWhat is in the picture?"), ("assistant", "A red square."),
                                   ("user", "And its size?")])


@pytest.mark.parametrize("template", ["chat_template", "v0", "vicuna_v1", "plain"])
def test_a_tokenizer_that_adds_bos_itself_gets_exactly_one(tmp_path, template):
    model, processor = _export(tmp_path, template, adds_bos=True)
    bos = model.tokenizer.bos_token_id
    if template == "plain":
        theirs = _theirs(processor, [{"role": "user", "content": [{"type": "image"}]}])["input_ids"][0].tolist()
        ours = _ours(model, [("user", "<image>")])
    else:
        theirs = _theirs(processor, MULTI_TURN)["input_ids"][0].tolist()
        ours = _ours(model, [("user", "<image>\nWhat is in the picture?"), ("assistant", "A red square."),
                             ("user", "And its size?")])
    assert theirs == ours
    assert theirs[0] == bos and theirs.count(bos) == 1  # first, and once


def test_a_system_message_and_a_models_system_prompt_are_rendered_as_llavakit_does(tmp_path):
    model, processor = _export(tmp_path, "chat_template", system_prompt="Answer in one word.")
    theirs = _theirs(processor, TEXT_THEN_IMAGE)["input_ids"][0].tolist()
    assert theirs == _ours(model, [("user", "<image>\nWhat colour is the square?")])
    assert "Answer in one word." in processor.apply_chat_template(TEXT_THEN_IMAGE, add_generation_prompt=True)
    given = [{"role": "system", "content": "Be brief."}, *TEXT_THEN_IMAGE]
    theirs = _theirs(processor, given)["input_ids"][0].tolist()
    assert theirs == _ours(model, [("system", "Be brief."), ("user", "<image>\nWhat colour is the square?")])


def test_plain_export_renders_the_image_alone(tmp_path):
    model, processor = _export(tmp_path, "plain")
    theirs = _theirs(processor, [{"role": "user", "content": [{"type": "image"}]}])["input_ids"][0].tolist()
    assert theirs == _ours(model, [("user", "<image>")])


def test_the_exported_model_answers_from_apply_chat_template_as_llavakit_does(tmp_path):
    from transformers import LlavaForConditionalGeneration

    model, processor = _export(tmp_path, "chat_template")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    inputs = _theirs(processor, TEXT_THEN_IMAGE)
    batch = prepare(model, [[Message("user", "<image>\nWhat colour is the square?")]], [[IMAGE]])
    ours = model.generate(**batch, max_new_tokens=6)
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours[0], theirs[0, inputs["input_ids"].shape[1]:][: ours.shape[1]])
