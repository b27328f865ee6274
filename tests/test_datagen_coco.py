"""The COCO reader's symbolic context on a hand-made COCO file, the prompts, the output parser,
and the stage-1 caption set."""

from __future__ import annotations

import json

import pytest

from llavakit.cli import main
from llavakit.datagen.coco import read_coco, symbolic_context
from llavakit.datagen.parse import REASONS, parse_output
from llavakit.datagen.prompts import BRIEF_INSTRUCTIONS, FEW_SHOT, LLM_TYPES, SYSTEM, build_messages
from llavakit.errors import DataError


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco(tmp_path):
    images = [{"id": 7, "file_name": "000007.jpg", "width": 640, "height": 480},
              {"id": 8, "file_name": "000008.jpg", "width": 100, "height": 200},
              {"id": 9, "file_name": "000009.jpg", "width": 50, "height": 50}]
    caps = {"images": images, "annotations": [
        {"id": 1, "image_id": 7, "caption": "A dog runs on the grass."},
        {"id": 2, "image_id": 7, "caption": "  A brown dog chasing a ball.  "},
        {"id": 3, "image_id": 8, "caption": "A red circle."},
        {"id": 4, "image_id": 42, "caption": "An image missing from instances."}]}
    inst = {"images": images, "categories": [{"id": 18, "name": "dog"}, {"id": 37, "name": "sports ball"},
                                             {"id": 1, "name": "circle"}],
            "annotations": [
                {"id": 100, "image_id": 7, "category_id": 18, "bbox": [64, 48, 320, 240], "area": 1, "iscrowd": 0,
                 "segmentation": [[1, 2, 3]]},
                {"id": 101, "image_id": 7, "category_id": 37, "bbox": [500.5, 400, 20.25, 19], "area": 1,
                 "iscrowd": 0},
                {"id": 102, "image_id": 8, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1, "iscrowd": 0,
                 "color": "red", "size": "small"}]}
    return _write(tmp_path / "captions.json", caps), _write(tmp_path / "instances.json", inst)


def test_symbolic_context_is_the_papers_format(coco):
    caps, inst = coco
    data = read_coco(caps, inst)
    by_id = {im.id: im for im in data.images}
    assert symbolic_context(by_id[7], data.categories) == (
        "A dog runs on the grass.\n"
        "A brown dog chasing a ball.\n"
        "dog: [0.100, 0.100, 0.600, 0.600]\n"
        "sports ball: [0.782, 0.833, 0.814, 0.873]")
    # our attributes join the name
    assert symbolic_context(by_id[8], data.categories) == "A red circle.\nsmall red circle: [0.100, 0.100, 0.400, 0.300]"
    assert sorted(data.skipped) == [(9, "no captions"), (42, "not in the instances file")]
    assert "segmentation" not in by_id[7].annotations[0]


def test_reader_errors_name_the_file(tmp_path, coco):
    caps, _ = coco
    bad = _write(tmp_path / "bad.json", {"images": [], "annotations": [{"image_id": 1}]})
    with pytest.raises(DataError, match=r"bad.json: annotations\[0\] needs an image_id and a string caption"):
        read_coco(bad)
    (tmp_path / "torn.json").write_text('{"images": [')
    with pytest.raises(DataError, match="torn.json: invalid JSON"):
        read_coco(tmp_path / "torn.json")
    with pytest.raises(DataError, match="does not exist"):
        read_coco(caps, tmp_path / "nope.json")
    noinst = _write(tmp_path / "noinst.json", {"images": [], "annotations": []})
    with pytest.raises(DataError, match="categories"):
        read_coco(caps, noinst)
    inst = json.loads((tmp_path / "instances.json").read_text())
    inst["images"].append(dict(inst["images"][0]))  # image id 7 twice: duplicate output records
    dup = _write(tmp_path / "dup.json", inst)
    with pytest.raises(DataError, match=r"dup.json: images\[3\] repeats image id 7 \(first at images\[0\]\)"):
        read_coco(caps, dup)
    with pytest.raises(DataError, match=r"repeats image id 7"):
        read_coco(_write(tmp_path / "dupcaps.json", {**json.loads(caps.read_text()), "images": inst["images"]}))


def test_prompts_have_system_and_few_shot_turns():
    for kind in LLM_TYPES:
        msgs = build_messages(kind, "CONTEXT")
        assert msgs[0]["role"] == "system" and msgs[0]["content"] == SYSTEM[kind]
        assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * len(FEW_SHOT[kind]) + ["user"]
        assert msgs[-1]["content"] == "CONTEXT"
        for _, answer in FEW_SHOT[kind]:  # our own few-shot answers pass our own parser
            assert parse_output(kind, answer).ok, (kind, parse_output(kind, answer))
    with pytest.raises(KeyError):
        build_messages("vqa", "x")


GOOD_CONV = "Question: What is there?\nAnswer: A dog on the grass.\n\nQuestion: What color is it?\nAnswer: It is brown."


