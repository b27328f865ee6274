"""Collator (padding, image order, bad images), ImageLoader accounting, LengthGroupedSampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit.data.batching import (
    Collator,
    ImageLoader,
    LengthGroupedSampler,
    padding_fraction,
    pixel_image_fn,
    random_batches,
)
from llavakit.data.dataset import Example, LlavaDataset
from llavakit.errors import ConfigError, DataError

PAD = 0


def ex(rid, ids, labels=None, images=()):
    return Example(rid, list(ids), list(labels if labels is not None else ids), list(images))


def test_right_and_left_padding():
    batch = Collator(PAD, "right")([ex("a", [5, 6, 7], [-100, 6, 7]), ex("b", [8])])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["ids"] == ["a", "b"] and batch["skipped"] == [] and "pixel_values" not in batch
    left = Collator(PAD, "left", pad_to_multiple_of=4)([ex("a", [5, 6, 7]), ex("b", [8])])
    assert left["input_ids"].tolist() == [[PAD, 5, 6, 7], [PAD, PAD, PAD, 8]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    with pytest.raises(ConfigError, match="padding_side"):
        Collator(PAD, "middle")
    with pytest.raises(ConfigError, match="pad token"):
        Collator(None)


def test_images_flattened_in_order_of_appearance():
    def features(paths):  # a stand-in for a frozen-feature cache: one row per image, tagged by name
        return {"image_features": torch.tensor([[[float(p.split("-")[1])]] for p in paths])}

    collate = Collator(PAD, image_fn=features)
    batch = collate([ex("a", [1], images=["img-1", "img-2"]), ex("t", [2]), ex("b", [3], images=["img-3"])])
    assert batch["image_features"].flatten().tolist() == [1.0, 2.0, 3.0]
    assert batch["ids"] == ["a", "t", "b"]
    with pytest.raises(ConfigError, match="no image_fn"):
        Collator(PAD)([ex("a", [1], images=["x"])])
    wrong = Collator(PAD, image_fn=lambda paths: {"pixels": torch.zeros(1)})
    with pytest.raises(ConfigError, match="image_fn must return one of"):
        wrong([ex("a", [1], images=["x"])])


@pytest.fixture()
def image_dir(tmp_path):
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "ok.png")
    full = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(full[: len(full) // 2])
    return tmp_path


def test_bad_images_skip_the_sample_with_id_and_reason(image_dir):
    pre = lambda imgs: torch.stack([torch.from_numpy(np.asarray(i, np.float32)).permute(2, 0, 1) for i in imgs])  # noqa: E731
    collate = Collator(PAD, image_fn=pixel_image_fn(pre), loader=ImageLoader(min_samples=1000))
    batch = collate([
        ex("good", [1, 2], images=[image_dir / "ok.png"]),
        ex("missing", [3], images=[image_dir / "nope.png"]),
        ex("trunc", [4], images=[image_dir / "trunc.png"]),
        ex("text", [5]),
    ])
    assert batch["ids"] == ["good", "text"]
    assert batch["pixel_values"].shape == (1, 3, 6, 8)
    assert [i for i, _ in batch["skipped"]] == ["missing", "trunc"]
    assert "does not exist" in batch["skipped"][0][1] and "cannot be decoded" in batch["skipped"][1][1]
    assert collate.loader.seen == 4 and [i for i, _ in collate.loader.bad] == ["missing", "trunc"]
    empty = collate([ex("missing2", [3], images=[image_dir / "nope.png"])])
    assert empty["ids"] == [] and empty["input_ids"].shape == (0, 0)


def test_collator_stops_when_too_many_images_fail(image_dir):
    loader = ImageLoader(max_bad_fraction=0.01, min_samples=50)
    collate = Collator(PAD, image_fn=pixel_image_fn(lambda imgs: torch.zeros(len(imgs), 3, 2, 2)), loader=loader)
    ok, nope = image_dir / "ok.png", image_dir / "nope.png"
    batch = collate([ex(f"g{i}", [1], images=[ok]) for i in range(48)] + [ex("bad0", [1], images=[nope])])
    assert len(batch["ids"]) == 48 and loader.seen == 49  # 1 bad of 49: under min_samples, recorded
    with pytest.raises(DataError, match=r"1 of 50 samples had a missing, corrupt or oversized image \(more than 1.0%\); "
                                        r"bad ids: bad0; first reason: image .*nope.png does not exist"):
        collate([ex("g48", [1], images=[ok])])


def test_threshold_counts_after_minimum():
    bad_fn = lambda paths: (_ for _ in ()).throw(DataError(f"image {paths[0]} cannot be decoded"))  # noqa: E731
    loader = ImageLoader(bad_fn, max_bad_fraction=0.05, min_samples=20)
    for i in range(3):
        assert loader(f"bad{i}", ["x.png"]) is None  # 3 bad early: under min_samples, recorded only
    for i in range(16):
        loader.count_ok()
    with pytest.raises(DataError, match=r"3 of 20 samples had a missing, corrupt or oversized image \(more than 5.0%\); bad ids: bad0, bad1, bad2"):
        loader.count_ok()
    ok = ImageLoader(bad_fn, max_bad_fraction=0.05, min_samples=20)
    ok.load_state_dict({"seen": 100, "bad": [["x", "why"]]})
    assert ok("bad9", ["x.png"]) is None and len(ok.bad) == 2  # 2 of 101: fine
    assert ok.state_dict() == {"seen": 101, "bad": [["x", "why"], ["bad9", "image x.png cannot be decoded"]]}


def test_collate_dataset_into_the_tiny_model(tiny_model, tmp_path):
    Image.new("RGB", (20, 10), (0, 128, 255)).save(tmp_path / "a.png")
    records = [
        {"id": "i", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Blue."}]},
        {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there."}]},
    ]
    ds = LlavaDataset(records, tiny_model.processor, image_folder=tmp_path)
    collate = Collator(tiny_model.tokenizer.pad_token_id, image_fn=pixel_image_fn(tiny_model.preprocess))
    batch = collate([ds[0], ds[1]])
    with torch.no_grad():
        out = tiny_model(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"], labels=batch["labels"])
    assert torch.isfinite(out.loss) and out.num_supervised == sum(
        sum(lab != -100 for lab in ds[i].labels[1:]) for i in range(2))


# --- sampler ---------------------------------------------------------------------------------------

def mixed(n=600, seed=0):
    rng = np.random.default_rng(seed)
    mm = rng.random(n) < 0.6
    lengths = np.where(mm, rng.integers(80, 700, n), rng.integers(20, 2000, n))
    return lengths.tolist(), mm.tolist()


def test_grouped_batches_are_single_modality_and_cover_the_epoch():
    lengths, mm = mixed()
    s = LengthGroupedSampler(lengths, mm, batch_size=8, seed=1)
    batches = list(s)
    assert len(batches) == len(s)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every sample once
    assert all(len({mm[i] for i in b}) == 1 for b in batches)  # never mixes image and text-only
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first (OOM shows early)
    assert sum(len(b) < 8 for b in batches) <= 2  # at most one short batch per modality


def test_grouping_reduces_padding():
    lengths, mm = mixed()
    s = LengthGroupedSampler(lengths, mm, batch_size=8, seed=0)
    report = s.padding_report()
    assert report["grouped"] == pytest.approx(padding_fraction(lengths, list(s)))
    assert report["random"] == pytest.approx(padding_fraction(lengths, random_batches(len(lengths), 8, 0)))
    assert report["grouped"] < report["random"] / 3


def test_padding_fraction_by_hand():
    assert padding_fraction([2, 4, 4, 1], [[0, 1], [2, 3]]) == pytest.approx(1 - 11 / 16)
    assert padding_fraction([3], []) == 0.0


def test_deterministic_per_seed_and_epoch():
    lengths, mm = mixed(200)
    a = LengthGroupedSampler(lengths, mm, 4, seed=5)
    b = LengthGroupedSampler(lengths, mm, 4, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(map(sorted, a)) != sorted(map(sorted, first))
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(LengthGroupedSampler(lengths, mm, 4, seed=6)) != first


def test_resume_continues_with_the_same_batches():
    lengths, mm = mixed(300)
    full = LengthGroupedSampler(lengths, mm, 4, seed=2)
    full.set_epoch(3)
    expected = list(full)
    run = LengthGroupedSampler(lengths, mm, 4, seed=2)
    run.set_epoch(3)
    it = iter(run)
    seen = [next(it) for _ in range(7)]
    state = run.state_dict(consumed=7)
    resumed = LengthGroupedSampler(lengths, mm, 4, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the trainer sets the epoch again; the resume point survives
    assert seen + list(resumed) == expected
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(expected)  # the next epoch starts from its beginning
    with pytest.raises(ConfigError, match="different data"):
        LengthGroupedSampler(lengths[:-1], mm[:-1], 4, seed=2).load_state_dict(state)


def test_replicas_split_each_global_batch():
    lengths, mm = mixed(203)
    ranks = [LengthGroupedSampler(lengths, mm, 4, seed=0, num_replicas=3, rank=r) for r in range(3)]
    per_rank = [list(s) for s in ranks]
    assert len({len(p) for p in per_rank}) == 1  # every rank steps the same number of times
    for step in zip(*per_rank):
        assert len({len(b) for b in step}) == 1
        assert len({mm[i] for b in step for i in b}) == 1  # a global batch is one modality
    covered = {i for p in per_rank for b in p for i in b}
    assert covered == set(range(len(lengths)))  # all samples, a few repeated to fill the last batch
    with pytest.raises(ConfigError, match="rank"):
        LengthGroupedSampler(lengths, mm, 4, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="is_multimodal"):
        LengthGroupedSampler(lengths, mm[:5], 4)


def test_no_shuffle_and_drop_last():
    lengths = [5, 1, 9, 3, 7]
    s = LengthGroupedSampler(lengths, None, 2, shuffle=False, longest_first=False, drop_last=True)
    assert list(s) == [[2, 4], [0, 3]]
    keep = LengthGroupedSampler(lengths, None, 2, shuffle=False, longest_first=False)
    assert list(keep) == [[2, 4], [0, 3], [1]]


def _zeros(images):
    return torch.zeros(len(images), 3, 2, 2)


def test_collator_pickles_for_dataloader_workers(image_dir):
    import pickle

    collate = pickle.loads(pickle.dumps(Collator(PAD, image_fn=pixel_image_fn(_zeros))))
    batch = collate([ex("a", [1], images=[image_dir / "ok.png"])])
    assert batch["pixel_values"].shape == (1, 3, 2, 2)
