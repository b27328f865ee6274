"""``projector.objects``: the snapped grid read as a short list of objects, each said in words.

Snapped word tokens (:class:`~llavakit.model.projector.SnapToWords`) tell the LM *what* each of
the grid's cells shows (49, or 196 with ``vision.feature_stride: 16``), but not *where* or *how
large*: a small LM does not learn in minutes that token 17 of the grid is "top right", nor count cells into a size (docs/training.md: position and size
stay at their blind level even with ideal cell tokens). This layout groups the snapped cells into
objects and says each one as the LM's own word embeddings, one token per word::

    large red circle top left , small blue star bottom right , background background ...

- an object is a 4-connected group of non-background cells; its words are the group's majority key
  (e.g. ``red circle``), tie broken by the key's order;
- its place is the thirds of the grid its centroid falls in (``top|middle|bottom``,
  ``left|center|right``), objects in reading order (by row third, then left to right);
- its size word is the one whose typical cell count (``llavakit align`` measured it on the
  annotations' boxes) is nearest in log space — only when the annotations had a size field;
- the sequence is cut or padded with ``background`` to ``projector.objects`` tokens.

Everything is an argmax or a count, so nothing trains through it (like ``snap``): the inner
projector is taught by ``llavakit align``, which also writes every buffer below. Grouping is a
flood fill over at most a few hundred cells per image in Python: no library does this on a torch
grid without scipy, and it costs microseconds next to the tower.
"""

from __future__ import annotations

import math

import torch

from llavakit.errors import ConfigError
from llavakit.model.projector import SnapToWords

VERTICAL = ("top", "middle", "bottom")
HORIZONTAL = ("left", "center", "right")


def third(t: float) -> int:
    """0, 1 or 2: which third of [0, 1] ``t`` falls in."""
    return 0 if t < 1 / 3 else 2 if t > 2 / 3 else 1


def group_cells(keys: list[int], grid: int, background: int) -> list[tuple[int, list[int]]]:
    """4-connected groups of non-background cells (row-major ``keys``): (majority key, cells) each,
    in reading order of their centroids (row third, then column)."""
    seen, groups = set(), []
    for start, key in enumerate(keys):
        if start in seen or key == background:
            continue
        stack, cells = [start], []
        seen.add(start)
        while stack:
            i = stack.pop()
            cells.append(i)
            r, c = divmod(i, grid)
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                j = rr * grid + cc
                if 0 <= rr < grid and 0 <= cc < grid and j not in seen and keys[j] != background:
                    seen.add(j)
                    stack.append(j)
        votes: dict[int, int] = {}
        for i in cells:
            votes[keys[i]] = votes.get(keys[i], 0) + 1
        groups.append((max(votes, key=lambda k: (votes[k], -k)), sorted(cells)))
    return sorted(groups, key=lambda group: (third(centroid(group[1], grid)[0]), centroid(group[1], grid)[1]))


def centroid(cells: list[int], grid: int) -> tuple[float, float]:
    """(row, column) of the cells' centre as fractions of the grid side."""
    return ((sum(i // grid for i in cells) / len(cells) + 0.5) / grid,
            (sum(i % grid for i in cells) / len(cells) + 0.5) / grid)


def nearest_size(count: int, typical: dict[str, float]) -> str:
    """The size word whose typical cell count is nearest ``count`` in log space."""
    return min(typical, key=lambda word: abs(math.log(count) - math.log(typical[word])))


class SnapToObjects(SnapToWords):
    """Snap each cell to its nearest key of ``table`` (as :class:`SnapToWords`), group the cells into
    objects and emit ``n_tokens`` word embeddings per image (see the module docstring).

    Buffers (all written by ``llavakit align``; their sizes follow whatever is loaded):
    ``words`` (V, D) the LM's embedding of each single word; ``key_words`` (K, W) per key of
    ``table`` its words as rows of ``words`` (-1 pads shorter keys); ``size_words`` (S,) and
    ``size_cells`` (S,) a size word and its typical cell count; ``special`` the rows of
    ``background``, ``,`` and the six place words (top, middle, bottom, left, center, right).
    """

    def __init__(self, inner, out_dim: int, n_tokens: int):
        super().__init__(inner, out_dim)
        if n_tokens < 1:
            raise ConfigError(f"projector.objects must be >= 1 tokens, got {n_tokens}")
        self.n_tokens = n_tokens
        self.register_buffer("words", torch.zeros(0, out_dim))
        self.register_buffer("key_words", torch.zeros(0, 1, dtype=torch.long))
        self.register_buffer("size_words", torch.zeros(0, dtype=torch.long))
        self.register_buffer("size_cells", torch.zeros(0))
        self.register_buffer("special", torch.zeros(0, dtype=torch.long))

    def word_rows(self, keys: torch.Tensor) -> list[list[int]]:
        """Per image (``keys``: (B, N) nearest key per cell) the rows of ``words`` to emit."""
        n = keys.shape[1]
        grid = math.isqrt(n)
        if grid * grid != n:
            raise ConfigError(f"projector.objects needs a square grid of cells, got {n} tokens")
        background, comma, *place = self.special.tolist()
        is_background = (self.key_words[:, 0] == background).nonzero()
        background_key = int(is_background[0]) if len(is_background) else -1  # -1: every cell is an object
        key_words = [[w for w in row if w >= 0] for row in self.key_words.tolist()]
        typical = dict(zip(self.size_words.tolist(), self.size_cells.tolist()))  # size word row → cell count
        out = []
        for row in keys.tolist():
            ids: list[int] = []
            for key, cells in group_cells(row, grid, background_key):
                size = [nearest_size(len(cells), typical)] if typical else []
                r, c = centroid(cells, grid)
                ids += size + list(key_words[key]) + [place[third(r)], place[3 + third(c)], comma]
            out.append((ids + [background] * self.n_tokens)[:self.n_tokens])
        return out

    def forward(self, x):
        if self.words.shape[0] == 0:
            raise ConfigError("projector.objects needs its word tables: start from a `llavakit align` projector artifact")
        out, keys = self.nearest(x)
        rows = torch.tensor(self.word_rows(keys), device=self.words.device)
        return self.words[rows].to(out.dtype)
