"""What trains in each stage, the artifacts each stage writes, token-weighted accumulation, overfitting."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import changed, snapshot, train_config, write_captions, write_instructions

from llavakit.errors import ConfigError, LlavakitError
from llavakit.model import load_model, load_projector, save_pretrained, save_projector
from llavakit.train.runner import TrainSession


def _names(model, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def test_stage1_changes_only_the_projector_and_writes_the_artifact(tmp_path, tiny_model):
    data, images = write_captions(tmp_path, 8)
    cfg = train_config(tmp_path, 1, data, images, max_steps=2)
    session = TrainSession(cfg)
    model = session.unwrapped
    assert session.data.dataset.processor.template.name == "plain"
    assert not any(p.requires_grad for p in model.language_model.parameters())  # no LLM weight grads
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    before = snapshot(model)
    result = session.train()
    after = snapshot(model)
    assert changed(before, after) == _names(model, "projector.")
    # the artifact is exactly the trained projector, and loads on a fresh base
    fresh = load_model("tiny-random")
    load_projector(fresh, result.artifact)
    for name, value in fresh.projector.state_dict().items():
        assert torch.equal(value, model.projector.state_dict()[name])
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    assert {"lr_projector", "grad_norm", "samples_per_s", "tokens"} <= set(rows[0])
    assert (out / "loss.png").stat().st_size > 1000
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    assert result.global_batch == 4 and result.final_loss == rows[-1]["loss"]
    # a second run into the same directory must not silently start over
    with pytest.raises(ConfigError, match="already holds checkpoints .* pass --resume"):
        TrainSession(cfg)
    with pytest.raises(ConfigError, match="differs from the run .* in optim.lr"):
        TrainSession(train_config(tmp_path, 1, data, images, max_steps=2, **{"optim.lr": 0.5}), resume=True)


def test_stage2_full_trains_projector_and_llm_never_the_tower(tmp_path, tiny_model):
    data, images = write_instructions(tmp_path, 8, text_only=0)
    save_projector(tiny_model, tmp_path / "stage1")
    cfg = train_config(tmp_path, 2, data, images, max_steps=2, projector=str(tmp_path / "stage1"))
    session = TrainSession(cfg)
    model = session.unwrapped
    before = snapshot(model)
    for name, value in tiny_model.projector.state_dict().items():  # started from the stage-1 artifact
        assert torch.equal(before[f"projector.{name}"], value)
    result = session.train()
    diff = changed(before, snapshot(model))
    assert diff == _names(model, "projector.") | _names(model, "language_model.")
    assert not diff & _names(model, "vision_tower.")
    reloaded = load_model(result.artifact)  # a full llavakit checkpoint
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_lora_changes_only_adapters_and_projector_and_saves_merged(tmp_path, tiny_model):
    data, images = write_instructions(tmp_path, 8, text_only=0)
    save_projector(tiny_model, tmp_path / "stage1")
    cfg = train_config(tmp_path, 2, data, images, max_steps=3, tune="lora", projector=str(tmp_path / "stage1"),
                       **{"lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "optim.lr": 1e-2})
    session = TrainSession(cfg)
    model = session.unwrapped
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n} | _names(model, "projector.")
    before = snapshot(model)
    result = session.train()
    diff = changed(before, snapshot(model))
    assert diff == trainable  # every adapter and the projector moved; nothing else did
    assert any("lora_B" in n for n in diff)
    batch = session.data.collator([session.data.dataset[i] for i in range(4)])
    batch.pop("ids"), batch.pop("skipped")
    model.eval()
    merged = load_model(result.artifact)
    with torch.no_grad():
        ref = model(**batch).loss
        got = merged(**batch).loss
    assert got == pytest.approx(float(ref), rel=1e-4)
    # the adapter also leaves in PEFT's own format: PeftModel on the untouched base LM gives the same loss
    from peft import PeftModel

    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "projector").is_dir()
    base = load_model("tiny-random", projector=str(adapter / "projector"))
    base.language_model = PeftModel.from_pretrained(base.language_model, adapter).eval()
    with torch.no_grad():
        assert base(**batch).loss == pytest.approx(float(ref), rel=1e-4)


def test_finetune_starts_from_a_stage2_checkpoint(tmp_path, tiny_model):
    data, images = write_instructions(tmp_path, 4, text_only=0)
    save_pretrained(tiny_model, tmp_path / "stage2")
    cfg = train_config(tmp_path, "finetune", data, images, max_steps=2, model=str(tmp_path / "stage2"))
    session = TrainSession(cfg)
    before = snapshot(session.unwrapped)
    for name, value in tiny_model.named_parameters():
        assert torch.equal(before[name], value)
    session.train()
    diff = changed(before, snapshot(session.unwrapped))
    assert diff and not diff & _names(session.unwrapped, "vision_tower.")
    assert load_model(str(tmp_path / "out" / "model")).config.template == tiny_model.config.template


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(tmp_path):
    data, images = write_instructions(tmp_path, 4, text_only=0)
    # different answer lengths: a mean of per-batch means would weigh tokens unequally
    records = json.loads(data.read_text())
    for i, rec in enumerate(records):
        rec["conversations"][1]["value"] = "word " * (1 + 6 * i)
    data.write_text(json.dumps(records))
    cfg = train_config(tmp_path, 2, data, images, max_steps=1, model="tiny-random",
                       projector=str(_projector(tmp_path)), per_device_batch_size=2, gradient_accumulation_steps=2)
    session = TrainSession(cfg)
    examples = [session.data.dataset[i] for i in range(4)]
    collate = session.data.collator
    params = [p for p in session.unwrapped.parameters() if p.requires_grad]

    def grads(group):
        session.optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens, samples = session.loop.backward(group)
        return float(loss_sum) / tokens, [p.grad.clone() for p in params], samples

    loss_split, g_split, n_split = grads([collate(examples[:2]), collate(examples[2:])])
    loss_whole, g_whole, n_whole = grads([collate(examples)])
    assert n_split == n_whole == 4
    assert loss_split == pytest.approx(loss_whole, rel=1e-6)
    for a, b in zip(g_split, g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    model = session.unwrapped
    with torch.no_grad():
        halves = [float(model(**_model_batch(collate(examples[i:i + 2]), session)).loss) for i in (0, 2)]
    assert abs(sum(halves) / 2 - loss_whole) > 1e-3  # the naive mean of means would differ


def _projector(tmp_path):
    path = tmp_path / "stage1"
    if not path.exists():
        save_projector(load_model("tiny-random"), path)
    return path


def _model_batch(batch, session):
    return session.loop._to_device(batch)


def test_overfits_one_batch_to_near_zero_loss(tmp_path):
    data, images = write_captions(tmp_path, 4)
    cfg = train_config(tmp_path, 2, data, images, max_steps=60, projector=str(_projector(tmp_path)), log_every=10,
                       **{"optim.lr": 3e-3, "optim.projector_lr": 3e-3, "optim.warmup_ratio": 0.0,
                          "optim.scheduler": "constant_with_warmup"})
    result = TrainSession(cfg).train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] > 1.0
    assert result.final_loss < 0.05


def test_gradient_checkpointing_switch_keeps_the_gradients(tmp_path):
    data, images = write_instructions(tmp_path, 4, text_only=0)

    def grads(flag: bool):
        cfg = train_config(tmp_path, 2, data, images, max_steps=1, projector=str(_projector(tmp_path)),
                           gradient_checkpointing=flag, output_dir=str(tmp_path / f"o{flag}"))
        session = TrainSession(cfg)
        assert session.unwrapped.language_model.is_activation_checkpointing == flag
        batch = session.data.collator([session.data.dataset[i] for i in range(4)])
        session.loop.backward([batch])
        return {n: p.grad for n, p in session.unwrapped.named_parameters() if p.requires_grad}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)


def test_resume_refuses_a_changed_step_budget_and_a_torn_config(tmp_path, tiny_model):
    data, images = write_captions(tmp_path, 8)
    TrainSession(train_config(tmp_path, 1, data, images, max_steps=2)).train()
    # the lr schedule spans the planned steps: a resume with another budget would silently change it
    with pytest.raises(ConfigError, match="in max_steps .*learning-rate schedule"):
        TrainSession(train_config(tmp_path, 1, data, images, max_steps=4), resume=True)
    (tmp_path / "out" / "config.json").write_text('{"stage": 1, "mod')
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        TrainSession(train_config(tmp_path, 1, data, images, max_steps=2), resume=True)


def test_loss_plot_skips_steps_without_a_supervised_token(tmp_path):
    from llavakit.train.metrics import plot_loss

    rows = [{"step": i, "loss": None if i % 4 == 0 else 1.0 / i} for i in range(1, 30)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_loss(path, tmp_path / "loss.png").stat().st_size > 1000


def test_attention_choice_per_stage_device_and_precision(tmp_path):
    from llavakit.train.precision import train_attention

    data, images = write_captions(tmp_path, 4)
    s1, s2 = (train_config(tmp_path, stage, data, images, projector="fresh") for stage in (1, 2))
    assert train_attention(s1, "cpu", "bf16", "sdpa") == "sdpa_math"  # the slow CPU flash backward
    assert train_attention(s1, "cpu", "bf16", "eager") is None  # an LM without sdpa keeps its own
    assert train_attention(s1, "cpu", "no", "sdpa") is None
    assert train_attention(s1, "cuda", "bf16", "sdpa") is None
    assert train_attention(s2, "cpu", "bf16", "sdpa") is None
    eager = train_config(tmp_path, 2, data, images, projector="fresh", attention="eager")
    assert train_attention(eager, "cuda", "bf16", "sdpa") == "eager"


def test_an_attention_the_lm_cannot_use_is_a_config_error(tmp_path, monkeypatch, tiny_model):
    from transformers import PreTrainedModel

    def refuse(self, impl):
        raise ValueError(f"{type(self).__name__} does not support {impl}")

    monkeypatch.setattr(PreTrainedModel, "set_attn_implementation", refuse)
    data, images = write_captions(tmp_path, 4)
    with pytest.raises(ConfigError, match="attention=eager: the language model cannot use it"):
        TrainSession(train_config(tmp_path, 1, data, images, attention="eager"))


def _stage1_bf16(tmp_path, monkeypatch, cast: bool, name: str):
    from llavakit.train import precision, runner

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    if not cast:
        monkeypatch.setattr(runner, "frozen_linears_to_bf16", lambda lm: None)
    data, images = write_captions(tmp_path, 8)
    cfg = train_config(tmp_path, 1, data, images, max_steps=2, mixed_precision="bf16", cpu=True,
                       output_dir=str(tmp_path / name))
    session = runner.TrainSession(cfg)
    seen = []
    run = session.loop.run

    def recording_run(*args, **kwargs):  # which sdpa kernels the steps may use
        seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))
        return run(*args, **kwargs)

    monkeypatch.setattr(session.loop, "run", recording_run)
    session.train()
    losses = [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return session.unwrapped, losses, seen


def test_stage1_bf16_casts_frozen_linears_once_and_trains_with_the_math_kernel(tmp_path, monkeypatch, tiny_model):
    model, losses, seen = _stage1_bf16(tmp_path, monkeypatch, cast=True, name="cast")
    lm = model.language_model
    linears = [m for m in lm.modules() if isinstance(m, torch.nn.Linear) and m.weight is not lm.get_input_embeddings().weight]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert lm.get_input_embeddings().weight.dtype == torch.float32  # tied to the head: the residual stays fp32
    assert all(p.dtype == torch.float32 for p in model.projector.parameters())  # trainable: fp32 master weights
    assert seen == [(False, True)]  # flash off, math on while the steps run
    assert torch.backends.cuda.flash_sdp_enabled()  # and restored afterwards
    # autocast computed those linears in bf16 anyway: the same losses as with per-step casts
    _, uncast, _ = _stage1_bf16(tmp_path, monkeypatch, cast=False, name="uncast")
    assert losses == pytest.approx(uncast, rel=1e-5)


def test_training_attention_does_not_leak_into_the_saved_model(tmp_path, tiny_model):
    data, images = write_instructions(tmp_path, 4)
    cfg = train_config(tmp_path, 2, data, images, max_steps=1, projector="fresh", attention="eager")
    session = TrainSession(cfg)
    assert session.unwrapped.language_model.config._attn_implementation == "eager"
    result = session.train()
    assert load_model(str(result.artifact)).language_model.config._attn_implementation == "sdpa"


def test_deterministic_training_does_not_leak_into_the_caller(tmp_path, tiny_model):
    data, images = write_captions(tmp_path, 4)
    assert not torch.are_deterministic_algorithms_enabled()
    session = TrainSession(train_config(tmp_path, 1, data, images, max_steps=1, deterministic=True))
    assert torch.are_deterministic_algorithms_enabled()  # on while the stage trains
    rows = session.train()
    assert not torch.are_deterministic_algorithms_enabled() and rows.steps == 1


def test_the_first_optimizer_step_learns(tmp_path, tiny_model):
    data, images = write_captions(tmp_path, 4)
    session = TrainSession(train_config(tmp_path, 1, data, images, max_steps=1))
    before = snapshot(session.unwrapped)
    session.train()
    assert changed(before, snapshot(session.unwrapped)) == _names(session.unwrapped, "projector.")


@pytest.mark.parametrize("torn", ["optimizer-r0.pt", "trainable.safetensors"])
def test_resume_falls_back_from_a_corrupt_latest_checkpoint_and_says_so(tmp_path, tiny_model, capsys, torn):
    data, images = write_captions(tmp_path, 8)
    cfg = train_config(tmp_path, 1, data, images, max_steps=2, **{"checkpoint.every": 1, "checkpoint.keep_last": 2})
    TrainSession(cfg).train()
    steps = sorted((tmp_path / "out" / "checkpoints").iterdir())
    assert [p.name for p in steps] == ["step-0000001", "step-0000002"]
    file = steps[1] / torn
    file.write_bytes(file.read_bytes()[:-200])  # a torn write
    session = TrainSession(cfg, resume=True)
    assert session.latest == steps[0]
    err = capsys.readouterr().err
    assert f"step-0000002 cannot be read ({torn}" in err and "set step-0000002 aside" in err
    assert (tmp_path / "out" / "checkpoints" / ".step-0000002.unreadable" / torn).is_file()
    assert session.train().steps == 2
    assert [p.name for p in sorted((tmp_path / "out" / "checkpoints").glob("step-*"))] == [s.name for s in steps]
    for step in steps:  # nothing readable at all: one clear error
        (step / "trainable.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(LlavakitError, match="no checkpoint in .* can be read"):
        TrainSession(cfg, resume=True)
