"""projector.layout = cells+regions: named region tokens after the cells, end to end on tiny-random."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llavakit.data.templates import Message
from llavakit.data.tokenizer import load_processor
from llavakit.errors import ConfigError, LlavakitError
from llavakit.model import load_model, load_projector, save_pretrained, save_projector
from llavakit.model.checkpoint import build_model
from llavakit.model.presets import get_preset
from llavakit.model.regions import REGION_NAMES, pool_regions, region_of


@pytest.fixture
def regions_model():
    config = get_preset("tiny-random")
    config.projector.layout = "cells+regions"
    return build_model(config)


def test_pool_regions_averages_each_third_in_reading_order():
    grid = torch.arange(9.0).reshape(1, 9, 1)  # a 3x3 map: each third is one cell
    assert pool_regions(grid).flatten().tolist() == list(range(9))
    six = torch.zeros(1, 36, 1)
    six[0, 0] = 4.0  # top-left cell of a 6x6 map: a quarter of the top-left third's 2x2 window
    pooled = pool_regions(six).flatten()
    assert pooled[0].item() == 1.0 and pooled[1:].abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="square grid"):
        pool_regions(torch.zeros(1, 10, 2))


def test_region_of_uses_the_box_centre():
    assert region_of([0, 0, 10, 10], 90, 90) == 0  # centre (5, 5): top left
    assert region_of([35, 35, 20, 20], 90, 90) == 4  # centre (45, 45): center
    assert region_of([80, 70, 10, 20], 90, 90) == 8  # centre on the far edge stays in bottom right


def test_region_tokens_follow_the_cells_named_by_the_lm_embeddings(regions_model):
    model = regions_model
    cells = model.vision_tower.num_tokens
    names = [model.tokenizer(" " + n, add_special_tokens=False)["input_ids"] for n in REGION_NAMES]
    assert model.num_image_tokens == cells + sum(len(n) + 1 for n in names)
    assert model.processor.num_image_tokens == model.num_image_tokens
    pixels = model.preprocess([Image.new("RGB", (40, 30), (200, 30, 30))])
    out = model.encode_images(pixels)
    assert out.shape == (1, model.num_image_tokens, model.language_model.get_input_embeddings().weight.shape[1])
    features = model.vision_tower(pixels)
    assert torch.equal(out[:, :cells], model.projector(features))  # the paper's tokens come first, unchanged
    table = model.language_model.get_input_embeddings()
    at, regions = cells, model.projector(pool_regions(features))
    for k, ids in enumerate(names):
        assert torch.equal(out[0, at:at + len(ids)], table(torch.tensor(ids)))
        assert torch.allclose(out[0, at + len(ids)], regions[0, k])
        at += len(ids) + 1
    enc = model.processor.encode([Message("user", "<image>\nWhat is this?"), Message("assistant", "red")])
    loss = model(torch.tensor([enc.input_ids]), pixel_values=pixels, labels=torch.tensor([enc.labels])).loss
    assert torch.isfinite(loss)


def test_layout_survives_a_checkpoint_and_guards_projector_artifacts(regions_model, tmp_path):
    save_pretrained(regions_model, tmp_path / "ckpt")
    loaded = load_model(str(tmp_path / "ckpt"))
    assert loaded.config.projector.layout == "cells+regions"
    assert loaded.num_image_tokens == regions_model.num_image_tokens
    assert load_processor(str(tmp_path / "ckpt")).num_image_tokens == regions_model.num_image_tokens
    save_projector(regions_model, tmp_path / "proj")
    with pytest.raises(ConfigError, match="layout"):  # a cells model refuses a regions projector, naming both
        load_projector(load_model("tiny-random"), tmp_path / "proj")
    load_projector(loaded, tmp_path / "proj")


def test_export_refuses_region_layout(regions_model, tmp_path):
    from llavakit.interop.hf_llava import export_hf_llava

    with pytest.raises(LlavakitError, match="layout 'cells\\+regions'"):
        export_hf_llava(regions_model, tmp_path / "hf")
