"""Projectors from vision features to LM embeddings, by exact name.

- ``linear``: one linear layer (LLaVA, the paper),
- ``mlp{N}x_gelu``: N linear layers with GELU between them (``mlp2x_gelu`` is LLaVA-1.5's).

``position="grid"`` gives the projector each token's grid cell as well (its row and column as
one-hots concatenated to the features): a per-token projector otherwise cannot know where its cell
is (a CNN's features are translation-equivariant away from the border), so it cannot say "top
left" for an object there. Token-level alignment (``llavakit align position_words=true``) teaches it
to name an object cell's region; background cells stay "background".
"""

from __future__ import annotations

import re

import math

import torch
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


POSITIONS = ("none", "grid")


def word_table(keys, tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """``(len(keys), D)``: per key (a tuple of words) the mean over its words of the mean embedding
    of the word's tokens (each word tokenized with a leading space, as inside a sentence)."""
    rows = []
    for key in keys:
        vecs = []
        for word in key:
            ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            vecs.append(embeddings[ids].float().mean(0))
        rows.append(torch.stack(vecs).mean(0))
    return torch.stack(rows)


def cell_region_words(grid: int) -> list[tuple[str, str]]:
    """Per cell (row-major) its vertical and horizontal third as words: ("top", "left"), ..."""
    def third(t: float, names: tuple[str, str, str]) -> str:
        return names[0] if t < 1 / 3 else names[2] if t > 2 / 3 else names[1]

    return [(third((r + 0.5) / grid, ("top", "middle", "bottom")), third((c + 0.5) / grid, ("left", "center", "right")))
            for r in range(grid) for c in range(grid)]


class GridCoded(nn.Module):
    """``inner(concat(x, code))``: each token's features with its cell's row and column one-hots."""

    def __init__(self, inner: nn.Module, grid: int):
        super().__init__()
        self.inner = inner
        self.grid = grid
        eye = torch.eye(grid)
        code = torch.cat([eye.repeat_interleave(grid, 0), eye.repeat(grid, 1)], dim=1)  # token r*grid+c: e_r, e_c
        self.register_buffer("code", code, persistent=False)  # a function of the grid: not saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.code.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
        return self.inner(torch.cat([x, code], dim=-1))


def build_connector(kind: str, position: str, in_dim: int, out_dim: int, num_tokens: int) -> nn.Module:
    """The projector ``kind``; with ``position="grid"`` its input also gets each token's grid cell."""
    if position not in POSITIONS:
        raise ConfigError(f"projector.position {position!r} is not one of {', '.join(POSITIONS)}")
    if position == "none":
        return build_projector(kind, in_dim, out_dim)
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens:
        raise ConfigError(f"projector.position=grid needs a square grid of image tokens, not {num_tokens}")
    return GridCoded(build_projector(kind, in_dim + 2 * grid, out_dim), grid)
