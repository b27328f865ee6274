"""``llavakit merge-lora MODEL ADAPTER --out DIR``: a PEFT LoRA adapter merged into a plain checkpoint.

ADAPTER is a PEFT adapter directory of the language model (``adapter_config.json`` +
``adapter_model.safetensors`` / ``.bin``): the ``OUT/adapter`` that ``tune: lora`` writes, or one
from another codebase (the original LLaVA LoRA releases are PEFT adapters of the same LM modules).
The projector comes from ``--projector``, else from the adapter directory — llavakit's
``projector/`` or the original release's ``non_lora_trainables.bin`` — else stays MODEL's own
(a llavakit checkpoint's; a preset's projector is random, so a preset needs one of the others).

Every adapter tensor must land on a LoRA weight of the model (an adapter for another LM, or with
other target modules, is refused naming both); the merge itself is peft's ``merge_and_unload``
(in :func:`~llavakit.model.save_pretrained`). The output is a llavakit checkpoint every verb loads
and ``llavakit export`` converts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llavakit.errors import ConfigError, LlavakitError
from llavakit.io import read_json

PROJECTOR_CANDIDATES = ("projector", "non_lora_trainables.bin")


def find_projector(adapter: Path, given: str | None) -> Path | None:
    if given:
        return Path(given)
    return next((adapter / name for name in PROJECTOR_CANDIDATES if (adapter / name).exists()), None)


def read_adapter_config(adapter: Path) -> dict:
    path = adapter / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"adapter {adapter}: no adapter_config.json — not a PEFT adapter directory")
    config = read_json(path, "adapter config", object_only=True)
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"adapter {path}: peft_type is {config.get('peft_type')!r}; merge-lora merges LORA adapters")
    return config


def attach_adapter(model, adapter: Path) -> None:
    """Wrap ``model.language_model`` in the adapter; refuse tensors that land on nothing."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    config = read_adapter_config(adapter)
    try:
        lora = LoraConfig.from_pretrained(str(adapter))
        lora.inference_mode = True
        wrapped = get_peft_model(model.language_model, lora)
        weights = load_peft_weights(str(adapter), device="cpu")
        result = set_peft_model_state_dict(wrapped, weights)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise LlavakitError(f"adapter {adapter} does not fit MODEL's language model "
                            f"({type(model.language_model).__name__}): {str(exc).splitlines()[0]}") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise LlavakitError(f"adapter {adapter}: {len(unexpected)} of its tensors match no LoRA weight of MODEL's "
                            f"language model (first: {unexpected[0]}; its target_modules: "
                            f"{config.get('target_modules')})")
    model.language_model = wrapped


def merge_lora(model_name: str, adapter: str | Path, out: str | Path, projector: str | None = None) -> Path:
    from llavakit.model import load_model, save_pretrained

    adapter = Path(adapter)
    read_adapter_config(adapter)  # before any weights load
    source = find_projector(adapter, projector)
    model = load_model(model_name, projector=str(source) if source else None)
    if source is None and getattr(model, "checkpoint_dir", None) is None:
        raise ConfigError(f"no projector for {model_name!r} (a preset: its projector is random): give --projector, "
                          f"or put it in the adapter as {' or '.join(PROJECTOR_CANDIDATES)}")
    attach_adapter(model, adapter)
    return save_pretrained(model, out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the base: a preset, a llavakit checkpoint or a LLaVA checkpoint of another layout")
    parser.add_argument("adapter", help="a PEFT LoRA adapter dir of its language model (e.g. OUT/adapter of tune=lora)")
    parser.add_argument("--out", required=True, help="where the merged llavakit checkpoint goes")
    parser.add_argument("--projector", help="the projector (dir, .safetensors or mm_projector.bin); default: the "
                        "adapter's projector/ or non_lora_trainables.bin, else MODEL's own")


def run(args: argparse.Namespace) -> int:
    out = merge_lora(args.model, args.adapter, args.out, args.projector)
    print(f"merged {args.adapter} into {args.model}: {out} (a llavakit checkpoint)")
    return 0
