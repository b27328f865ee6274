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
