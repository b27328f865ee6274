"""`llavakit infer` / run_inference: model_vqa formats, batching, resume, shards, blind mode."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from llavakit.cli import main
from llavakit.conversation.templates import Message
from llavakit.errors import DataError, LlavakitError
from llavakit.serve.infer import answered_ids, read_questions, run_inference, shard
from reference_generation import answer

KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.fixture
def qset(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 0)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (40 + 8 * i, 32), colour).save(folder / f"{i}.png")
    questions = [{"question_id": i, "image": f"{i}.png", "text": f"What colour is picture {i}?"} for i in range(4)]
    questions += [{"question_id": "t1", "text": "A question without an image"},
                  {"question_id": "t2", "text": "<image>\nPlaced by hand", "image": "0.png"},
                  {"question_id": 7, "text": "Another text-only question, longer than the others by a bit"}]
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return questions, folder, qfile


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batched_answers_equal_one_at_a_time_in_question_order(tiny_model, qset, tmp_path):
    questions, folder, _ = qset
    batched = run_inference(tiny_model, questions, folder, tmp_path / "b.jsonl", batch_size=4, max_new_tokens=6,
                            model_id="tiny", progress=False)
    single = run_inference(tiny_model, questions, folder, tmp_path / "s.jsonl", batch_size=1, max_new_tokens=6,
                           progress=False)
    b, s = read(batched), read(single)
    assert [r["question_id"] for r in b] == [q["question_id"] for q in questions]
    assert [r["text"] for r in b] == [r["text"] for r in s]
    assert all(set(r) == KEYS and r["model_id"] == "tiny" for r in b)
    assert b[0]["prompt"] == questions[0]["text"] and b[0]["metadata"]["completion_tokens"] <= 6
    img = Image.open(folder / "1.png").convert("RGB")
    direct = answer(tiny_model, [Message("user", "<image>\nWhat colour is picture 1?")], [img], max_new_tokens=6)
    assert b[1]["text"] == direct.strip()
    assert b[4]["text"] == answer(tiny_model, [Message("user", "A question without an image")], max_new_tokens=6).strip()


def test_resume_skips_answered_ids_and_drops_a_torn_last_line(tiny_model, qset, tmp_path):
    questions, folder, _ = qset
    out = tmp_path / "a.jsonl"
    run_inference(tiny_model, questions[:3], folder, out, batch_size=2, max_new_tokens=4, progress=False)
    first = read(out)
    with open(out, "a") as fh:
        fh.write('{"question_id": 3, "prompt": "What col')  # a run killed mid-write
    run_inference(tiny_model, questions, folder, out, batch_size=2, max_new_tokens=4, progress=False)
    rows = read(out)
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions]
    assert rows[:3] == first  # kept, not regenerated
    out.write_text(out.read_text().replace("}\n", "}\nnot json\n", 1))
    with pytest.raises(DataError, match=r"a.jsonl:2"):
        answered_ids(out)


def test_shards_are_contiguous_and_cover_everything(tiny_model, qset, tmp_path):
    questions, folder, _ = qset
    parts = [run_inference(tiny_model, questions, folder, tmp_path / f"{k}.jsonl", batch_size=3, max_new_tokens=3,
                           num_shards=3, shard_index=k, progress=False) for k in range(3)]
    ids = [r["question_id"] for p in parts for r in read(p)]
    assert ids == [q["question_id"] for q in questions]
    assert [len(shard(list(range(7)), 3, k)) for k in range(3)] == [3, 3, 1]
    with pytest.raises(LlavakitError, match="shard-index"):
        shard([1], 2, 2)


def test_image_override_replaces_every_image(tiny_model, qset, tmp_path):
    questions, folder, _ = qset
    blank = Image.new("RGB", (32, 32), (128, 128, 128))
    out = run_inference(tiny_model, questions[:2], None, tmp_path / "blind.jsonl", max_new_tokens=5,
                        image_override=blank, progress=False)  # no folder needed: images never read
    direct = answer(tiny_model, [Message("user", "<image>\nWhat colour is picture 0?")], [blank], max_new_tokens=5)
    assert read(out)[0]["text"] == direct.strip()


def test_missing_images_and_bad_files_are_reported(tiny_model, qset, tmp_path):
    questions, folder, _ = qset
    broken = questions + [{"question_id": "x9", "image": "gone.png", "text": "?"}]
    with pytest.raises(DataError, match="x9: .*gone.png"):
        run_inference(tiny_model, broken, folder, tmp_path / "m.jsonl", progress=False)
    with pytest.raises(DataError, match="duplicate question_id"):
        run_inference(tiny_model, questions + questions[:1], folder, tmp_path / "d.jsonl", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "text": "ok"}\n{"question_id": 2}\n')
    with pytest.raises(DataError, match="record 2"):
        read_questions(bad)
    with pytest.raises(DataError, match="has no image"):
        run_inference(tiny_model, [{"question_id": 1, "text": "<image> but none"}], folder, tmp_path / "n.jsonl",
                      progress=False)


def test_infer_cli(qset, tmp_path, capsys):
    _, folder, qfile = qset
    out = tmp_path / "cli.jsonl"
    args = ["infer", "tiny-random", "--questions", str(qfile), "--image-folder", str(folder), "--out", str(out),
            "--batch-size", "3", "--max-new-tokens", "3", "--no-progress"]
    assert main(args) == 0
    assert "7 new answer(s)" in capsys.readouterr().out
    assert main(args + ["--blind"]) == 0  # everything answered already: resumes to nothing
    assert "0 new answer(s), 7" in capsys.readouterr().out
    rows = read(out)
    assert len(rows) == 7 and rows[0]["model_id"] == "tiny-random"


def test_an_image_field_that_is_not_a_path_names_its_record(tmp_path):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"question_id": "q9", "image": 42, "text": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"record 1 \(question_id 'q9'\): image must be a file path .* got 42"):
        read_questions(qfile)


def test_images_must_stay_inside_the_image_folder(tiny_model, qset, tmp_path):
    _, folder, _ = qset
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    (folder / "link.png").symlink_to(outside)
    for image in ("../secret.png", str(outside), "link.png"):
        with pytest.raises(DataError, match="resolves outside --image-folder"):
            run_inference(tiny_model, [{"question_id": "x", "image": image, "text": "hi"}], folder,
                          tmp_path / "a.jsonl", max_new_tokens=2, progress=False)


def test_a_corrupt_image_stops_or_is_skipped_and_listed(tiny_model, qset, tmp_path):
    questions, folder, _ = qset
    (folder / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="question 1: image .*1.png cannot be decoded"):
        run_inference(tiny_model, questions, folder, tmp_path / "a.jsonl", max_new_tokens=2, progress=False)
    out = run_inference(tiny_model, questions, folder, tmp_path / "b.jsonl", max_new_tokens=2, progress=False,
                        skip_bad_images=True)
    assert [r["question_id"] for r in read(out)] == [q["question_id"] for q in questions if q["question_id"] != 1]
    assert list(json.loads((tmp_path / "b.jsonl.skipped.json").read_text())) == ["1"]
    Image.new("RGB", (8, 8)).save(folder / "1.png")  # fixed: the rerun answers it and drops the list
    run_inference(tiny_model, questions, folder, tmp_path / "b.jsonl", max_new_tokens=2, progress=False,
                  skip_bad_images=True)
    assert len(read(out)) == len(questions) and not (tmp_path / "b.jsonl.skipped.json").exists()


def test_an_image_over_the_pixel_cap_is_refused_before_decoding(tiny_model, qset, tmp_path):
    questions, folder, _ = qset
    Image.new("RGB", (3000, 1)).save(folder / "thin.png")  # 3,000 pixels, padded to a 9,000,000-pixel square
    thin = [{"question_id": "thin", "image": "thin.png", "text": "hi"}]
    with pytest.raises(DataError, match="question thin: image .*thin.png is 3000x1: this model pads it to a 3000-pixel"):
        run_inference(tiny_model, thin, folder, tmp_path / "a.jsonl", max_new_tokens=2, progress=False,
                      max_image_pixels=1_000_000)
    with pytest.raises(DataError, match=r"is 40x32 = 1280 pixels, over the limit of 1000"):
        run_inference(tiny_model, questions[:1], folder, tmp_path / "b.jsonl", max_new_tokens=2, progress=False,
                      max_image_pixels=1000)
    out = run_inference(tiny_model, thin, folder, tmp_path / "c.jsonl", max_new_tokens=2, progress=False,
                        max_image_pixels=10_000_000)  # under the cap (and its padded square too): answered
    assert [r["question_id"] for r in read(out)] == ["thin"]
