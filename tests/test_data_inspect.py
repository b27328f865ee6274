"""`llavakit data inspect` and the weight-free processor helper."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from llavakit.cli import main
from llavakit.conversation.templates import Message
from llavakit.model.tokenizer import load_processor, num_image_tokens
from llavakit.errors import LlavakitError
from llavakit.model.config import VisionConfig

CONV = [Message("user", "<image>\nWhat is it?"), Message("assistant", "A red square.")]


def test_load_processor_matches_the_model(tiny_model):
    p = load_processor("tiny-random")
    assert p.num_image_tokens == tiny_model.num_image_tokens
    assert p.image_token_id == tiny_model.image_token_id and p.stop_str == tiny_model.processor.stop_str
    assert p.encode(CONV) == tiny_model.processor.encode(CONV)
    v0 = load_processor("tiny-random", template="v0", system_prompt="Sys.")
    assert v0.template.name == "v0" and v0.tokenizer.decode(v0.encode(CONV).input_ids).startswith("Sys.###Human: ")


def test_load_processor_from_a_checkpoint(fresh_tiny_model, tmp_path):
    from llavakit.model import save_pretrained

    save_pretrained(fresh_tiny_model, tmp_path / "ckpt")
    p = load_processor(str(tmp_path / "ckpt"))
    assert p.num_image_tokens == fresh_tiny_model.num_image_tokens
    assert p.encode(CONV) == fresh_tiny_model.processor.encode(CONV)
    with pytest.raises(LlavakitError, match="not a llavakit checkpoint"):
        load_processor(str(tmp_path))
    with pytest.raises(LlavakitError, match="neither a preset"):
        load_processor("tiny")


def test_image_token_counts_without_weights():
    assert num_image_tokens(VisionConfig(kind="efficientnet-lite0")) == 49
    assert num_image_tokens(VisionConfig(kind="efficientnet-lite0", feature_stride=16)) == 196
    clip = {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14}
    assert num_image_tokens(VisionConfig(kind="hf", hf_config=clip)) == 576  # LLaVA-1.5's CLIP-L/336
    assert num_image_tokens(VisionConfig(kind="hf", hf_config=clip, feature_select="cls_patch")) == 577


@pytest.mark.integration
def test_nano_processor_without_weights(nano_model):
    p = load_processor("nano")
    assert p.num_image_tokens == nano_model.num_image_tokens == 49
    assert p.encode(CONV) == nano_model.processor.encode(CONV)


@pytest.fixture()
def data_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (12, 8), (200, 0, 0)).save(images / "red.png")
    (images / "broken.png").write_bytes((images / "red.png").read_bytes()[:30])
    records = [
        {"id": "img1", "image": "red.png", "conversations": [
            {"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A red square."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "txt1", "conversations": [{"from": "human", "value": "Hi [bold]there[/bold]"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "gone", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "broke", "image": "broken.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "gptfirst", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "twoimg", "image": "red.png", "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "escape", "image": "../images/../secret.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path, images


def test_inspect_reports_everything(data_file, capsys):
    path, images = data_file
    code = main(["data", "inspect", str(path), "--image-folder", str(images), "--model", "tiny-random",
                 "--check-images", "--template", "vicuna_v1", "--system-prompt", "S"])
    out = capsys.readouterr().out
    assert code == 0
    assert "7 records, 4 usable" in out and "template vicuna_v1, 16 image tokens" in out
    assert "with image: 3   text-only: 1" in out
    assert "rounds per conversation: 1: 3, 2: 1" in out
    assert "token lengths" in out and "│" in out
    assert "3 invalid records" in out
    assert "record gptfirst: conversations[0]: the conversation starts with gpt" in out
    assert "record twoimg: 2 <image> placeholder(s) in the conversation but 1 image" in out
    assert "record escape: image '../images/../secret.png' escapes the image folder" in out
    assert "images: 3 samples checked, 2 missing, undecodable or oversized" in out
    assert "gone: missing" in out and "broke: image" in out and "cannot be decoded" in out
    # the rendered sample: supervised spans marked, image span collapsed
    assert "sample img1" in out
    assert "S USER: [<image> ×16]\nWhat is it? ASSISTANT: ⟦A red square.</s>⟧USER: Sure? ASSISTANT: ⟦Yes.</s>⟧" in out


def test_inspect_chosen_sample_lengths_and_no_folder(data_file, capsys):
    path, _ = data_file
    code = main(["data", "inspect", str(path), "--model", "tiny-random", "--sample", "txt1", "--max-length", "60"])
    out = capsys.readouterr().out
    assert code == 0
    assert "images not checked (pass --image-folder)" in out
    assert "Hi [bold]there[/bold]" in out  # user text is shown literally, never as markup
    assert "⟦Hello.<|im_end|>⟧" in out
    assert "longer than 60 tokens, dropped: img1" in out


def test_inspect_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "a"},, ]')
    assert main(["data", "inspect", str(bad), "--model", "tiny-random"]) == 2
    assert "line 1 column 14 (in record [1]): invalid JSON" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]))
    assert main(["data", "inspect", str(good), "--model", "tiny-random", "--sample", "zz"]) == 2
    assert "--sample zz: no kept sample" in capsys.readouterr().err


@pytest.mark.integration
def test_nano_tokenizer_straight_from_gguf_converts_nothing(tmp_path, monkeypatch):
    cached = load_processor("nano")  # from the default conversion cache (or the GGUF file)
    monkeypatch.setenv("LLAVAKIT_CACHE", str(tmp_path / "empty-cache"))
    direct = load_processor("nano")
    assert not (tmp_path / "empty-cache").exists()  # no weights were converted
    assert direct.encode(CONV) == cached.encode(CONV) and direct.stop_str == "<|im_end|>"
