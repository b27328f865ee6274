"""Vision towers: feature selection, preprocessing ownership, freezing, the embedded EfficientNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit.errors import ConfigError
from llavakit.model.config import VisionConfig
from llavakit.model.presets import TINY_CLIP
from llavakit.model.vision import HFVisionTower, build_vision_tower

TINY_SIGLIP = {**TINY_CLIP, "model_type": "siglip_vision_model"}


def _tower(**kw):
    return build_vision_tower(VisionConfig(kind="hf", hf_config=kw.pop("hf_config", TINY_CLIP), **kw))


def test_clip_patch_drops_cls_and_reads_the_chosen_layer():
    tower = _tower(feature_layer=-2)
    pixels = torch.randn(2, 3, 32, 32)
    out = tower(pixels)
    assert out.shape == (2, 16, 32) and tower.num_tokens == 16
    hidden = tower.model(pixels, output_hidden_states=True).hidden_states
    assert torch.equal(out, hidden[-2][:, 1:])
    assert not torch.equal(out, hidden[-1][:, 1:])


def test_clip_cls_patch_keeps_cls_and_layer_minus_one_differs():
    tower = _tower(feature_select="cls_patch", feature_layer=-1)
    pixels = torch.randn(1, 3, 32, 32)
    assert tower(pixels).shape == (1, 17, 32) and tower.num_tokens == 17
    assert torch.equal(tower(pixels), tower.model(pixels, output_hidden_states=True).hidden_states[-1])


def test_siglip_has_no_cls():
    tower = _tower(hf_config=TINY_SIGLIP)
    assert tower(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32)
    assert tower.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match="no CLS token"):
        _tower(hf_config=TINY_SIGLIP, feature_select="cls_patch")


def test_feature_layer_out_of_range():
    with pytest.raises(ConfigError, match="outside the 4 hidden states"):
        _tower(feature_layer=-9)


def test_tower_is_frozen_and_stays_in_eval_mode():
    tower = _tower()
    tower.train()
    assert not tower.training and not any(m.training for m in tower.modules())
    assert not any(p.requires_grad for p in tower.parameters())
    out = tower(torch.randn(1, 3, 32, 32, requires_grad=True))
    assert not out.requires_grad


def test_hf_tower_reloads_from_saved_dir(tmp_path):
    tower = _tower()
    tower.save(tmp_path)
    again = HFVisionTower.build(VisionConfig(kind="hf"), tmp_path)
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(tower(pixels), again(pixels))
    assert again.mean == tower.mean and again.fingerprint() == tower.fingerprint()


def test_fingerprint_changes_with_layer_and_preprocessing():
    base = _tower().fingerprint()
    assert _tower(feature_layer=-1).fingerprint() != base
    assert _tower(image_mode="square").fingerprint() != base
    assert _tower().fingerprint() == base


def test_preprocess_uses_the_towers_size_and_normalisation():
    tower = _tower()
    white = Image.new("RGB", (50, 20), (255, 255, 255))
    pixels = tower.preprocess([white])
    assert pixels.shape == (1, 3, 32, 32)
    expected_white = (1.0 - tower.mean[0]) / tower.std[0]
    assert pixels[0, 0, 16, 16].item() == pytest.approx(expected_white, abs=1e-4)
    # pad mode fills with the mean colour, which normalises to ~0
    assert abs(pixels[0, 0, 0, 16].item()) < 0.02


def test_unknown_tower_kind():
    with pytest.raises(ConfigError, match="unknown vision tower kind 'clip'"):
        build_vision_tower(VisionConfig(kind="clip"))


def test_efficientnet_lite0_tower_shape_and_imagenet_weights():
    from skimage import data

    tower = build_vision_tower(VisionConfig(kind="efficientnet-lite0", feature_layer=-1))
    cat = Image.fromarray(data.chelsea())
    pixels = tower.preprocess([cat, Image.fromarray(np.zeros((100, 300, 3), np.uint8))])
    assert pixels.shape == (2, 3, 224, 224) and pixels.min() >= -1.0 and pixels.max() <= 1.0
    feats = tower(pixels)
    assert feats.shape == (2, 49, 1280) and tower.num_tokens == 49
    # layer -1 is exactly the package's extract_features (the head's 7x7 map)
    with torch.no_grad():
        ref = tower.model.extract_features(pixels).flatten(2).transpose(1, 2)
    assert torch.equal(feats, ref)
    # -2 (the default, "second-to-last") is the last MBConv block: 320-d, another fingerprint
    block = build_vision_tower(VisionConfig(kind="efficientnet-lite0"))
    assert block(pixels).shape == (2, 49, 320) and block.hidden_size == 320
    assert block.fingerprint() != tower.fingerprint()
    assert build_vision_tower(VisionConfig(kind="efficientnet-lite0", feature_layer=-6)).hidden_size == 192
    with pytest.raises(ConfigError, match="feature_layer -7: efficientnet-lite0 has 7x7 maps"):
        build_vision_tower(VisionConfig(kind="efficientnet-lite0", feature_layer=-7))
    # the ImageNet head on these weights recognises the cat (classes 281-285 are cats)
    with torch.no_grad():
        logits = tower.model(pixels[:1])
    assert int(logits.argmax()) in range(281, 286)


def test_efficientnet_lite0_stride_16_reads_a_14x14_grid():
    """feature_stride 16: the last stride-16 block's map beside the layer's 7x7 map repeated 2x2."""
    from skimage import data

    coarse = build_vision_tower(VisionConfig(kind="efficientnet-lite0"))
    fine = build_vision_tower(VisionConfig(kind="efficientnet-lite0", feature_stride=16))
    pixels = coarse.preprocess([Image.fromarray(data.astronaut()), Image.fromarray(data.coffee())])
    f, c = fine(pixels), coarse(pixels)
    assert f.shape == (2, 196, 112 + 320) and (fine.num_tokens, fine.hidden_size) == (196, 432)
    grid = f[:, :, 112:].reshape(2, 14, 14, 320)
    for dr in (0, 1):  # every 2x2 block of the fine grid repeats its coarse cell
        for dc in (0, 1):
            assert torch.equal(grid[:, dr::2, dc::2].reshape(2, 49, 320), c)
    stem = fine.model
    with torch.no_grad():  # the first 112 channels are block 10's output
        x = stem._swish(stem._bn0(stem._conv_stem(pixels)))
        for block in stem._blocks[:11]:
            x = block(x)
    assert torch.equal(f[:, :, :112], x.flatten(2).transpose(1, 2))
    assert fine.fingerprint() != coarse.fingerprint()
    assert build_vision_tower(VisionConfig(kind="efficientnet-lite0", feature_stride=32)).num_tokens == 49


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "efficientnet-lite0", "feature_stride": 8}, "feature_stride must be 16, 32 or null, got 8"),
    ({"kind": "hf", "feature_stride": 16}, "feature_stride is an efficientnet-lite0 option; a 'hf' tower"),
])
def test_feature_stride_is_checked_before_a_tower_loads(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        VisionConfig(**kwargs)
