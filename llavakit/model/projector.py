"""Projectors from vision features to LM embeddings, by exact name.

- ``linear``: one linear layer (LLaVA, the paper),
- ``mlp{N}x_gelu``: N linear layers with GELU between them (``mlp2x_gelu`` is LLaVA-1.5's).
"""

from __future__ import annotations

import re

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
