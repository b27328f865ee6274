"""`llavakit quickstart --budget tiny` and `llavakit reproduce --study tiny`: the plumbing end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from llavakit.cli import main
from llavakit.errors import ConfigError
from llavakit.pipelines.quickstart import STEPS, Quickstart
from llavakit.pipelines.reproduce import ROWS, Reproduce, Row, mix


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVAKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_quickstart_tiny_end_to_end_then_resumes(tmp_path, cache_dir, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--budget", "tiny", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr()
    model_dir = out / "stage2" / "model"
    assert f"llavakit chat {model_dir} --image" in printed.out
    assert f"llavakit serve {model_dir}" in printed.out
    assert "step/s" not in printed.err and "img/s" not in printed.err  # --quiet: no tqdm bars from training
    for step in STEPS:
        assert (out / "steps" / f"{step}.json").is_file(), step
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "blind" in report and "POPE" in report
    for png in ("loss_curves.png", "accuracy.png", "examples.png"):
        assert (out / "report" / png).stat().st_size > 1000, png
    ev = json.loads((out / "steps" / "eval.json").read_text(encoding="utf-8"))
    assert set(ev["synth"]["conditions"]) == {"image", "blind", "paraphrased"}
    stage2 = json.loads((out / "steps" / "stage2.json").read_text(encoding="utf-8"))
    assert stage2["steps"] > 0 and stage2["final_loss"] is not None

    from llavakit.model import load_model

    load_model(str(model_dir))  # the trained model is a loadable checkpoint
    # it records what it (and its stage-1 projector) was trained on; the held-out split is not that
    trained = json.loads((model_dir / "training.json").read_text(encoding="utf-8"))
    train_images = str((out / "scenes" / "train" / "images").resolve())
    assert trained["stage"] == 2 and trained["image_folder"] == train_images
    assert trained["from"][0]["stage"] == 1 and trained["from"][0]["image_folder"] == train_images
    aligned = trained["from"][0]["from"][0]  # stage 1 started from the align step's projector
    assert aligned["stage"] == "align" and aligned["image_folder"] == train_images
    assert ev["synth"]["warnings"] == [] and ev["pope"]["warnings"] == []

    # a rerun skips every finished step (the report is rewritten) and keeps the results
    assert main(["quickstart", "--budget", "tiny", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    for step in STEPS[:-1]:
        assert f"{step}: done before" in err
    assert json.loads((out / "steps" / "stage2.json").read_text(encoding="utf-8")) == stage2


def test_quickstart_refuses_an_out_dir_of_other_settings(tmp_path):
    (tmp_path / "quickstart.json").write_text(json.dumps({"preset": "nano"}), encoding="utf-8")
    with pytest.raises(ConfigError, match="other settings"):
        Quickstart(tmp_path, "tiny").run(say=lambda _: None)
    with pytest.raises(ConfigError, match="unknown quickstart budget"):
        Quickstart(tmp_path / "x", "huge")


def test_a_run_dir_recorded_before_the_budget_rename_is_still_the_same_run(tmp_path):
    qs = Quickstart(tmp_path, "tiny")
    old = dict(qs.steps.signature)
    old["preset"] = old.pop("budget_name")
    (tmp_path / "quickstart.json").write_text(json.dumps(old), encoding="utf-8")
    qs.steps.claim()  # same settings under the old key: accepted, and recorded under the new one
    assert json.loads((tmp_path / "quickstart.json").read_text(encoding="utf-8"))["budget_name"] == "tiny"
    old["budget_name"] = old.pop("preset").replace("tiny", "nano")
    (tmp_path / "quickstart.json").write_text(json.dumps(old), encoding="utf-8")
    with pytest.raises(ConfigError, match="budget 'nano'"):
        qs.steps.claim()


def _records(kind: str, n: int) -> list[dict]:
    return [{"id": f"{kind}-{i}", "type": kind, "image": f"{i}.png", "conversations": []} for i in range(n)]


def test_mix_keeps_the_budget_and_the_vqa_half():
    records = [r for k in ("vqa", "conversation", "detail", "reasoning") for r in _records(k, 20)]
    for row in ROWS:
        picked = mix(records, row, 24)
        kinds = [r["type"] for r in picked]
        assert len(picked) == 24 and kinds.count("vqa") == 12
        assert {k for k in kinds if k != "vqa"} == set(row.types)
        assert len({r["id"] for r in picked}) == 24  # no record twice
    assert mix(records, ROWS[0], 24) == mix(records, ROWS[0], 24)  # seeded
    with pytest.raises(ConfigError, match="needs 12 detail records"):
        mix(_records("vqa", 30) + _records("detail", 3), Row("d", "", "c", ("detail",)), 24)


def test_reproduce_tiny_rows_table_and_plot(tmp_path, cache_dir):
    out = tmp_path / "rp"
    rep = Reproduce(out, "tiny", progress=False)
    results = rep.run(say=lambda _: None)
    assert set(results) == {r.name for r in ROWS} | {"clip-layer"}
    full, fresh = results["full"], results["stage2-only"]
    assert set(full["synth"]["conditions"]) == {"image", "blind"}
    assert set(fresh["synth"]["conditions"]) == {"image"}
    for kind in ("conversation", "detail", "reasoning", "all"):
        loss = full["answer_loss"][kind]
        assert loss["tokens"] > 0
        assert loss["image_gain"] == pytest.approx(loss["mismatched_loss"] - loss["loss"])
    cfg = json.loads((out / "rows" / "stage2-only" / "stage2" / "config.json").read_text(encoding="utf-8"))
    assert cfg["projector"] == "fresh"
    cfg = json.loads((out / "rows" / "full" / "stage2" / "config.json").read_text(encoding="utf-8"))
    assert cfg["projector"].endswith("projector")
    clip = results["clip-layer"]
    assert clip["feature_max_abs_diff"] > 0  # the switch selects another hidden state
    assert clip["layer-1"]["steps"] == clip["layer-2"]["steps"] > 0
    table = (out / "reproduction.md").read_text(encoding="utf-8")
    for row in ROWS:
        assert f"`{row.name}`" in table
    assert "switch check" in table
    assert (out / "reproduction.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="unknown row"):
        Reproduce(out, "tiny", rows=["nope"])


def test_a_seed_draws_another_training_split_and_order_but_the_same_heldout(tmp_path, monkeypatch):
    import llavakit.train

    qs = Quickstart(tmp_path / "s3", "tiny", seed=3, progress=False)
    qs.scenes()
    base = Quickstart(tmp_path / "s0", "tiny", progress=False)
    base.scenes()
    names = lambda q, split: sorted(p.name for p in (q.paths[split] / "images").iterdir())  # noqa: E731
    assert names(qs, "train") != names(base, "train")
    assert names(qs, "heldout") == names(base, "heldout")
    seen = []
    monkeypatch.setattr(llavakit.train, "run", lambda cfg, resume: seen.append(cfg) or SimpleNamespace(to_dict=dict))
    qs.train(2, [])
    base.train(2, [])
    assert [cfg.seed for cfg in seen] == [42 + 3, 42]


def test_a_bad_seed_or_another_seeds_out_dir_is_refused(tmp_path):
    for bad in (-1, 1000, 2.5, True):
        with pytest.raises(ConfigError, match="--seed"):
            Quickstart(tmp_path / "x", "tiny", seed=bad)
    Quickstart(tmp_path, "tiny", seed=1).steps.claim()
    with pytest.raises(ConfigError, match="other settings"):
        Quickstart(tmp_path, "tiny", seed=2).steps.claim()


def test_a_run_dir_recorded_before_seeds_is_seed_zero(tmp_path):
    qs = Quickstart(tmp_path, "tiny")
    old = {k: v for k, v in qs.steps.signature.items() if k != "seed"}
    (tmp_path / "quickstart.json").write_text(json.dumps(old), encoding="utf-8")
    qs.steps.claim()
    with pytest.raises(ConfigError, match="other settings"):
        Quickstart(tmp_path, "tiny", seed=5).steps.claim()
