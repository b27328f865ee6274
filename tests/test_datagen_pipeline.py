"""`llavakit datagen` end to end: template and openai teachers, the LLaVA output, rejections and
failures counted by reason, resume, shards, and kill -9 in the middle of a run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llavakit.cli import main
from llavakit.conversation.processor import to_messages
from llavakit.datagen.cache import read_cache
from llavakit.datagen.scenes import categories, sample_scene, scene_record
from llavakit.datagen.world import SceneConfig
from openai_stub import OpenAIStub

ROOT = Path(__file__).resolve().parents[1]


def make_world(directory: Path, n: int, seed: int = 5) -> tuple[Path, Path]:
    """COCO instances + captions for n scenes (no image files: datagen reads only the JSON)."""
    from llavakit.datagen.captions import scene_captions
    from llavakit.datagen.facts import image_facts
    import random

    cfg = SceneConfig()
    images, anns, caps = [], [], []
    names = {c["id"]: c["name"] for c in categories(cfg)}
    for i in range(n):
        image, a = scene_record(sample_scene(cfg, seed, i))
        images.append(image)
        anns += a
        for k, text in enumerate(scene_captions(image_facts(image, a, names), random.Random(i))):
            caps.append({"id": image["id"] * 10 + k, "image_id": image["id"], "caption": text})
    directory.mkdir(parents=True, exist_ok=True)
    inst, cap = directory / "instances.json", directory / "captions.json"
    inst.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories(cfg)}))
    cap.write_text(json.dumps({"images": images, "annotations": caps}))
    return cap, inst


def teacher_reply(messages) -> str:
    """A deterministic fake teacher: valid block format per type; every 7th context refuses."""
    system, context = messages[0]["content"], messages[-1]["content"]
    first = context.splitlines()[0]
    if int(hashlib.sha256(context.encode()).hexdigest(), 16) % 7 == 0:
        return "I'm sorry, but I can't help with that."
    if "Write a conversation" in system:
        return f"Question: What does the image show?\nAnswer: {first}\n\nQuestion: Is it colorful?\nAnswer: Yes, it is."
    if "Describe the image in rich detail" in system:
        return f"{first} The shapes are drawn flat and clean, each one separate from the others, on a calm backdrop."
    return (f"Question: How many lines would describe this?\nAnswer: I look at the scene and count "
            f"{len(context.splitlines())} separate things to say, so the answer is {len(context.splitlines())}.")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), 24)


def _check_llava(records):
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    for r in records:
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and conv
        assert conv[0]["value"].startswith("<image>\n") and conv[0]["value"].count("<image>") == 1
        assert all("<image>" not in t["value"] for t in conv[1:])
        assert all(t["value"].strip() for t in conv)
        msgs = to_messages(conv, r["id"])
        assert msgs[0].role == "user" and msgs[-1].role == "assistant"


def test_template_teacher_all_types(world, tmp_path, capsys):
    cap, inst = world
    out = tmp_path / "instruct.json"
    args = ["datagen", "--captions", str(cap), "--instances", str(inst), "--types",
            "conversation,detail,reasoning,vqa:2", "--teacher", "template", "--out", str(out), "--quiet"]
    assert main(args) == 0
    records = json.loads(out.read_text())
    assert len(records) == 24 * 5
    _check_llava(records)
    assert {r["type"] for r in records} == {"conversation", "detail", "reasoning", "vqa"}
    assert records[0]["id"] == "5000000-conversation-0" and records[0]["image"] == "s5_000000.png"
    stats = json.loads((tmp_path / "instruct.stats.json").read_text())
    assert stats["per_type"]["vqa"] == {"jobs": 48, "ok": 48} and stats["generated_now"] == {"ok": 120}
    first = out.read_bytes()
    assert main(args) == 0  # resume: everything cached, identical output
    assert out.read_bytes() == first
    assert json.loads((tmp_path / "instruct.stats.json").read_text())["from_cache"] == 120
    assert main(args[:-1] + ["--limit", "3", "--cache-dir", str(tmp_path / "c2"), "--quiet"]) == 0
    assert len(json.loads(out.read_text())) == 15
    assert main(["datagen", "--captions", str(cap), "--out", str(out), "--types", "vqa"]) == 2  # needs --instances
    assert "needs --instances" in capsys.readouterr().err


def _openai_args(cap, inst, out, stub, *extra):
    return ["datagen", "--captions", str(cap), "--instances", str(inst), "--teacher", "openai",
            "--base-url", stub.base_url, "--model", "fake-teacher", "--out", str(out), "--quiet",
            "--price-in", "1", "--price-out", "2", *extra]


def test_openai_teacher_rejections_failures_and_resume(world, tmp_path):
    cap, inst = world
    out = tmp_path / "o.json"
    with OpenAIStub(reply=teacher_reply, fail_first=5, fail_status=500) as stub:
        # 5 jobs fail for good (no retries): not cached, exit status 1, listed with their reason
        assert main(_openai_args(cap, inst, out, stub, "--max-retries", "0", "--types",
                                 "conversation,detail,reasoning,vqa")) == 1
        stats = json.loads((tmp_path / "o.stats.json").read_text())
        assert stats["not_in_output"]["failed:http_500"]["count"] == 5
        rejected = stats["not_in_output"]["rejected:refusal"]["count"]
        assert rejected > 0 and stats["usage"]["openai"]["cost_usd"] > 0
        assert len(stub.chat_requests()) == 72  # vqa comes from the annotations, never from the server
        # the rerun asks only for the failed ones
        assert main(_openai_args(cap, inst, out, stub, "--types", "conversation,detail,reasoning,vqa")) == 0
        assert len(stub.chat_requests()) == 72 + 5
        stats = json.loads((tmp_path / "o.stats.json").read_text())
        assert "failed:http_500" not in stats["not_in_output"] and stats["from_cache"] == 96 - 5
        rejected = stats["not_in_output"]["rejected:refusal"]["count"]
        assert len(stats["not_in_output"]["rejected:refusal"]["keys"]) == rejected  # listed by id
        records = json.loads(out.read_text())
        assert len(records) == 96 - rejected
        _check_llava(records)
        detail = next(r for r in records if r["type"] == "detail")
        assert detail["conversations"][1]["value"].endswith("on a calm backdrop.")
        # --retry-rejected asks again for exactly the rejected ones
        assert main(_openai_args(cap, inst, out, stub, "--retry-rejected", "--types",
                                 "conversation,detail,reasoning,vqa")) == 0
        assert len(stub.chat_requests()) == 72 + 5 + rejected
        sent = stub.chat_requests()[-1]["body"]["messages"]
        assert sent[0]["role"] == "system" and "[0." in sent[-1]["content"]  # captions + boxes context


def test_openai_teacher_garbage(world, tmp_path):
    cap, inst = world
    with OpenAIStub(reply=lambda m: "%%%% 1234 #### @@@@ " * 5) as stub:
        assert main(_openai_args(cap, inst, tmp_path / "g.json", stub, "--limit", "2")) == 0
        stats = json.loads((tmp_path / "g.stats.json").read_text())
        assert stats["not_in_output"]["rejected:garbled"]["count"] == 6 and stats["records"] == 0
        stub.mode = "garbage"  # a 200 whose body is not JSON: a failure, not cached, not retried
        assert main(_openai_args(cap, inst, tmp_path / "h.json", stub, "--limit", "2")) == 1
        stats = json.loads((tmp_path / "h.stats.json").read_text())
        assert stats["not_in_output"]["failed:bad_response"]["count"] == 6
        assert "not valid JSON" in next(iter(stats["failure_details"].values()))
        assert read_cache(tmp_path / "h.json.cache").records == {}


def test_shards_then_merge_equal_one_run(world, tmp_path):
    cap, inst = world
    with OpenAIStub(reply=teacher_reply) as stub:
        one = tmp_path / "one.json"
        assert main(_openai_args(cap, inst, one, stub)) == 0
        n_single = len(stub.chat_requests())
        split = tmp_path / "split.json"
        for i in range(3):
            assert main(_openai_args(cap, inst, split, stub, "--shard", f"{i}/3")) == 0
            assert not split.exists()  # shards do not merge
        assert len(stub.chat_requests()) == 2 * n_single  # the shards together did each job once
        files = sorted(p.name for p in (tmp_path / "split.json.cache").glob("*.jsonl"))
        assert files == ["shard-0-of-3.jsonl", "shard-1-of-3.jsonl", "shard-2-of-3.jsonl"]
        assert main(_openai_args(cap, inst, split, stub, "--merge-only")) == 0
        assert len(stub.chat_requests()) == 2 * n_single
    assert json.loads(split.read_text()) == json.loads(one.read_text())


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill_midway(cmd: list[str], cache_file: Path, at_lines: int) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _lines(cache_file) < at_lines:
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _lines(cache_file)


def test_kill_and_resume_openai(world, tmp_path):
    cap, inst = world
    with OpenAIStub(reply=teacher_reply, latency=0.03) as stub:
        ref = tmp_path / "ref.json"
        assert main(_openai_args(cap, inst, ref, stub)) == 0
        total = len(stub.chat_requests())
        out = tmp_path / "killed.json"
        cmd = [sys.executable, "-m", "llavakit", *_openai_args(cap, inst, out, stub, "--concurrency", "4")]
        kept = _kill_midway(cmd, tmp_path / "killed.json.cache" / "all.jsonl", at_lines=20)
        assert 20 <= kept < total and not out.exists()
        before = len(stub.chat_requests())
        assert main(_openai_args(cap, inst, out, stub)) == 0
        cached = len(read_cache(tmp_path / "killed.json.cache").records)
        assert cached == total
        assert len(stub.chat_requests()) - before == total - kept  # finished work is never asked again
    assert json.loads(out.read_text()) == json.loads(ref.read_text())


def test_kill_and_resume_template(tmp_path):
    cap, inst = make_world(tmp_path / "w", 40, seed=6)
    types = "conversation:40,detail:40,reasoning:40,vqa:40"
    args = ["datagen", "--captions", str(cap), "--instances", str(inst), "--types", types, "--quiet"]
    ref = tmp_path / "ref.json"
    assert main(args + ["--out", str(ref)]) == 0
    out = tmp_path / "killed.json"
    cache = tmp_path / "killed.json.cache" / "all.jsonl"
    _kill_midway([sys.executable, "-m", "llavakit", *args, "--out", str(out)], cache, at_lines=300)
    # simulate the worst case on top: a torn last line
    with open(cache, "ab") as fh:
        fh.write(b'{"key": "torn-in-the-midd')
    assert main(args + ["--out", str(out)]) == 0
    stats = json.loads((tmp_path / "killed.stats.json").read_text())
    assert stats["cache"]["torn_lines_skipped"] == 1 and stats["cache"]["torn_bytes_repaired"] > 0
    assert stats["cache"]["duplicate_keys"] == 0
    assert out.read_bytes() == ref.read_bytes()
    assert len(read_cache(cache.parent).records) == 40 * 160


def test_bad_arguments(world, tmp_path, capsys):
    cap, inst = world
    base = ["datagen", "--captions", str(cap), "--instances", str(inst), "--out", str(tmp_path / "x.json")]
    for extra, msg in [(["--types", "conversation,poems"], "unknown type 'poems'"),
                       (["--types", "vqa:0"], "positive number of variants"),
                       (["--shard", "3/2"], "0 <= I < N"), (["--teacher", "gpt"], "known teachers"),
                       (["--teacher", "openai"], "needs --model"), (["--model", "m"], "only apply to --teacher openai")]:
        assert main(base + extra) == 2
        assert msg in capsys.readouterr().err


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    from llavakit.datagen.pipeline import exclusive
    from llavakit.errors import ConfigError

    lock = tmp_path / "out.cache" / ".shard-0-of-1.lock"
    with exclusive(lock, "out.json"):
        with pytest.raises(ConfigError, match="out.json is being written by another run"):
            with exclusive(lock, "out.json"):
                pass
    with exclusive(lock, "out.json"):  # free again once the first run ends
        pass
