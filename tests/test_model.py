"""Core model: splice, mismatch errors, loss on supervised tokens, generation, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from llavakit.conversation.processor import IGNORE_INDEX
from llavakit.conversation.templates import Message
from llavakit.model import ImageTokenMismatch, load_model, load_projector, save_pretrained, save_projector
from llavakit.model.projector import build_projector
from llavakit.errors import ConfigError, LlavakitError
from reference_generation import answer, prepare


def _image(colour=(200, 30, 30), size=(40, 30)):
    return Image.new("RGB", size, colour)


def _sample(model, n_images=1, answer="a red square"):
    question = "<image>\n" * n_images + "What is this?"
    enc = model.processor.encode([Message("user", question), Message("assistant", answer)])
    return torch.tensor([enc.input_ids]), torch.tensor([enc.labels])


def test_splice_puts_features_exactly_at_image_positions(tiny_model):
    ids, _ = _sample(tiny_model, n_images=2)
    pixels = tiny_model.preprocess([_image(), _image((10, 200, 10))])
    embeds = tiny_model.embed(ids, pixel_values=pixels)
    is_image = ids[0] == tiny_model.image_token_id
    assert int(is_image.sum()) == 2 * tiny_model.num_image_tokens
    projected = tiny_model.encode_images(pixels).reshape(-1, embeds.shape[-1])
    assert torch.equal(embeds[0][is_image], projected)
    text = tiny_model.language_model.get_input_embeddings()(ids[0][~is_image])
    assert torch.equal(embeds[0][~is_image], text)


def test_image_token_count_mismatch_names_both_counts(tiny_model):
    ids, _ = _sample(tiny_model, n_images=1)
    pixels = tiny_model.preprocess([_image(), _image()])
    n = tiny_model.num_image_tokens
    with pytest.raises(ImageTokenMismatch, match=rf"{n} image-token positions but 2 image\(s\) x {n} tokens = {2 * n}"):
        tiny_model.embed(ids, pixel_values=pixels)
    with pytest.raises(ImageTokenMismatch, match=r"0 image\(s\)"):
        tiny_model.embed(ids)


def test_text_only_sample_needs_no_image(tiny_model):
    enc = tiny_model.processor.encode([Message("user", "hello"), Message("assistant", "hi")])
    out = tiny_model(torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels]))
    assert out.num_supervised == sum(label != IGNORE_INDEX for label in enc.labels[1:])
    assert torch.isfinite(out.loss)


def test_loss_only_on_supervised_tokens_matches_full_logits(tiny_model):
    ids, labels = _sample(tiny_model)
    pixels = tiny_model.preprocess([_image()])
    out = tiny_model(ids, pixel_values=pixels, labels=labels, return_logits=True)
    reference = F.cross_entropy(
        out.logits[0, :-1].float(), labels[0, 1:], ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(out.loss, reference, atol=1e-6)
    assert out.num_supervised == int((labels[0, 1:] != IGNORE_INDEX).sum())


def test_batch_with_mixed_image_counts(tiny_model):
    a, la = _sample(tiny_model, n_images=2)
    b, lb = _sample(tiny_model, n_images=0)
    pad = tiny_model.tokenizer.pad_token_id
    width = max(a.shape[1], b.shape[1])
    ids = torch.full((2, width), pad)
    labels = torch.full((2, width), IGNORE_INDEX)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, (x, y) in enumerate([(a, la), (b, lb)]):
        ids[row, : x.shape[1]], labels[row, : x.shape[1]], mask[row, : x.shape[1]] = x[0], y[0], 1
    pixels = tiny_model.preprocess([_image(), _image((0, 0, 255))])
    out = tiny_model(ids, attention_mask=mask, pixel_values=pixels, labels=labels)
    assert torch.isfinite(out.loss)


def test_image_features_path_equals_pixel_path(tiny_model):
    ids, labels = _sample(tiny_model)
    pixels = tiny_model.preprocess([_image()])
    feats = tiny_model.vision_tower(pixels)
    a = tiny_model(ids, pixel_values=pixels, labels=labels).loss
    b = tiny_model(ids, image_features=feats, labels=labels).loss
    assert torch.equal(a, b)


def test_greedy_generation_is_deterministic(tiny_model):
    msgs = [Message("user", "<image>\nDescribe.")]
    first = answer(tiny_model, msgs, [_image()], max_new_tokens=12)
    second = answer(tiny_model, msgs, [_image()], max_new_tokens=12)
    assert first == second and len(first) > 0


def test_batched_generation_equals_one_by_one(tiny_model):
    convs = [
        [Message("user", "<image>\nWhat colour?")],
        [Message("user", "A much longer text-only question that needs left padding of the others?")],
        [Message("user", "<image>\nHi")],
    ]
    images = [[_image()], [], [_image((0, 255, 0), (20, 50))]]
    batch = prepare(tiny_model, convs, images)
    assert (batch["attention_mask"][:, 0] == 0).any(), "expected left padding"
    new = tiny_model.generate(**batch, max_new_tokens=10)
    batched = [tiny_model.decode(row) for row in new]
    single = [answer(tiny_model, c, imgs, max_new_tokens=10) for c, imgs in zip(convs, images)]
    assert batched == single


def test_save_load_round_trip_is_bitwise(fresh_tiny_model, tmp_path):
    model = fresh_tiny_model
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(0.01)  # make sure the projector is not just re-initialised on load
    save_pretrained(model, tmp_path / "ckpt")
    again = load_model(str(tmp_path / "ckpt"))
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    msgs = [Message("user", "<image>\nWhat is it?")]
    assert answer(model, msgs, [_image()], max_new_tokens=8) == answer(again, msgs, [_image()], max_new_tokens=8)
    config = json.loads((tmp_path / "ckpt" / "llavakit.json").read_text())
    assert config["projector"]["kind"] == "mlp2x_gelu" and config["template"] == "chat_template"
    assert not list(tmp_path.glob(".ckpt.tmp*")), "temp dir left behind"


def test_projector_artifact_round_trip_and_mismatch(fresh_tiny_model, tmp_path):
    model = fresh_tiny_model
    with torch.no_grad():
        for p in model.projector.parameters():
            p.mul_(1.5)
    save_projector(model, tmp_path / "proj")
    base = load_model("tiny-random")
    load_projector(base, tmp_path / "proj")
    for a, b in zip(model.projector.state_dict().values(), base.projector.state_dict().values()):
        assert torch.equal(a, b)
    meta = json.loads((tmp_path / "proj" / "projector.json").read_text())
    meta["vision_hidden_size"] = 999
    (tmp_path / "proj" / "projector.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="vision_hidden_size is 999 there"):
        load_projector(base, tmp_path / "proj")


@pytest.mark.parametrize(("kind", "linears"), [("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)])
def test_projector_registry(kind, linears):
    proj = build_projector(kind, 8, 16)
    assert sum(isinstance(m, torch.nn.Linear) for m in proj.modules()) == linears
    assert proj(torch.zeros(2, 5, 8)).shape == (2, 5, 16)


@pytest.mark.parametrize("kind", ["mlp", "linear2", "mlp2x_relu", "mlp0x_gelu", "Linear"])
def test_unknown_projector_is_a_clear_error(kind):
    with pytest.raises(ConfigError, match="unknown projector"):
        build_projector(kind, 8, 16)


def test_unknown_model_spec_is_one_clear_error(tmp_path):
    with pytest.raises(LlavakitError, match="neither a preset"):
        load_model("no-such-preset")
    with pytest.raises(LlavakitError, match="not a llavakit checkpoint"):
        load_model(str(tmp_path))


def test_auto_template_uses_the_chat_template_when_the_tokenizer_has_one(fresh_tiny_model):
    from llavakit.model.llava import LlavaModel

    m = fresh_tiny_model
    cfg = copy_config(m.config, template="auto")
    assert LlavaModel(cfg, m.vision_tower, m.language_model, m.tokenizer).config.template == "chat_template"
    assert cfg.template == "auto"  # the caller's config is not changed
    m.tokenizer.chat_template = None  # an LM without a chat template (e.g. a base model) gets vicuna_v1
    cfg = copy_config(m.config, template="auto")
    plain = LlavaModel(cfg, m.vision_tower, m.language_model, m.tokenizer)
    assert plain.config.template == "vicuna_v1" and plain.processor.stop_str == "</s>"


def copy_config(config, **changes):
    import copy
    import dataclasses

    return dataclasses.replace(copy.deepcopy(config), **changes)
