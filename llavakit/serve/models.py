"""What ``llavakit chat / infer / serve MODEL`` can load: a LLaVA model, or a text-only LLM.

- a preset name (``nano``, ``tiny-random``, ...) or a llavakit checkpoint dir → :class:`LlavaModel`
  (answers text-only requests with its LM and no image, and image requests with the tower);
- with ``text_only=True``: the same specs give just their language model, and so do a plain
  transformers causal-LM dir (``config.json`` + weights) and a ``.gguf`` file (dequantised once to
  the cache, like the embedded SmolLM2) → :class:`TextModel`. Useful as the datagen teacher /
  eval judge behind ``llavakit serve``.

:class:`TextModel` shares the generation API of :class:`~llavakit.model.llava.LlavaModel`
(``generate``, ``decode``, ``answer``, ``stream``, ``processor``, ``tokenizer``); images are refused.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from llavakit.conversation.processor import Processor
from llavakit.errors import ConfigError, LlavakitError
from llavakit.model.checkpoint import load_model
from llavakit.model.config import LMConfig
from llavakit.model.generation import EmbedsGeneration
from llavakit.model.presets import PRESETS


class TextModel(EmbedsGeneration, nn.Module):
    """A causal LM + tokenizer + conversation template, generating like a LlavaModel without images."""

    num_image_tokens = 1  # the processor needs >= 1; an image placeholder is refused in embed()

    def __init__(self, name: str, language_model, tokenizer, template: str = "chat_template",
                 system_prompt: str | None = None, image_token: str = "<image>"):
        super().__init__()
        self.name = name
        self.language_model = language_model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.processor = Processor(tokenizer, template, 1, image_token, system_prompt)

    def embed(self, input_ids, pixel_values=None, image_features=None):
        if pixel_values is not None or image_features is not None or (input_ids == self.processor.image_token_id).any():
            raise LlavakitError(f"model {self.name!r} is a text-only LLM: it cannot take images")
        return self.language_model.get_input_embeddings()(input_ids)

    def preprocess(self, images):
        raise LlavakitError(f"model {self.name!r} is a text-only LLM: it cannot take images")


def accepts_images(model) -> bool:
    return not isinstance(model, TextModel)


def model_name(spec: str) -> str:
    """A short id for ``spec``: the preset name, or the directory / file name."""
    return spec if spec in PRESETS else (Path(spec).name or spec)


def _text_lm_config(spec: str) -> LMConfig:
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        return LMConfig(kind="hf", name_or_path=str(path.parent), gguf_file=path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return LMConfig(kind="hf", name_or_path=str(path))
    if path.exists():
        raise LlavakitError(
            f"{spec} is neither a llavakit checkpoint, a transformers model dir (with config.json) nor a .gguf file"
        )
    raise LlavakitError(
        f"{spec!r} is not a preset ({', '.join(PRESETS)}), a llavakit checkpoint, a transformers dir or a .gguf file"
    )


def load_servable(spec: str, text_only: bool = False, template: str | None = None, device: str | None = None):
    """Load ``spec`` for chat / infer / serve (see the module docstring)."""
    from llavakit.model.spec import resolve

    kind = resolve(spec).kind if (spec in PRESETS or Path(spec).is_dir()) else None
    if not text_only:
        if kind is None and Path(spec).is_file():
            raise LlavakitError(f"{spec} is a file, not a LLaVA model; a .gguf language model serves with --text-only")
        if kind == "transformers-lm":
            raise LlavakitError(f"{spec} is a plain transformers model, not a LLaVA model; "
                                "add --text-only to serve it as a text LLM")
        if template is not None:
            raise ConfigError("--template applies to --text-only models; a LLaVA model keeps its trained template")
        return load_model(spec, device=device)
    if kind in ("preset", "llavakit", "hf-llava", "llava-original"):
        llava = load_model(spec, device=device)
        return TextModel(model_name(spec), llava.language_model, llava.tokenizer,
                         template or llava.config.template, llava.config.system_prompt, llava.config.image_token)
    from llavakit.model.checkpoint import _quiet_transformers
    from llavakit.model.lm import load_lm

    _quiet_transformers()
    lm, tokenizer = load_lm(_text_lm_config(spec))
    if device:
        lm.to(device)
    return TextModel(model_name(spec), lm.eval(), tokenizer, template or "chat_template")
