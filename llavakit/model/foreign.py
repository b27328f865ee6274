"""LLaVA checkpoints of other codebases as a :class:`LlavaModel`, in memory and exact.

- **transformers Llava** (``model_type: llava`` — llava-hf releases, ``llavakit export``): loaded
  with ``LlavaForConditionalGeneration.from_pretrained``, then taken apart — its vision model
  becomes the tower, ``multi_modal_projector`` the projector, its decoder + ``lm_head`` the LM
  (the modules are moved, not copied). ``vision_feature_layer`` / ``vision_feature_select_strategy``
  map to ``vision.feature_layer`` / ``feature_select``; the image mode comes from
  ``preprocessor_config.json`` (``do_pad`` → ``pad``, centre crop → ``square``, else ``resize``).
- **original LLaVA** (``LlavaLlamaForCausalLM``): the LM is read by transformers from the same
  directory with its ``mm_*`` fields removed from the config (transformers reports the extra
  ``model.mm_projector.*`` tensors as unexpected and skips them); the projector from those
  tensors; the tower from ``mm_vision_tower`` (a path or hub id the user has — the original
  checkpoints do not contain it). ``mm_vision_select_layer`` / ``mm_vision_select_feature`` /
  ``image_aspect_ratio`` map; ``mm_use_im_start_end``, ``mm_use_im_patch_token``, AnyRes and
  non-flat ``mm_patch_merge_type`` are refused by name (llavakit has no such tokens / tiling).
- **a projector file** (``mm_projector.bin`` of an original stage-1 run, or safetensors) onto any
  model: :func:`read_tensors` + :func:`projector_tensors`.

``.bin`` files are read with ``torch.load(weights_only=True)``: a pickle that needs anything but
tensors is refused with one line naming the file.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch

from llavakit.errors import ConfigError, LlavakitError
from llavakit.model.config import LlavaConfig, LMConfig, ProjectorConfig, VisionConfig
from llavakit.model.projector import linear_from_relu_mlp
from llavakit.model.spec import ModelSpec, read_json

TEXT_MODEL_TYPES = {"llava_llama": "llama", "llava_mistral": "mistral",
                    "LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
PROJECTOR_PREFIXES = ("base_model.model.model.mm_projector.", "model.mm_projector.", "mm_projector.",
                      "multi_modal_projector.", "model.multi_modal_projector.")  # the first: LoRA releases


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` or ``.bin`` / ``.pt`` tensor file; errors name the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise LlavakitError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlavakitError(f"{path}: refused — not a plain tensor file (weights_only load: {first})") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise LlavakitError(f"{path}: not a readable torch file ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LlavakitError(f"{path}: expected a mapping of names to tensors")
    return state


def projector_tensors(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The projector's own keys (``0.weight``, ...; ``linear_1`` / ``linear_2`` → ``0`` / ``2``). When
    some keys carry a projector prefix, only those are the projector's (a LoRA release's
    ``non_lora_trainables.bin`` may hold other tensors beside it); else every key is."""
    prefixed = any(key.startswith(PROJECTOR_PREFIXES) for key in state)
    out = {}
    for key, value in state.items():
        prefix = next((p for p in PROJECTOR_PREFIXES if key.startswith(p)), None)
        if prefixed and prefix is None:
            continue
        key = key[len(prefix):] if prefix else key
        out[key.replace("linear_1.", "0.").replace("linear_2.", "2.")] = value
    if not out:
        raise LlavakitError(f"{source}: holds no projector tensors")
    return out


def _image_mode(directory: Path, default: str) -> tuple[str, dict]:
    path = directory / "preprocessor_config.json"
    pre = read_json(path) if path.is_file() else {}
    if pre.get("do_pad"):
        return "pad", pre
    if pre:
        return ("square" if pre.get("do_center_crop", True) else "resize"), pre
    return default, pre


def _finish(config: LlavaConfig, tower, lm, tokenizer, projector_state: dict, source: str):
    from llavakit.model.llava import LlavaModel
    from llavakit.model.projector import build_projector

    lm_dim = lm.get_input_embeddings().weight.shape[1]
    projector = build_projector(config.projector.kind, tower.hidden_size, lm_dim)
    try:
        projector.load_state_dict(projector_state)
    except RuntimeError as exc:
        raise LlavakitError(f"{source}: its projector does not fit {config.projector.kind} "
                            f"({tower.hidden_size} → {lm_dim}): {str(exc).splitlines()[0]}") from None
    model = LlavaModel(config, tower, lm, tokenizer, projector=projector)
    model.checkpoint_dir = Path(source).resolve()
    return model.eval()


