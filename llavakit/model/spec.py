"""What a MODEL argument names — resolved once, for every verb (chat, infer, serve, eval, train, export).

:func:`resolve` reads at most one small JSON file and returns a :class:`ModelSpec`:

- ``preset``: a name in :data:`llavakit.model.presets.PRESETS`;
- ``llavakit``: a llavakit checkpoint directory (``llavakit.json``);
- ``hf-llava``: a transformers ``LlavaForConditionalGeneration`` directory (``config.json`` with
  ``model_type: llava`` — the llava-hf releases and ``llavakit export`` output);
- ``llava-original``: a checkpoint of the original LLaVA code (``LlavaLlamaForCausalLM`` /
  ``LlavaMistralForCausalLM``: ``mm_*`` fields in ``config.json``, ``model.mm_projector.*`` weights);
- ``transformers-lm``: a plain transformers causal LM directory (text only: ``--text-only``).

Layouts llavakit does not load (LLaVA-NeXT's ``llava_next``, ``llava_onevision``, ...) are refused
here with one line naming the ``model_type``. Dispatch is on exact ``model_type`` /
``architectures`` values, never on substrings of names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llavakit.io import read_json as read_json_file
from llavakit.errors import LlavakitError

Kind = Literal["preset", "llavakit", "hf-llava", "llava-original", "transformers-lm"]
LLAVAKIT_CONFIG = "llavakit.json"
ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaMptForCausalLM")
ORIGINAL_MODEL_TYPES = ("llava_llama", "llava_mistral", "llava_mpt")
UNSUPPORTED_MODEL_TYPES = {
    "llava_next": "LLaVA-NeXT (AnyRes tiling)",
    "llava_next_video": "LLaVA-NeXT-Video",
    "llava_onevision": "LLaVA-OneVision",
    "vipllava": "VipLlava",
}


@dataclass(frozen=True)
class ModelSpec:
    kind: Kind
    source: str  # the preset name or the directory
    config: dict | None = None  # the foreign config.json, when one was read

    @property
    def is_llava(self) -> bool:
        """Loads as a LlavaModel (all kinds but a plain LM)."""
        return self.kind != "transformers-lm"


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file (config, preprocessor config): an object, errors naming the file."""
    return read_json_file(path, "checkpoint file", object_only=True)


def resolve(spec: str) -> ModelSpec:
    """Name the kind of ``spec``; an error names what was found instead."""
    from llavakit.model.presets import PRESETS

    if spec in PRESETS:
        return ModelSpec("preset", spec)
    path = Path(spec)
    if (path / LLAVAKIT_CONFIG).is_file():
        return ModelSpec("llavakit", spec)
    if (path / "config.json").is_file():
        config = read_json(path / "config.json")
        model_type = config.get("model_type")
        architectures = config.get("architectures") or []
        if model_type == "llava":
            return ModelSpec("hf-llava", spec, config)
        if model_type in ORIGINAL_MODEL_TYPES or any(a in ORIGINAL_ARCHITECTURES for a in architectures):
            return ModelSpec("llava-original", spec, config)
        if model_type in UNSUPPORTED_MODEL_TYPES:
            raise LlavakitError(f"{spec}: {UNSUPPORTED_MODEL_TYPES[model_type]} checkpoints (model_type "
                                f"{model_type!r}) are not supported; llavakit loads LLaVA / LLaVA-1.5 layouts "
                                "(model_type 'llava', the original LlavaLlamaForCausalLM) and its own checkpoints")
        return ModelSpec("transformers-lm", spec, config)
    if path.exists():
        raise LlavakitError(f"{spec} is not a llavakit checkpoint nor a LLaVA model directory: it has neither "
                            f"{LLAVAKIT_CONFIG} (llavakit) nor config.json (transformers / original LLaVA)")
    raise LlavakitError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")


def config_of(spec: str):
    """The :class:`~llavakit.model.config.LlavaConfig` of a preset or llavakit checkpoint, read without
    weights; ``None`` for foreign layouts (their configuration lives in the weights' own files)."""
    kind = resolve(spec).kind
    if kind == "preset":
        from llavakit.model.presets import get_preset

        return get_preset(spec)
    if kind == "llavakit":
        from llavakit.model.checkpoint import read_config

        return read_config(spec)
    return None
