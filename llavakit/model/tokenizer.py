"""The text side of a model without its weights: tokenizer + template + image-token count.

``load_processor("nano")`` builds the same :class:`~llavakit.conversation.processor.Processor` the model
would have — for data inspection, length statistics and dataset building before (or without)
loading a model. Sources, by the model spec:

- a preset: its LM config decides — ``random`` → the local byte tokenizer, ``embedded`` / GGUF →
  the converted cache dir if present, else the tokenizer read straight from the GGUF file (no
  weights are converted), ``hf`` → ``AutoTokenizer`` of ``name_or_path``,
- a checkpoint dir: the tokenizer files at its root and its ``llavakit.json``.

The image-token count comes from the tower's class (fixed-size towers) or its transformers config
(``(image_size // patch_size)²``, plus one with ``feature_select: cls_patch``).
"""

from __future__ import annotations

from pathlib import Path

from llavakit.conversation.processor import Processor
from llavakit.errors import ConfigError, LlavakitError  # noqa: F401


def load_tokenizer(lm_config, directory: Path | None = None):
    """The tokenizer of an LM config (or of a checkpoint ``directory``), loading no weights."""
    from transformers import AutoTokenizer

    from llavakit.model import lm as lm_mod

    if directory is not None:
        return AutoTokenizer.from_pretrained(str(directory))
    if lm_config.kind == "random":
        return lm_mod.build_byte_tokenizer()
    if lm_config.kind == "embedded":
        folder, gguf = lm_mod.embedded_dir(lm_config.name_or_path or "")
        return _gguf_tokenizer(folder, gguf)
    if lm_config.kind == "hf":
        if not lm_config.name_or_path:
            raise ConfigError("lm.name_or_path is required for lm.kind 'hf'")
        if lm_config.gguf_file:
            return _gguf_tokenizer(Path(lm_config.name_or_path), lm_config.gguf_file)
        try:
            return AutoTokenizer.from_pretrained(lm_config.name_or_path)
        except OSError as exc:
            raise ConfigError(f"tokenizer of {lm_config.name_or_path!r} cannot be loaded: {exc}") from None
    raise ConfigError(f"unknown lm.kind {lm_config.kind!r}; known: hf, embedded, random")


def _gguf_tokenizer(folder: Path, gguf_file: str):
    from transformers import AutoTokenizer

    from llavakit.model.lm import gguf_cache_dir

    if not (folder / gguf_file).is_file():
        raise ConfigError(f"GGUF file {folder / gguf_file} does not exist")
    cache = gguf_cache_dir(folder, gguf_file)
    if (cache / "config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cache))
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)


def num_image_tokens(vision_config, directory: Path | None = None) -> int:
    """Image tokens per image of a tower config, from its class or its transformers config."""
    from llavakit.model.vision import _VISION_PART, TOWERS

    if vision_config.kind not in TOWERS:
        raise ConfigError(f"unknown vision tower kind {vision_config.kind!r}; known: {', '.join(TOWERS)}")
    fixed = TOWERS[vision_config.kind].tokens_for(vision_config)
    if fixed is not None:
        return fixed
    if vision_config.kind != "hf":
        raise ConfigError(f"cannot tell the image-token count of tower {vision_config.kind!r} without loading it")
    from transformers import AutoConfig

    source = str(directory) if directory is not None else vision_config.name_or_path
    if source is not None:
        try:
            cfg = AutoConfig.from_pretrained(source)
        except OSError as exc:
            raise ConfigError(f"vision tower {source!r}: cannot read its config: {exc}") from None
        if cfg.model_type in _VISION_PART:
            cfg = cfg.vision_config
        size, patch = cfg.image_size, cfg.patch_size
    elif vision_config.hf_config:
        size, patch = vision_config.hf_config["image_size"], vision_config.hf_config["patch_size"]
    else:
        raise ConfigError("vision tower 'hf' needs vision.name_or_path or vision.hf_config")
    return (int(size) // int(patch)) ** 2 + (1 if vision_config.feature_select == "cls_patch" else 0)


def load_processor(spec: str, template: str | None = None, system_prompt: str | None = None) -> Processor:
    """The processor of a preset name or checkpoint dir (``template`` overrides the model's own)."""
    from llavakit.model.spec import config_of, resolve

    resolved = resolve(spec)
    config = config_of(spec)
    if config is not None:
        directory = Path(spec) if resolved.kind == "llavakit" else None
    elif resolved.kind in ("hf-llava", "llava-original"):  # the weights hold the answer: load the model once
        from llavakit.model.checkpoint import load_model

        model = load_model(spec)
        if template is None and system_prompt is None:
            return model.processor
        return model.make_processor(template, system_prompt)
    else:
        raise LlavakitError(f"{spec} is a plain transformers language model, not a LLaVA model")
    tokenizer = load_tokenizer(config.lm, directory)
    if tokenizer.pad_token_id is None:  # as LlavaModel does
        tokenizer.pad_token = tokenizer.eos_token
    n = config.projector.objects or num_image_tokens(config.vision, directory / "vision_tower" if directory else None)
    return Processor(
        tokenizer,
        template or config.template,
        n,
        config.image_token,
        config.system_prompt if system_prompt is None else system_prompt,
    )
