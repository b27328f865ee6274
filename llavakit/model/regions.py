"""Region tokens: the image's nine thirds, each named in words the LM already reads, then its content.

With ``projector.layout = "cells+regions"`` the image becomes the projector's 49 cell tokens
followed by, for each third of the image in reading order, the LM's own input embeddings of its
name (" top left", " top", ... " bottom right") and one projected token of the tower features
pooled over that third. The LM then reads position the way it reads text ("top left: red circle"),
instead of having to learn which token index is which corner — which a 135M LM does not learn in
the nano budget (docs/training.md: with ideal cell tokens position stays at its blind level).

The names are looked up in the LM's embedding table at every forward (not copied), so they stay
the words the LM reads while stage 2 tunes it. The content tokens use the same projector as the
cells; ``llavakit align`` trains them on the object centred in each third.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Layout = Literal["cells", "cells+regions"]
LAYOUTS: tuple[str, ...] = ("cells", "cells+regions")
REGION_NAMES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


def marker_ids(tokenizer) -> list[list[int]]:
    """Token ids of every region's name, as inside a sentence (leading space)."""
    return [tokenizer(" " + name, add_special_tokens=False)["input_ids"] for name in REGION_NAMES]


def region_token_count(markers: list[list[int]]) -> int:
    return sum(len(m) + 1 for m in markers)


def pool_regions(features: torch.Tensor) -> torch.Tensor:
    """``(B, N, C)`` cell features of a square grid → ``(B, 9, C)``: the mean over each third
    (adaptive pooling: a 7x7 grid gives overlapping 3x3 windows), reading order."""
    b, n, c = features.shape
    grid = int(round(n ** 0.5))
    if grid * grid != n:
        raise ValueError(f"region tokens need a square grid of cell features, got {n}")
    maps = features.transpose(1, 2).reshape(b, c, grid, grid)
    return F.adaptive_avg_pool2d(maps, 3).reshape(b, c, 9).transpose(1, 2)


def interleave(cells: torch.Tensor, regions: torch.Tensor, names: list[torch.Tensor]) -> torch.Tensor:
    """``[cells..., name_1..., region_1, ..., name_9..., region_9]`` per image: ``(B, N + sum(len+1), D)``."""
    b = cells.shape[0]
    parts = [cells]
    for k, name in enumerate(names):
        parts += [name.to(cells.dtype).unsqueeze(0).expand(b, -1, -1), regions[:, k:k + 1]]
    return torch.cat(parts, dim=1)


def region_of(box: list[float], width: float, height: float) -> int:
    """Index (reading order) of the third holding the centre of a COCO box ``[x, y, w, h]``."""
    x, y, w, h = box
    col = min(2, max(0, int(3 * (x + w / 2) / width)))
    row = min(2, max(0, int(3 * (y + h / 2) / height)))
    return 3 * row + col
