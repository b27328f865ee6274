"""Training configs: presets, inheritance, overrides, validation before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llavakit.cli import main
from llavakit.errors import ConfigError
from llavakit.train import build_config, recipe_names
from llavakit.train.config import TrainConfig, batch_plan, validate
from llavakit.train.recipes import accelerate_configs, load_config_dict


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[]", encoding="utf-8")
    return path


def test_batch_plan_derives_accumulation_and_rejects_bad_arithmetic():
    cfg = TrainConfig(per_device_batch_size=16, global_batch_size=128)
    plan = batch_plan(cfg, world_size=2)
    assert (plan.per_device, plan.accumulation, plan.world_size, plan.global_batch) == (16, 4, 2, 128)
    assert "global batch 128 = 16 per device x 4 accumulation x 2 processes" in plan.describe()
    with pytest.raises(ConfigError, match="not a multiple of per_device_batch_size 16 x 3 process"):
        batch_plan(cfg, world_size=3)
    cfg.gradient_accumulation_steps = 2
    with pytest.raises(ConfigError, match="global_batch_size 128 != per_device_batch_size 16 x"):
        batch_plan(cfg, world_size=2)
    cfg.global_batch_size = None
    assert batch_plan(cfg, world_size=3).global_batch == 96


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_preset_builds_a_typed_config(name):
    cfg = build_config(recipe=name)
    assert cfg.stage in (1, 2, "finetune")
    assert cfg.optim.weight_decay == 0.0 and cfg.optim.warmup_ratio == pytest.approx(0.03)


def test_paper_presets_hold_the_paper_recipe():
    s1, s2 = build_config(recipe="llava-v1-stage1"), build_config(recipe="llava-v1-stage2")
    assert (s1.optim.lr, s1.global_batch_size, s1.epochs, s1.template) == (2e-3, 128, 1, "plain")
    assert (s2.optim.lr, s2.global_batch_size, s2.epochs) == (2e-5, 32, 3)
    assert (s1.optim.scheduler, s2.optim.scheduler) == ("cosine", "cosine")
    lora = build_config(recipe="llava-1.5-stage2-lora")  # inherits llava-1.5-stage2
    assert (lora.tune, lora.lora.r, lora.lora.alpha, lora.optim.lr, lora.optim.projector_lr) == ("lora", 128, 256, 2e-4, 2e-5)
    assert lora.global_batch_size == 128 and lora.model == "llava-1.5-7b"
    assert build_config(recipe="llava-v1-scienceqa").stage == "finetune"


def test_yaml_inherits_a_preset_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("inherit: nano-stage1\noptim:\n  lr: 5.0e-4\n", encoding="utf-8")
    cfg = build_config(path, overrides=["optim.lr=2e-4", "data.path=x.json", "per_device_batch_size=2"])
    assert cfg.optim.lr == 2e-4 and cfg.data.path == "x.json" and cfg.per_device_batch_size == 2
    assert cfg.model == "nano" and cfg.template == "plain"  # from the preset


def test_a_dict_config_may_inherit_a_preset_too():
    cfg = build_config({"inherit": "nano-stage2-lora", "lora": {"r": 8}}, overrides=["data.path=d.json"])
    assert (cfg.stage, cfg.tune, cfg.lora.r, cfg.lora.alpha, cfg.model) == (2, "lora", 8, 32, "nano")


def test_inheritance_loop_and_unknown_keys_are_clear_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config_dict(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="unknown config key optim.learning_rate"):
        build_config(recipe="nano-stage1", overrides=["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="unknown training recipe 'nope'"):
        build_config(recipe="nope")


def test_stage_flag_must_agree_with_the_config():
    with pytest.raises(ConfigError, match="--stage 2 contradicts the config's stage: 1"):
        build_config(recipe="nano-stage1", stage="2")
    assert build_config({"model": "nano"}, stage="finetune").stage == "finetune"
    with pytest.raises(ConfigError, match="stage is not set"):
        build_config({"model": "nano"})


def test_validate_names_the_bad_input(tmp_path, data_file):
    def check(**kw):
        data = {"stage": 1, "model": "tiny-random", "data": {"path": str(data_file)}, "output_dir": str(tmp_path / "o")}
        data.update(kw)
        return validate(build_config(data))

    assert check().global_batch == 16
    with pytest.raises(ConfigError, match="data.path is required"):
        check(data={})
    with pytest.raises(ConfigError, match="data.path: file .*missing.json does not exist"):
        check(data={"path": str(tmp_path / "missing.json")})
    with pytest.raises(ConfigError, match="data.image_folder: directory .* does not exist"):
        check(data={"path": str(data_file), "image_folder": str(tmp_path / "imgs")})
    with pytest.raises(ConfigError, match="not a llavakit checkpoint nor a LLaVA model directory"):
        check(model=str(tmp_path))
    with pytest.raises(ConfigError, match="stage 1 trains only the projector"):
        check(tune="lora")
    with pytest.raises(ConfigError, match="stage 2 starts from a stage-1 projector"):
        check(stage=2)
    with pytest.raises(ConfigError, match="finetune continues from a stage-2 checkpoint"):
        check(stage="finetune")
    with pytest.raises(ConfigError, match="template 'chatml' is not one of"):
        check(template="chatml")
    with pytest.raises(ConfigError, match="optim.warmup_ratio"):
        check(optim={"warmup_ratio": 1.5})


def test_cli_check_validates_and_prints_the_global_batch_without_a_model(tmp_path, data_file, capsys):
    code = main(["train", "--recipe", "tiny-stage1", "--check", f"data.path={data_file}",
                 f"output_dir={tmp_path / 'o'}", "per_device_batch_size=2", "global_batch_size=8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "global batch 8 = 2 per device x 4 accumulation x 1 process" in out
    assert json.loads(out[: out.rindex("}") + 1])["per_device_batch_size"] == 2
    code = main(["train", "--recipe", "tiny-stage1", "--check", "data.path=/nonexistent.json"])
    assert code == 2
    assert "data.path: file /nonexistent.json does not exist" in capsys.readouterr().err


def test_cpu_mixed_precision_rules(tmp_path, data_file, monkeypatch):
    from llavakit.train import precision as runner

    def cfg(mixed):
        return build_config({"stage": 1, "model": "tiny-random", "data": {"path": str(data_file)},
                             "output_dir": str(tmp_path / "o"), "mixed_precision": mixed, "cpu": True})

    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        runner.make_accelerator(cfg("fp16"))
    monkeypatch.setattr(runner, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="this CPU has no native bf16"):
        runner.make_accelerator(cfg("bf16"))
    monkeypatch.setattr(runner, "cpu_has_bf16", lambda: True)
    accelerator, _, _ = runner.make_accelerator(cfg("bf16"))
    assert accelerator.mixed_precision == "bf16"
    accelerator, _, _ = runner.make_accelerator(cfg("auto"))
    assert accelerator.mixed_precision == "no"


def test_cli_lists_presets_and_accelerate_configs(capsys):
    assert main(["train", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("nano-stage1", "nano-stage2", "llava-v1-stage1", "llava-1.5-stage2-lora", "deepspeed-zero3"):
        assert name in out
    assert main(["train", "--accelerate-config", "fsdp"]) == 0
    assert Path(capsys.readouterr().out.strip()).is_file()


def test_shipped_accelerate_configs_pass_accelerates_launch_validation():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    configs = accelerate_configs()
    assert set(configs) == {"ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"}
    kinds = {}
    for name, path in configs.items():
        args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "llavakit", "train"])
        args, _, _ = _validate_launch_command(args)
        kinds[name] = (args.multi_gpu, args.use_fsdp, args.use_deepspeed, args.cpu)
        if name == "fsdp":
            env = prepare_multi_gpu_env(args)
            assert env["FSDP_VERSION"] == "2" and env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
            assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env  # no LM's class is written into the file
            fsdp_env = env
        if name.startswith("deepspeed"):
            assert args.zero_stage == int(name[-1])
    assert kinds == {"ddp": (True, False, False, False), "fsdp": (False, True, False, False),
                     "deepspeed-zero2": (False, False, True, False), "deepspeed-zero3": (False, False, True, False)}
    # accelerate wraps the model's _no_split_modules: the LM's decoder layer and the tower's encoder layer
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils import patch_environment

    from llavakit.model import load_model

    with patch_environment(**{k: v for k, v in fsdp_env.items() if k.startswith(("FSDP", "ACCELERATE"))}):
        plugin = FullyShardedDataParallelPlugin()
        plugin.set_auto_wrap_policy(load_model("tiny-random"))
    assert {"LlamaDecoderLayer", "CLIPEncoderLayer"} <= set(plugin.transformer_cls_names_to_wrap)


def test_a_malformed_data_file_fails_before_any_model_loads(tmp_path, monkeypatch):
    import llavakit.model
    from llavakit.errors import DataError
    from llavakit.train import run

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data file was read")

    monkeypatch.setattr(llavakit.model, "load_model", no_model)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1,}]', encoding="utf-8")
    with pytest.raises(DataError, match="bad.json: line 1 .*invalid JSON"):
        run({"stage": 1, "model": "tiny-random", "data": {"path": str(bad)}, "output_dir": str(tmp_path / "o")})


def test_heap_trimmer_trims_on_a_linux_cpu_only():
    import platform
    import sys


    from llavakit.memory import heap_trimmer

    assert heap_trimmer("meta")() is None  # not a CPU: a no-op
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert heap_trimmer("cpu")() in (0, 1)  # glibc's malloc_trim ran (1: memory released)


@pytest.mark.parametrize("override, needle", [
    ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
    ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
    ("optim.eps=-1", "optim.eps must be > 0"),
    ("optim.weight_decay=-1", "optim.weight_decay >= 0"),
    ("optim.betas=[0.9,.nan]", "optim.betas[1] must be a finite number"),
])
def test_check_refuses_non_finite_and_negative_optimizer_numbers(tmp_path, override, needle):
    from llavakit.train.recipes import build_config

    data_file = tmp_path / "d.json"
    data_file.write_text("[]")
    cfg = build_config(None, "tiny-stage1", [f"data.path={data_file}", f"output_dir={tmp_path / 'o'}", override], "1")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert needle in str(info.value)
