"""LlavaDataset: validation report, long samples (drop / cut at a turn), image placement, paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llavakit.data.dataset import LlavaDataset
from llavakit.conversation.processor import IGNORE_INDEX, Processor
from llavakit.conversation.templates import Message
from llavakit.errors import ConfigError, DataError
from llavakit.model.lm import build_byte_tokenizer

N = 4  # image tokens


@pytest.fixture()
def processor():
    return Processor(build_byte_tokenizer(), "vicuna_v1", num_image_tokens=N, system_prompt="S")


def rec(rid, *turns, image=None):
    out = {"id": rid, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]}
    if image is not None:
        out["image"] = image
    return out


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"not decoded here")
    return root


def test_examples_lengths_and_flags(processor, folder):
    records = [rec("img", "Q?\n<image>", "A.", image="a.jpg"), rec("txt", "Hi", "Hello", "More?", "Sure.")]
    ds = LlavaDataset(records, processor, image_folder=folder)
    assert len(ds) == 2 and ds.is_multimodal == [True, False]
    ex = ds[0]
    assert ex.id == "img" and ex.images == [(folder / "a.jpg").resolve()]
    assert ex.input_ids.count(processor.image_token_id) == N
    assert ds.lengths == [len(ds[0]), len(ds[1])]
    # image placement "first" (default): the image goes before the question, as LLaVA-1.5 does
    assert processor.tokenizer.decode(ex.input_ids).startswith("S USER: " + "<image>" * N + "\nQ? ASSISTANT: ")
    sup = [i for i, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]
    assert processor.tokenizer.decode(sup) == "A.</s>"
    assert ds.report.kept == 2 and not ds.report.bad and ds[-1].id == "txt"
    with pytest.raises(IndexError):
        ds[2]


def test_bad_records_are_reported_then_threshold(processor, folder):
    good = [rec(f"g{i}", "<image>\nq", "a", image="a.jpg") for i in range(8)]
    bad = [rec("b1", "q"), rec("b2", "<image>\nq", "a", image="../outside.jpg"), {"id": "b3", "conversations": 5}]
    ds = LlavaDataset(good + bad, processor, image_folder=folder, max_bad_fraction=0.5)
    assert len(ds) == 8
    assert [i for i, _ in ds.report.bad] == ["b1", "b2", "b3"]
    assert "has no gpt answer" in ds.report.bad[0][1] and "escapes the image folder" in ds.report.bad[1][1]
    assert "3 invalid" in ds.report.summary()
    with pytest.raises(DataError, match=r"3 of 11 records are invalid \(more than 1.0%\).*record b1: has no gpt answer"):
        LlavaDataset(good + bad, processor, image_folder=folder)


def test_images_need_a_folder(processor, folder):
    records = [rec("t", "q", "a"), rec("i", "<image>", "a", image="a.jpg")]
    with pytest.raises(ConfigError, match=r"record i has an image \('a.jpg'\): pass the image folder"):
        LlavaDataset(records, processor)
    ds = LlavaDataset(records, processor, resolve_images=False)  # token statistics only
    assert ds.is_multimodal == [False, True] and ds[1].images[0].name == "a.jpg"
    with pytest.raises(ConfigError, match="is not a directory"):
        LlavaDataset(records, processor, image_folder=folder / "nope")


def test_symlink_escape_is_a_bad_record(processor, folder, tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (folder / "evil.jpg").symlink_to(tmp_path / "secret.jpg")
    ds = LlavaDataset([rec("e", "<image>", "a", image="evil.jpg"), rec("t", "q", "a")], processor,
                      image_folder=folder, max_bad_fraction=1.0)
    assert [i for i, _ in ds.report.bad] == ["e"] and "a symlink leads" in ds.report.bad[0][1]


def long_conv(rid, rounds, image=True):
    turns = []
    for r in range(rounds):
        turns += [("<image>\n" if r == 0 and image else "") + f"question {r} " + "x" * 20, f"answer {r} " + "y" * 20]
    return rec(rid, *turns, image="a.jpg" if image else None)


def test_long_samples_dropped_with_ids(processor, folder):
    records = [long_conv("short", 1), long_conv("long", 6)]
    full = LlavaDataset(records, processor, image_folder=folder)
    limit = full.lengths[0] + 10
    ds = LlavaDataset(records, processor, image_folder=folder, max_length=limit, long_policy="drop")
    assert [ds[i].id for i in range(len(ds))] == ["short"]
    assert ds.report.dropped == [("long", full.lengths[1])]
    assert "1 dropped as too long: long" in ds.report.summary()


def test_long_samples_cut_at_a_turn_boundary(processor, folder):
    records = [long_conv("long", 6)]
    full = LlavaDataset(records, processor, image_folder=folder)
    msgs = full.messages(0)
    prefix_lengths = [len(processor.encode(msgs[: 2 * k])) for k in range(1, 7)]
    limit = (prefix_lengths[2] + prefix_lengths[3]) // 2  # 3 rounds fit, 4 do not
    ds = LlavaDataset(records, processor, image_folder=folder, max_length=limit, long_policy="truncate")
    ex = ds[0]
    assert ds.report.cut == [("long", 12, 6)] and not ds.report.dropped
    assert ex.input_ids == processor.encode(msgs[:6]).input_ids and len(ex) == ds.lengths[0] <= limit
    assert ex.input_ids.count(processor.image_token_id) == N  # the image span is whole
    assert processor.tokenizer.decode(ex.input_ids).endswith("answer 2 " + "y" * 20 + "</s>")
    # the first round alone does not fit: dropped, never cut inside it (or inside the image span)
    tiny = LlavaDataset(records, processor, image_folder=folder, max_length=N + 5, long_policy="truncate")
    assert len(tiny) == 0 and tiny.report.dropped == [("long", full.lengths[0])]


def test_a_cut_multi_image_sample_keeps_only_the_images_of_its_kept_turns(processor, folder):
    (folder / "b.jpg").write_bytes(b"second image")
    record = rec("two", "<image>\nq0", "a0 " + "x" * 30, "<image>\nq1", "a1 " + "y" * 30, image=["a.jpg", "b.jpg"])
    full = LlavaDataset([record], processor, image_folder=folder)
    assert len(full[0].images) == 2 and full[0].input_ids.count(processor.image_token_id) == 2 * N
    one_turn = len(processor.encode(full.messages(0)[:2]))
    ds = LlavaDataset([record], processor, image_folder=folder, max_length=one_turn, long_policy="truncate")
    ex = ds[0]
    assert ds.report.cut == [("two", 4, 2)]
    assert ex.images == [(folder / "a.jpg").resolve()] and ds.image_paths(0) == ex.images
    assert ex.input_ids.count(processor.image_token_id) == N  # positions and images agree


def test_truncate_keeps_a_leading_system_turn(processor):
    turns = [{"from": "system", "value": "Be terse."}]
    for r in range(4):
        turns += [{"from": "human", "value": f"q{r}" * 10}, {"from": "gpt", "value": f"a{r}" * 10}]
    records = [{"id": "s", "conversations": turns}]
    full = LlavaDataset(records, processor)
    two = len(processor.encode(full.messages(0)[:5]))
    ds = LlavaDataset(records, processor, max_length=two, long_policy="truncate")
    assert ds.messages(0)[0] == Message("system", "Be terse.") and len(ds.messages(0)) == 5
    assert processor.tokenizer.decode(ds[0].input_ids).startswith("Be terse. USER: q0")


def placements(ds):
    return [processor_text.split(" ASSISTANT:")[0] for processor_text in
            (ds.processor.tokenizer.decode(ds[i].input_ids) for i in range(len(ds)))]


def test_random_placement_is_seeded_per_sample(processor, folder):
    records = [rec(f"r{i}", "<image>\nWhat is shown?", "A thing.", image="a.jpg") for i in range(40)]
    a = placements(LlavaDataset(records, processor, image_folder=folder, image_placement="random", seed=1))
    b = placements(LlavaDataset(records, processor, image_folder=folder, image_placement="random", seed=1))
    c = placements(LlavaDataset(records, processor, image_folder=folder, image_placement="random", seed=2))
    before = "S USER: " + "<image>" * N + "\nWhat is shown?"
    after = "S USER: What is shown?\n" + "<image>" * N
    assert a == b and a != c and set(a) == {before, after}
    keep = placements(LlavaDataset([rec("k", "Look: <image> now", "ok", image="a.jpg")], processor,
                                   image_folder=folder, image_placement="keep"))
    assert keep == ["S USER: Look: " + "<image>" * N + " now"]
    with pytest.raises(ConfigError, match="image_placement"):
        LlavaDataset(records, processor, image_folder=folder, image_placement="sometimes")


def test_random_placement_is_the_same_in_another_process(processor, folder, tmp_path):
    records = [rec(f"r{i}", "<image>\nWhat?", "A.", image="a.jpg") for i in range(16)]
    here = placements(LlavaDataset(records, processor, image_folder=folder, image_placement="random", seed=3))
    data = tmp_path / "r.json"
    data.write_text(json.dumps(records))
    code = (
        "import json,sys\n"
        "from llavakit.data.dataset import LlavaDataset, load_records\n"
        "from llavakit.conversation.processor import Processor\n"
        "from llavakit.model.lm import build_byte_tokenizer\n"
        "p = Processor(build_byte_tokenizer(), 'vicuna_v1', num_image_tokens=4, system_prompt='S')\n"
        f"ds = LlavaDataset(load_records({str(data)!r}), p, image_folder={str(folder)!r}, image_placement='random', seed=3)\n"
        "print(json.dumps([ds[i].input_ids for i in range(len(ds))]))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    ids = json.loads(out.stdout.strip().splitlines()[-1])
    there = [processor.tokenizer.decode(x).split(" ASSISTANT:")[0] for x in ids]
    assert there == here


def test_bad_options(processor):
    with pytest.raises(ConfigError, match="long_policy"):
        LlavaDataset([], processor, long_policy="cut")
    with pytest.raises(ConfigError, match="max_length"):
        LlavaDataset([], processor, max_length=0)
