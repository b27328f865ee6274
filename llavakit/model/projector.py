"""Projectors from vision features to LM embeddings, by exact name.

- ``linear``: one linear layer (LLaVA, the paper),
- ``mlp{N}x_gelu``: N linear layers with GELU between them (``mlp2x_gelu`` is LLaVA-1.5's);
- either wrapped in :class:`SnapToWords` with ``projector.snap`` (tokens snapped to word embeddings).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.errors import ConfigError

_MLP = re.compile(r"mlp([1-9][0-9]?)x_gelu")


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    match = _MLP.fullmatch(kind)
    if match:
        depth = int(match.group(1))
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    raise ConfigError(f"unknown projector {kind!r}: use 'linear' or 'mlp{{N}}x_gelu' (e.g. mlp2x_gelu)")


def projector_names() -> list[str]:
    return ["linear", "mlp{N}x_gelu"]


def linear_as_relu_mlp(weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """``y = Wx + b`` as a Llava two-layer projector with ``relu`` (d_vision → d_lm → d_lm), exactly:
    linear_1 = [I; −I; 0] without bias gives relu = [x⁺; x⁻; 0], linear_2 = [W, −W, 0] with bias b gives
    W(x⁺ − x⁻) + b. None when 2·d_vision > d_lm (no room for x⁺ and x⁻). Engines without an identity
    activation (vLLM) load this form; :func:`linear_from_relu_mlp` reads it back."""
    d_lm, d_vision = weight.shape
    if 2 * d_vision > d_lm:
        return None
    eye = torch.eye(d_vision, dtype=weight.dtype)
    return {"linear_1.weight": torch.cat([eye, -eye, eye.new_zeros(d_lm - 2 * d_vision, d_vision)]),
            "linear_1.bias": bias.new_zeros(d_lm),
            "linear_2.weight": torch.cat([weight, -weight, weight.new_zeros(d_lm, d_lm - 2 * d_vision)], dim=1),
            "linear_2.bias": bias}


def linear_from_relu_mlp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The linear projector's ``weight`` / ``bias`` if ``state`` is exactly :func:`linear_as_relu_mlp`'s form."""
    d_vision = state["linear_1.weight"].shape[1]
    weight, bias = state["linear_2.weight"][:, :d_vision].clone(), state["linear_2.bias"]
    form = linear_as_relu_mlp(weight, bias)
    if form is None or any(not torch.equal(form[k], state[k]) for k in form):
        return None
    return {"weight": weight, "bias": bias}


class SnapToWords(nn.Module):
    """``projector.snap``: each token of ``inner`` is replaced by the nearest row (cosine) of ``table``
    — the LM's own embeddings of the annotation words that ``llavakit align`` taught it (``red
    circle``, ``background``, ...). The LM then reads exactly the tokens it would read for those
    words: a cell the aligned projector names right arrives as clean as an ideal token
    (docs/training.md: snapped tokens + stage 2 alone beat the soft tokens + stage 1 + stage 2).

    The choice is an argmax, so nothing trains through it: the inner projector is trained by
    ``llavakit align`` only, and stage 1 has nothing to learn. ``table`` is a buffer saved with
    the projector; it takes the size of whatever table is loaded into it.
    """

    def __init__(self, inner: nn.Module, out_dim: int):
        super().__init__()
        self.inner = inner
        self.register_buffer("table", torch.zeros(0, out_dim))

    @torch.no_grad()
    def nearest(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(the inner projector's output, per token the index of its nearest ``table`` row)."""
        if self.table.shape[0] == 0:
            raise ConfigError("projector.snap needs its word table: start from a `llavakit align` projector artifact")
        out = self.inner(x)
        unit = F.normalize(self.table.float(), dim=-1)
        return out, (F.normalize(out.float(), dim=-1) @ unit.T).argmax(-1)

    def forward(self, x):
        out, nearest = self.nearest(x)
        return self.table[nearest].to(out.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buffer in list(self._buffers.items()):  # every table takes the size of the one loaded
            incoming = state_dict.get(prefix + name)
            if buffer is not None and incoming is not None and incoming.shape != buffer.shape:
                setattr(self, name, torch.empty_like(incoming, device=buffer.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
