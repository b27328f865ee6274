"""The frozen-feature cache: exact reuse, invalidation, resumable builds, unreadable images."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_train_support import make_images, train_config, write_captions

from llavakit.imaging import load_image
from llavakit.errors import DataError
from llavakit.model.config import VisionConfig
from llavakit.model.presets import TINY_CLIP
from llavakit.model.vision import build_vision_tower
from llavakit.train.feature_cache import FeatureCache
from llavakit.train.runner import TrainSession


def _paths(folder, n):
    return [folder / name for name, _ in make_images(folder, n)]


def test_cached_features_equal_the_towers_output_and_are_reused(tmp_path, tiny_model):
    tower = tiny_model.vision_tower
    paths = _paths(tmp_path / "img", 5)
    cache = FeatureCache(tmp_path / "fc", tower)
    report = cache.build(paths, load_image, batch_size=2, shard_size=3)
    assert (report.computed, report.reused, report.bad) == (5, 0, {})
    assert len(list((cache.dir / "shards").glob("*.npy"))) == 2  # shards of 3 + 2 images
    with torch.no_grad():
        direct = tower(tower.preprocess([load_image(p) for p in paths]))
    got = cache.get(paths)
    assert got.dtype == direct.dtype and got.shape == direct.shape
    torch.testing.assert_close(got, direct, rtol=1e-6, atol=1e-6)
    again = FeatureCache(tmp_path / "fc", tower)  # a new process finds the committed shards
    report = again.build(paths, load_image)
    assert (report.computed, report.reused) == (0, 5)
    assert torch.equal(again.get(paths), got)
    assert set(again.image_fn(paths[:2])) == {"image_features"}


def test_an_image_that_failed_to_read_is_tried_again_by_the_next_build(tmp_path, tiny_model):
    paths = _paths(tmp_path / "img", 3)

    def flaky(path):  # e.g. a network file system hiccup
        if str(path) == str(paths[1]):
            raise DataError(f"image {path}: read timed out")
        return load_image(path)

    first = FeatureCache(tmp_path / "fc", tiny_model.vision_tower).build(paths, flaky)
    assert list(first.bad) == [str(paths[1])] and first.computed == 2
    again = FeatureCache(tmp_path / "fc", tiny_model.vision_tower)
    report = again.build(paths, load_image)
    assert (report.computed, report.reused, report.bad) == (1, 2, {})
    assert again.get(paths).shape[0] == 3


def test_an_interrupted_build_keeps_its_committed_shards(tmp_path, tiny_model):
    paths = _paths(tmp_path / "img", 6)
    cache = FeatureCache(tmp_path / "fc", tiny_model.vision_tower)
    cache.build(paths[:4], load_image, shard_size=2)
    (cache.dir / "shards" / ".r0-dead.tmp.npy").write_bytes(b"partial")  # a shard cut by a kill
    report = FeatureCache(tmp_path / "fc", tiny_model.vision_tower).build(paths, load_image, shard_size=2)
    assert (report.computed, report.reused) == (2, 4)


def test_changed_image_tower_or_preprocessing_invalidates(tmp_path, tiny_model):
    paths = _paths(tmp_path / "img", 3)
    root = tmp_path / "fc"
    base = FeatureCache(root, tiny_model.vision_tower)
    base.build(paths, load_image)
    Image.new("RGB", (40, 30), (1, 2, 3)).save(paths[0])  # the image file changes
    report = FeatureCache(root, tiny_model.vision_tower).build(paths, load_image)
    assert (report.computed, report.reused) == (1, 2)
    other_weights = build_vision_tower(VisionConfig(kind="hf", hf_config=TINY_CLIP, seed=1))
    other_mode = build_vision_tower(VisionConfig(kind="hf", hf_config=TINY_CLIP, image_mode="square"))
    other_layer = build_vision_tower(VisionConfig(kind="hf", hf_config=TINY_CLIP, feature_layer=-1))
    dirs = {base.dir}
    for tower in (other_weights, other_mode, other_layer):
        cache = FeatureCache(root, tower)
        assert cache.build(paths, load_image).computed == 3
        dirs.add(cache.dir)
    assert len(dirs) == 4


def test_bfloat16_features_round_trip_exactly(tmp_path):
    tower = build_vision_tower(VisionConfig(kind="hf", hf_config=TINY_CLIP)).to(torch.bfloat16)
    paths = _paths(tmp_path / "img", 2)
    cache = FeatureCache(tmp_path / "fc", tower)
    cache.build(paths, load_image)
    with torch.no_grad():
        direct = tower(tower.preprocess([load_image(p) for p in paths]))
    got = FeatureCache(tmp_path / "fc", tower).get(paths)
    assert got.dtype == torch.bfloat16 and torch.equal(got, direct)


def test_training_with_a_cache_hit_gives_the_loss_of_training_without_cache(tmp_path):
    data, images = write_captions(tmp_path, 8)

    def losses(name, **kw):
        cfg = train_config(tmp_path, 1, data, images, max_steps=3, output_dir=str(tmp_path / name), **kw)
        session = TrainSession(cfg)
        session.train()
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["loss"] for r in rows], session.data.cache

    built, cache = losses("build")
    assert cache is not None
    hit, cache2 = losses("hit")
    assert len(cache2) == 8 and cache2.dir == cache.dir
    plain, none = losses("pixels", **{"feature_cache.enabled": False})
    assert none is None
    assert built == hit
    assert plain == pytest.approx(hit, rel=1e-6, abs=1e-7)


def test_unreadable_images_leave_their_examples_out_and_are_reported(tmp_path):
    data, images = write_captions(tmp_path, 8)
    (images / "img003.png").write_bytes(b"not a png")
    cfg = train_config(tmp_path, 1, data, images, max_steps=1, **{"data.max_bad_image_fraction": 0.2})
    session = TrainSession(cfg)
    assert len(session.data) == 7
    result = session.train()
    report = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert [r["id"] for r in report["unreadable_images"]] == ["cap3"]
    assert "cannot be decoded" in report["unreadable_images"][0]["reason"]
    assert report["trained_on"] == 7 and result.skipped == 1


def test_more_bad_images_than_the_threshold_stop_the_run_with_their_ids(tmp_path):
    data, images = write_captions(tmp_path, 8)
    (images / "img003.png").write_bytes(b"not a png")
    (images / "img005.png").unlink()
    cfg = train_config(tmp_path, 1, data, images, max_steps=1)  # default threshold: 1%
    with pytest.raises(DataError, match=r"2 of 8 samples with images .* bad ids: cap3, cap5"):
        TrainSession(cfg)
    report = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert sorted(r["id"] for r in report["unreadable_images"]) == ["cap3", "cap5"]


def test_without_cache_a_batch_emptied_by_a_bad_image_keeps_training(tmp_path):
    data, images = write_captions(tmp_path, 4)
    (images / "img002.png").write_bytes(b"broken")
    cfg = train_config(tmp_path, 1, data, images, per_device_batch_size=1, gradient_accumulation_steps=2, epochs=1,
                       **{"feature_cache.enabled": False, "data.num_workers": 1, "data.max_bad_image_fraction": 0.5})
    result = TrainSession(cfg).train()
    report = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert [r["id"] for r in report["dropped_while_training"]] == ["cap2"]
    assert result.steps == 2 and result.samples == 3 and result.skipped == 1
