"""Projectors from vision features to LM embeddings, by exact name.

- ``linear``: one linear layer (LLaVA, the paper),
- ``mlp{N}x_gelu``: N linear layers with GELU between them (``mlp2x_gelu`` is LLaVA-1.5's).

``position="words"`` (the ``nano`` preset) adds to each output token a fixed signal the LM can
read: the mean of its own input embeddings of the cell's region words ("top"/"middle"/"bottom",
"left"/"center"/"right"). A per-token projector cannot know where its cell is (a CNN's features
are translation-equivariant away from the border), and a small LM tuned on a few hundred samples
does not learn to map token index to "top left"; with the words in the token it only has to read.
The table is a buffer (saved in the artifact, never trained).
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


POSITIONS = ("none", "words")


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


class WordPositions(nn.Module):
    """``inner(x) + position``: a projector plus each cell's region-word embedding (fixed)."""

    def __init__(self, inner: nn.Module, position: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("position", position.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out + self.position.to(out.dtype)


def add_positions(projector: nn.Module, position: str, num_tokens: int, tokenizer, embeddings) -> nn.Module:
    """Wrap ``projector`` for ``position`` (``none``: unchanged); the grid must be square."""
    if position not in POSITIONS:
        raise ConfigError(f"projector.position {position!r} is not one of {', '.join(POSITIONS)}")
    if position == "none":
        return projector
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens:
        raise ConfigError(f"projector.position=words needs a square grid of image tokens, not {num_tokens}")
    return WordPositions(projector, word_table(cell_region_words(grid), tokenizer, embeddings.detach()))
