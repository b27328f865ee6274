"""`llavakit merge-lora`: a PEFT adapter (llavakit's own or an original-LLaVA-style release) merged
into a plain checkpoint that equals the trained one; bad adapters are refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_train_support import train_config, write_instructions

from llavakit.cli import main
from llavakit.model import load_model, save_projector
from llavakit.model.checkpoint import PROJECTOR_WEIGHTS
from llavakit.model.foreign import read_tensors
from llavakit.train.runner import TrainSession


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("lora")
    data, images = write_instructions(tmp, 8, text_only=0)
    save_projector(tiny_model, tmp / "stage1")
    cfg = train_config(tmp, 2, data, images, max_steps=3, tune="lora", projector=str(tmp / "stage1"),
                       **{"lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "optim.lr": 1e-2})
    TrainSession(cfg).train()
    return tmp / "out"


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-5, atol=1e-6, msg=name)


def test_merging_the_trained_adapter_gives_the_trained_checkpoint(trained, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge-lora", "tiny-random", str(trained / "adapter"), "--out", str(out)]) == 0
    _same_weights(load_model(str(out)), load_model(str(trained / "model")))


def test_an_original_style_release_with_non_lora_trainables(trained, tmp_path):
    release = tmp_path / "llava-lora"
    shutil.copytree(trained / "adapter", release, ignore=shutil.ignore_patterns("projector"))
    projector = read_tensors(trained / "adapter" / "projector" / PROJECTOR_WEIGHTS)
    state = {f"base_model.model.model.mm_projector.{k}": v for k, v in projector.items()}
    state["base_model.model.model.embed_tokens.weight"] = torch.zeros(3, 3)  # beside it, not the projector's
    torch.save(state, release / "non_lora_trainables.bin")
    out = tmp_path / "merged"
    assert main(["merge-lora", "tiny-random", str(release), "--out", str(out)]) == 0
    _same_weights(load_model(str(out)), load_model(str(trained / "model")))


def test_bad_adapters_are_refused_in_one_line(trained, tmp_path, capsys):
    def refused(args, needle):
        assert main(["merge-lora", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err

    refused(["tiny-random", str(tmp_path), "--out", str(tmp_path / "o")], "no adapter_config.json")
    bare = tmp_path / "bare"
    shutil.copytree(trained / "adapter", bare, ignore=shutil.ignore_patterns("projector"))
    refused(["tiny-random", str(bare), "--out", str(tmp_path / "o")], "its projector is random")
    other = tmp_path / "other"
    shutil.copytree(trained / "adapter", other)
    config = json.loads((other / "adapter_config.json").read_text(encoding="utf-8"))
    config["target_modules"] = ["no_such_module"]
    (other / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    refused(["tiny-random", str(other), "--out", str(tmp_path / "o")], "does not fit MODEL's language model")
    stray = tmp_path / "stray"
    shutil.copytree(trained / "adapter", stray)
    weights = read_tensors(stray / "adapter_model.safetensors")
    weights["base_model.model.model.layers.99.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 4)
    from safetensors.torch import save_file

    save_file(weights, stray / "adapter_model.safetensors")
    refused(["tiny-random", str(stray), "--out", str(tmp_path / "o")], "match no LoRA weight")
    assert not (tmp_path / "o").exists()  # nothing half-written
