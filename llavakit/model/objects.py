"""``projector.objects``: the snapped grid read as a short list of objects, each said in words.

Snapped word tokens (:class:`~llavakit.model.projector.SnapToWords`) tell the LM *what* each of
the grid's cells shows (49, or 196 with ``vision.feature_stride: 16``), but not *where* or *how
large*: a small LM does not learn in minutes that token 17 of the grid is "top right", nor count
cells into a size (docs/training.md: position and size stay at their blind level even with ideal
cell tokens). This layout groups the snapped cells into objects and says each one as the LM's own
word embeddings, one token per word::

    large red circle top left , small blue star bottom right , background background ...

- an object is a 4-connected group of non-background cells; its words are the group's majority key
  (e.g. ``red circle``), tie broken by the key's order. With ``projector.object_split`` r > 0 the
  cells of one key are an object of their own (touching objects stay apart) unless they touch an
  object r times their size (misnamed edge cells) — :func:`group_cells`;
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


def _neighbours(i: int, grid: int) -> list[int]:
    r, c = divmod(i, grid)
    return [rr * grid + cc for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
            if 0 <= rr < grid and 0 <= cc < grid]


def _parts(keys: list[int], grid: int, background: int, by_key: bool) -> tuple[list[list[int]], list[int]]:
    """4-connected parts of non-background cells (``by_key``: of one key each) and each cell's part (-1: none)."""
    label, parts = [-1] * len(keys), []
    for start, key in enumerate(keys):
        if label[start] >= 0 or key == background:
            continue
        label[start], stack, cells = len(parts), [start], []
        while stack:
            i = stack.pop()
            cells.append(i)
            for j in _neighbours(i, grid):
                if label[j] < 0 and keys[j] != background and (not by_key or keys[j] == key):
                    label[j] = len(parts)
                    stack.append(j)
        parts.append(cells)
    return parts, label


def group_cells(keys: list[int], grid: int, background: int, split: float = 0.0) -> list[tuple[int, list[int]]]:
    """Objects of the grid (row-major ``keys``): (majority key, cells) each, in reading order of their
    centroids (row third, then column).

    ``split`` 0: an object is a 4-connected group of non-background cells, so touching objects are
    one. ``split`` r > 0: cells of one key form an object of their own, and — smallest first — an
    object joins the touching object it shares most edges with when that one has at least r times
    its cells (a few misnamed cells at an object's edge stay part of it; two touching objects of
    similar size stay two)."""
    parts, label = _parts(keys, grid, background, by_key=split > 0)
    groups = {p: list(cells) for p, cells in enumerate(parts)}
    if split > 0:
        owner = list(range(len(parts)))

        def root(p: int) -> int:
            while owner[p] != p:
                p = owner[p]
            return p

        for p in sorted(groups, key=lambda p: (len(parts[p]), p)):
            if p not in groups:
                continue
            edges: dict[int, int] = {}
            for j in (j for i in groups[p] for j in _neighbours(i, grid) if label[j] >= 0 and root(label[j]) != p):
                edges[root(label[j])] = edges.get(root(label[j]), 0) + 1
            if edges:
                q = max(edges, key=lambda q: (edges[q], -q))
                if len(groups[q]) >= split * len(groups[p]):
                    owner[p] = q
                    groups[q] += groups.pop(p)
    out = []
    for cells in groups.values():
        votes: dict[int, int] = {}
        for i in cells:
            votes[keys[i]] = votes.get(keys[i], 0) + 1
        out.append((max(votes, key=lambda k: (votes[k], -k)), sorted(cells)))
    return sorted(out, key=lambda group: (third(centroid(group[1], grid)[0]), centroid(group[1], grid)[1]))


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

    def __init__(self, inner, out_dim: int, n_tokens: int, split: float = 0.0):
        super().__init__(inner, out_dim)
        if n_tokens < 1:
            raise ConfigError(f"projector.objects must be >= 1 tokens, got {n_tokens}")
        self.n_tokens = n_tokens
        self.split = split  # projector.object_split: see group_cells
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
            for key, cells in group_cells(row, grid, background_key, self.split):
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