def test_parser_reads_blocks():
    p = parse_output("conversation", "Sure! Here it is:\n" + GOOD_CONV)
    assert p.ok and p.pairs == [("What is there?", "A dog on the grass."), ("What color is it?", "It is brown.")]
    p = parse_output("conversation", "**Question:** Where?\n**Answer:** On the left,\nnear the tree.\n===\n"
                                     "Q: How many?\nA: Two.")
    assert p.ok and p.pairs == [("Where?", "On the left,\nnear the tree."), ("How many?", "Two.")]
    p = parse_output("reasoning", "Question: Why is it wet?\nAnswer: It is raining, and the dog has no cover, "
                                  "so its fur gets wet.")
    assert p.ok and len(p.pairs) == 1
    text = "A brown dog runs across a green lawn, chasing a small ball that bounces near the right edge of the picture."
    assert parse_output("detail", text).text == text


@pytest.mark.parametrize("kind, text, finish, reason", [
    ("conversation", "   ", None, "empty"),
    ("detail", "A dog runs across the lawn chasing a ball near the edge of the picture, and then it", "length",
     "truncated"),
    ("detail", "A dog runs across the lawn chasing a ball near the edge of the picture and then it stops to", None,
     "truncated"),
    ("conversation", "Question: What is in <image>?\nAnswer: A dog.", None, "image_token"),
    ("detail", "@@@ ### 1234 5678 %%%% ^^^^ &&&& **** (((( ))))", None, "garbled"),
    ("detail", "The dog " + "is running and " * 12 + "done.", None, "garbled"),
    ("detail", "A dog\x00 on grass with a ball, running fast across the big green lawn today.", None, "garbled"),
    ("conversation", "I'm sorry, but I cannot help with describing this image.", None, "refusal"),
    ("detail", "As an AI language model, I have no eyes, but the picture probably shows a dog on a lawn.", None,
     "refusal"),
    ("detail", "Based on the captions, a dog runs on grass and a ball lies near it in the right corner.", None,
     "mentions_context"),
    ("conversation", "Question: Where is the dog?\nAnswer: Its bounding box spans the left half.", None,
     "mentions_context"),
    ("conversation", "The dog is brown and runs on the grass.", None, "format"),
    ("conversation", "Question: What is there?\nQuestion: And what else?\nAnswer: A dog.", None, "format"),
    ("conversation", "Question: What is there?", None, "format"),
    ("reasoning", GOOD_CONV, None, "format"),
    ("detail", GOOD_CONV, None, "format"),
    ("detail", "A dog on grass.", None, "too_short"),
    ("reasoning", "Question: Why?\nAnswer: Because it rains.", None, "too_short"),
])
def test_parser_rejects_with_reason(kind, text, finish, reason):
    p = parse_output(kind, text, finish)
    assert not p.ok and p.reason == reason and p.reason in REASONS, (p.reason, p.detail)
    assert p.detail


def test_stage1_caption_set(coco, tmp_path, capsys):
    caps, _ = coco
    out = tmp_path / "stage1.json"
    assert main(["datagen", "captions", "--captions", str(caps), "--out", str(out)]) == 0
    recs = json.loads(out.read_text())
    assert [r["id"] for r in recs] == ["7-caption", "8-caption"]
    stats = json.loads(capsys.readouterr().out)
    assert stats["skipped"] == {"no captions": {"count": 1, "ids": [9]},
                                "captions for an image not in 'images'": {"count": 1, "ids": [42]}}
    for r in recs:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert human["value"].split("\n", 1)[1] in BRIEF_INSTRUCTIONS
        assert gpt["value"] in ("A dog runs on the grass.", "A brown dog chasing a ball.", "A red circle.")
    again = tmp_path / "again.json"
    main(["datagen", "captions", "--captions", str(caps), "--out", str(again)])
    assert again.read_text() == out.read_text()  # deterministic
    assert main(["datagen", "captions", "--captions", str(tmp_path / "missing.json"), "--out", str(out)]) == 2


def test_template_teacher_refuses_real_coco(coco, tmp_path, capsys):
    caps, inst = coco
    args = ["datagen", "--captions", str(caps), "--instances", str(inst), "--out", str(tmp_path / "o.json")]
    (tmp_path / "plain.json").write_text(json.dumps({**json.loads(inst.read_text()), "annotations": [
        a for a in json.loads(inst.read_text())["annotations"] if "color" not in a]}))
    args[4] = str(tmp_path / "plain.json")
    assert main(args) == 2
    assert "for real COCO use --teacher openai" in capsys.readouterr().err


@pytest.mark.parametrize("bbox", [[float("nan"), 0, 1, 1], [0, 0, -1, 2], "oops"])
def test_a_bad_bbox_names_its_annotation(bbox):
    from llavakit.datagen.coco import CocoImage, box_lines

    image = CocoImage(id=5, file_name="a.png", width=10, height=10, captions=["c"],
                      annotations=[{"id": 77, "bbox": bbox, "category_id": 1}])
    with pytest.raises(DataError, match="image 5: annotation 77: bbox"):
        box_lines(image, {1: "cat"})


def test_a_named_api_key_variable_that_is_unset_is_an_error(monkeypatch):
    from llavakit.errors import ConfigError
    from llavakit.llm_client import LLMConfig

    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    with pytest.raises(ConfigError, match="--api-key-env MY_TEACHER_KEY: that environment variable is not set"):
        LLMConfig(model="m", base_url="http://localhost:1/v1", api_key_env="MY_TEACHER_KEY").api_key()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert LLMConfig(model="m", base_url="http://localhost:1/v1").api_key() == "not-needed"  # a local server
