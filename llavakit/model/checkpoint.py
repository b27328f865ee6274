"""Build, save and load LLaVA models; projector-only artifacts for stage 1.

A checkpoint directory is self-contained and never unpickled::

    llavakit.json            the LlavaConfig (tower, projector, LM, template, image token)
    vision_tower/            tower weights (transformers dir, or safetensors for EfficientNet)
    language_model/          transformers save_pretrained (config + safetensors)
    projector.safetensors    projector weights
    tokenizer files          with the <image> token and the chat template

A projector artifact (``projector.safetensors`` + ``projector.json``) is a few MB: it records the
tower fingerprint and dimensions so it only loads on top of a matching base.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from llavakit.config import from_dict, to_dict
from llavakit.errors import ConfigError, LlavakitError
from llavakit.io import atomic_directory, atomic_path, atomic_write_json
from llavakit.model.config import LlavaConfig
from llavakit.model.lm import load_lm
from llavakit.model.llava import LlavaModel
from llavakit.model.presets import get_preset
from llavakit.model.vision import build_vision_tower

CONFIG_NAME = "llavakit.json"
PROJECTOR_WEIGHTS = "projector.safetensors"
PROJECTOR_META = "projector.json"


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def build_model(config: LlavaConfig) -> LlavaModel:
    """Compose a model from a config (pretrained tower + LM, fresh projector)."""
    _quiet_transformers()
    tower = build_vision_tower(config.vision)
    lm, tokenizer = load_lm(config.lm)
    torch.manual_seed(config.lm.seed)
    return LlavaModel(config, tower, lm, tokenizer)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def load_model(spec: str, projector: str | None = None, device: str | None = None) -> LlavaModel:
    """``spec``: a preset, a llavakit checkpoint, a transformers Llava dir or an original LLaVA
    checkpoint (:mod:`llavakit.model.spec`); ``projector`` an optional projector artifact (a
    llavakit stage-1 dir or ``.safetensors``, or an original ``mm_projector.bin``)."""
    from llavakit.model.spec import resolve

    resolved = resolve(spec)
    if resolved.kind == "preset":
        model = build_model(get_preset(spec))
    elif resolved.kind == "llavakit":
        model = from_pretrained(spec)
    elif resolved.kind in ("hf-llava", "llava-original"):
        from llavakit.model.foreign import load_foreign

        _quiet_transformers()
        model = load_foreign(resolved)
    else:
        raise LlavakitError(f"{spec} is a plain transformers language model, not a LLaVA model (no vision tower); "
                            "chat / serve it with --text-only")
    if projector:
        load_projector(model, projector)
    if device:
        model.to(device)
    return model.eval()


def read_config(directory: str | Path) -> LlavaConfig:
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LlavakitError(f"cannot read {path}: {exc}") from None
    data.pop("llavakit_version", None)
    return from_dict(LlavaConfig, data)


def from_pretrained(directory: str | Path) -> LlavaModel:
    _quiet_transformers()
    directory = Path(directory)
    config = read_config(directory)
    tower = build_vision_tower(config.vision, directory / "vision_tower")
    lm, _ = load_lm(config.lm, directory / "language_model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = LlavaModel(config, tower, lm, tokenizer)
    from llavakit.model.foreign import read_tensors

    state = read_tensors(directory / PROJECTOR_WEIGHTS)
    model.projector.load_state_dict(state)
    model.projector.to(dtype=model.dtype)
    model.checkpoint_dir = directory.resolve()  # where it came from (its training.json, if any)
    return model.eval()


def save_pretrained(model: LlavaModel, directory: str | Path) -> Path:
    """Write a self-contained checkpoint atomically (temp dir, then rename). LoRA is merged."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        config = to_dict(model.config)
        tower_dir = tmp / "vision_tower"
        tower_dir.mkdir()
        config["vision"].update(model.vision_tower.save(tower_dir))
        lm = model.language_model
        if hasattr(lm, "merge_and_unload"):  # a peft model: save merged weights, keep training model intact
            import copy

            lm = copy.deepcopy(lm).merge_and_unload()
        lm.save_pretrained(tmp / "language_model")
        config["lm"].update({"kind": "hf", "name_or_path": None, "gguf_file": None, "hf_config": None})
        model.tokenizer.save_pretrained(tmp)
        save_file({k: v.detach().contiguous() for k, v in model.projector.state_dict().items()}, tmp / PROJECTOR_WEIGHTS)
        from llavakit import __version__

        config["llavakit_version"] = __version__
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def projector_meta(model: LlavaModel) -> dict:
    return {
        "projector": model.config.projector.kind,
        "snap": model.config.projector.snap,
        "objects": model.config.projector.objects,
        "vision_fingerprint": model.vision_tower.fingerprint(),
        "vision_hidden_size": model.vision_tower.hidden_size,
        "lm_hidden_size": model.language_model.get_input_embeddings().weight.shape[1],
        "base": to_dict(model.config),
    }


def save_projector(model: LlavaModel, directory: str | Path) -> Path:
    """The stage-1 artifact: projector weights + what they fit."""
    directory = Path(directory)
    with atomic_path(directory / PROJECTOR_WEIGHTS) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.projector.state_dict().items()}, tmp)
    atomic_write_json(directory / PROJECTOR_META, projector_meta(model))
    return directory


def load_projector(model: LlavaModel, path: str | Path) -> None:
    """Load a projector artifact (its dir or its .safetensors) onto ``model``; checks it fits."""
    from llavakit.model.foreign import projector_tensors, read_tensors

    path = Path(path)
    if path.is_file() and path.suffix in (".bin", ".pt", ".pth"):  # an original LLaVA mm_projector.bin
        _load_projector_state(model, projector_tensors(read_tensors(path), str(path)), path)
        return
    directory = path if path.is_dir() else path.parent
    weights = directory / PROJECTOR_WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise LlavakitError(f"projector artifact {path}: {weights.name} not found")
    meta_path = directory / PROJECTOR_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        mine = projector_meta(model)
        defaults = {"snap": False, "objects": 0}  # artifacts written before these keys existed
        for key in ("projector", "snap", "objects", "vision_hidden_size", "lm_hidden_size", "vision_fingerprint"):
            if meta.get(key, defaults.get(key)) != mine[key]:
                raise ConfigError(
                    f"projector artifact {path} does not fit this model: {key} is {meta.get(key)!r} there, "
                    f"{mine[key]!r} here"
                )
    _load_projector_state(model, read_tensors(weights), path)


def _load_projector_state(model: LlavaModel, state: dict, source: Path) -> None:
    try:
        model.projector.load_state_dict(state)
    except RuntimeError as exc:
        lm_dim = model.language_model.get_input_embeddings().weight.shape[1]
        raise ConfigError(f"projector {source} does not fit this model's {model.config.projector.kind} projector "
                          f"({model.vision_tower.hidden_size} → {lm_dim}): {str(exc).splitlines()[0]}") from None
    model.projector.to(dtype=model.dtype)