def load_hf_llava(spec: ModelSpec):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    from llavakit.model.vision import HFVisionTower, _DEFAULT_NORM

    directory = Path(spec.source)
    hf = _hf_call(directory, lambda: LlavaForConditionalGeneration.from_pretrained(directory, dtype="auto"))
    c = hf.config
    if not isinstance(c.vision_feature_layer, int):
        raise LlavakitError(f"{directory}: vision_feature_layer {c.vision_feature_layer} (several layers) is not supported")
    vision_type = c.vision_config.model_type
    strategy = c.vision_feature_select_strategy
    mode, pre = _image_mode(directory, "square")
    mean, std = pre.get("image_mean", _DEFAULT_NORM.get(vision_type, _DEFAULT_NORM["clip_vision_model"])[0]), \
        pre.get("image_std", _DEFAULT_NORM.get(vision_type, _DEFAULT_NORM["clip_vision_model"])[1])
    vcfg = VisionConfig(kind="hf", feature_layer=c.vision_feature_layer,
                        feature_select="patch" if strategy == "default" else "cls_patch", image_mode=mode)
    probe = HFVisionTower(VisionConfig(kind="hf", feature_layer=c.vision_feature_layer), hf.model.vision_tower, mean, std)
    if not probe.has_cls:  # transformers' "default" drops the first token even without a CLS; "full" keeps all
        if strategy == "default":
            raise LlavakitError(f"{directory}: strategy 'default' on a tower without a CLS token drops a patch "
                                "token; llavakit cannot reproduce that")
        vcfg.feature_select = "patch"
    tower = HFVisionTower(vcfg, hf.model.vision_tower, mean, std)
    act = c.projector_hidden_act
    proj = hf.model.multi_modal_projector
    state = {k: v for k, v in proj.state_dict().items()}
    for name in ("linear_1", "linear_2"):  # multimodal_projector_bias=False: zero biases
        layer = getattr(proj, name)
        state.setdefault(f"{name}.bias", torch.zeros(layer.out_features, dtype=layer.weight.dtype))
    if act == "gelu":
        kind = "mlp2x_gelu"
    elif act == "linear" and torch.equal(proj.linear_2.weight, torch.eye(proj.linear_2.weight.shape[0],
                                                                          dtype=proj.linear_2.weight.dtype)) \
            and not state["linear_2.bias"].any():
        kind, state = "linear", {"weight": state["linear_1.weight"], "bias": state["linear_1.bias"]}
    elif act == "relu" and (linear := linear_from_relu_mlp(state)) is not None:
        kind, state = "linear", linear
    else:
        raise LlavakitError(f"{directory}: projector_hidden_act {act!r} has no llavakit projector (gelu → mlp2x_gelu; "
                            "linear with an identity second layer, or relu in llavakit's exact form → linear)")
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(c.text_config)
    setattr(lm, lm.base_model_prefix, hf.model.language_model)  # move the decoder and head, no copy
    lm.lm_head = hf.lm_head
    meta = [n for n, t in (*lm.named_parameters(), *lm.named_buffers()) if t.device.type == "meta"]
    if meta:
        raise LlavakitError(f"{directory}: its text model left {meta[0]} unset (a layout llavakit cannot take apart)")
    if getattr(c.text_config, "tie_word_embeddings", False) or getattr(c, "tie_word_embeddings", False):
        lm.tie_weights()
    tokenizer = _hf_call(directory, lambda: AutoTokenizer.from_pretrained(directory))
    image_token = tokenizer.convert_ids_to_tokens(c.image_token_index)
    config = LlavaConfig(name=directory.name, vision=vcfg, projector=ProjectorConfig(kind=kind),
                         lm=LMConfig(kind="hf"), image_token=image_token)
    return _finish(config, tower, lm, tokenizer, projector_tensors(state, str(directory)), str(directory))


def check_original_config(config: dict, source: str) -> None:
    """Refuse the original LLaVA options llavakit cannot reproduce, by name."""
    if config.get("mm_use_im_start_end"):
        raise LlavakitError(f"{source}: mm_use_im_start_end=true (image start/end tokens) is not supported")
    if config.get("mm_use_im_patch_token"):
        raise LlavakitError(f"{source}: mm_use_im_patch_token=true (image patch tokens) is not supported")
    if config.get("image_aspect_ratio", "square") not in ("pad", "square", None):
        raise LlavakitError(f"{source}: image_aspect_ratio {config['image_aspect_ratio']!r} (AnyRes tiling) is not "
                            "supported; llavakit reads pad and square")
    if config.get("mm_patch_merge_type", "flat") != "flat":
        raise LlavakitError(f"{source}: mm_patch_merge_type {config['mm_patch_merge_type']!r} is not supported (flat only)")
    if config.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        raise LlavakitError(f"{source}: mm_vision_select_feature {config['mm_vision_select_feature']!r} is not "
                            "patch or cls_patch")
    if not config.get("mm_vision_tower"):
        raise LlavakitError(f"{source}: config.json has no mm_vision_tower (the CLIP model to load)")


def _original_projector(directory: Path) -> dict[str, torch.Tensor]:
    """The ``mm_projector`` tensors, reading only the shard(s) that hold them."""
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index_name).is_file():
            weight_map = read_json(directory / index_name).get("weight_map", {})
            files = sorted({directory / f for k, f in weight_map.items() if k.startswith(PROJECTOR_PREFIXES[:2])})
            break
    found = {}
    for path in files:
        found.update({k: v for k, v in read_tensors(path).items() if k.startswith(PROJECTOR_PREFIXES[:2])})
    if not found:
        raise LlavakitError(f"{directory}: no model.mm_projector.* tensors in its weight files")
    return projector_tensors(found, str(directory))


def load_original(spec: ModelSpec):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llavakit.model.vision import HFVisionTower

    directory, cfg = Path(spec.source), dict(spec.config or {})
    check_original_config(cfg, str(directory))
    arch = next((a for a in cfg.get("architectures") or [] if a in TEXT_MODEL_TYPES), None)
    text_type = TEXT_MODEL_TYPES.get(cfg.get("model_type"), TEXT_MODEL_TYPES.get(arch))
    if text_type is None:
        raise LlavakitError(f"{directory}: original LLaVA model_type {cfg.get('model_type')!r} / architectures "
                            f"{cfg.get('architectures')} is not one llavakit reads (llava_llama, llava_mistral)")
    text = {k: v for k, v in cfg.items() if not k.startswith("mm_") and k not in (
        "model_type", "architectures", "image_aspect_ratio", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
        "image_grid_pinpoints", "tokenizer_padding_side", "tokenizer_model_max_length", "use_mm_proj")}
    text_config = AutoConfig.for_model(text_type, **text)
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("pytorch_model*.bin")):
        raise LlavakitError(f"{directory}: an original LLaVA config without language-model weights (a stage-1 "
                            "output?); load its mm_projector.bin onto a model with projector=")
    lm, info = _hf_call(directory, lambda: AutoModelForCausalLM.from_pretrained(
        directory, config=text_config, dtype="auto", output_loading_info=True))
    missing = [k for k in info.get("missing_keys", []) if not (k == "lm_head.weight" and text_config.tie_word_embeddings)]
    if missing:
        raise LlavakitError(f"{directory}: its config asks for {len(missing)} language-model tensors its weights lack "
                            f"(first: {sorted(missing)[0]}); a model loaded so would run with random layers")
    kind = cfg.get("mm_projector_type", "linear")
    mode = "pad" if cfg.get("image_aspect_ratio") == "pad" else "square"
    vcfg = VisionConfig(kind="hf", name_or_path=cfg["mm_vision_tower"],
                        feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
                        feature_select=cfg.get("mm_vision_select_feature", "patch"), image_mode=mode)
    try:
        tower = HFVisionTower.build(vcfg)
    except ConfigError as exc:
        raise LlavakitError(f"{directory}: its vision tower mm_vision_tower={cfg['mm_vision_tower']!r} "
                            f"cannot be loaded ({exc})") from None
    if cfg.get("mm_hidden_size") not in (None, tower.hidden_size):
        raise LlavakitError(f"{directory}: mm_hidden_size {cfg['mm_hidden_size']} but the tower "
                            f"{cfg['mm_vision_tower']} gives {tower.hidden_size}")
    tokenizer = _hf_call(directory, lambda: AutoTokenizer.from_pretrained(directory))
    config = LlavaConfig(name=directory.name, vision=vcfg, projector=ProjectorConfig(kind=kind), lm=LMConfig(kind="hf"))
    model = _finish(config, tower, lm, tokenizer, _original_projector(directory), str(directory))
    print(f"llavakit: {directory} is an original LLaVA checkpoint: tower {cfg['mm_vision_tower']}, projector {kind}, "
          f"template {model.config.template}", file=sys.stderr)
    return model


def _hf_call(directory: Path, load):
    """A transformers load whose failure (missing files, a bad config, a corrupt file) names the directory."""
    from safetensors import SafetensorError

    try:
        return load()
    except (OSError, ValueError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlavakitError(f"{directory}: cannot be loaded ({type(exc).__name__}: {first[:300]})") from None


def load_foreign(spec: ModelSpec):
    if spec.kind == "hf-llava":
        return load_hf_llava(spec)
    if spec.kind == "llava-original":
        return load_original(spec)
    raise LlavakitError(f"{spec.source}: a {spec.kind} is not a LLaVA model")
