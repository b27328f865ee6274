"""``projector.objects``: snapped cells grouped into objects and said in word tokens."""

from __future__ import annotations

import pytest
import torch

from llavakit.errors import ConfigError
from llavakit.model.config import ProjectorConfig
from llavakit.model.objects import SnapToObjects, group_cells

B = 0  # the background key in these grids


def test_group_cells_finds_connected_objects_in_reading_order():
    grid = [B, B, B, 2,
            1, 1, B, 2,
            1, 3, B, B,
            B, B, B, 4]
    groups = group_cells(grid, 4, B)
    # the top-right pair (rows 0-1) comes first; the left group's majority is key 1 (3 of 4 cells)
    assert groups == [(2, [3, 7]), (1, [4, 5, 8, 9]), (4, [15])]
    assert group_cells([B] * 16, 4, B) == []


def test_split_keeps_touching_objects_apart_and_absorbs_misnamed_edge_cells():
    grid = [1, 1, 2, 2, B,
            1, 1, 2, 2, B,
            1, 3, B, B, B,
            1, 1, B, B, B,
            B, B, B, B, B]
    # split 0: every touching cell is one object, named by its majority
    assert group_cells(grid, 5, B) == [(1, [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 15, 16])]
    # split 4: key 2 (4 cells) touches key 1 (7 cells, < 4x): two objects; the lone 3 touches 1 (7 >= 4x1):
    # absorbed. Reading order: key 2's centroid is in the top third, key 1's in the middle one
    assert group_cells(grid, 5, B, split=4.0) == [(2, [2, 3, 7, 8]), (1, [0, 1, 5, 6, 10, 11, 15, 16])]
    # split 8: 7 cells are not 8 times the lone 3: it stays an object of its own
    assert (3, [11]) in group_cells(grid, 5, B, split=8.0)
    # a part absorbed into a larger one counts with it: 1 absorbs 3, then 1+3 (8 cells) absorbs 2 at split 2
    assert group_cells(grid, 5, B, split=2.0) == [(1, [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 15, 16])]


def test_objects_projector_splits_as_configured():
    from llavakit.model.presets import get_preset

    assert get_preset("nano-objects").projector.object_split == 4.0
    assert SnapToObjects(torch.nn.Identity(), 3, 8, 4.0).split == 4.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "x", True])
def test_object_split_is_a_finite_number_and_needs_objects(bad):
    with pytest.raises(ConfigError, match="object_split must be a finite number >= 0"):
        ProjectorConfig(snap=True, objects=8, object_split=bad)
    with pytest.raises(ConfigError, match="object_split groups objects: it needs projector.objects"):
        ProjectorConfig(snap=True, object_split=4.0)


def test_group_cells_breaks_a_tie_by_the_lower_key():
    assert group_cells([5, 3, B, B], 2, B) == [(3, [0, 1])]


def _module(n_tokens=12, sizes=True):
    """A 2x2-cell-feature projector whose keys are: 0 background, 1 "red circle", 2 "blue square"."""
    inner = torch.nn.Identity()
    m = SnapToObjects(inner, 3, n_tokens)
    m.table = torch.eye(3)  # a cell whose feature is e_k snaps to key k
    # words: 0 background, 1 ",", 2-4 top middle bottom, 5-7 left center right, 8 red, 9 circle, 10 blue,
    # 11 square, 12 small, 13 large
    m.words = torch.arange(14, dtype=torch.float32)[:, None].repeat(1, 3)
    m.key_words = torch.tensor([[0, -1], [8, 9], [10, 11]])
    m.special = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    if sizes:
        m.size_words, m.size_cells = torch.tensor([12, 13]), torch.tensor([1.0, 4.0])
    return m


def _said(tokens):
    return tokens[0, :, 0].long().tolist()


def test_objects_are_said_with_size_place_and_padding():
    m = _module()
    e = torch.eye(3)
    # a 3x3 grid: a red circle filling the top-left 2x2, a blue square alone at the bottom right
    cells = [e[1], e[1], e[0], e[1], e[1], e[0], e[0], e[0], e[2]]
    out = m(torch.stack(cells)[None])
    assert out.shape == (1, 12, 3)
    # "large red circle middle center ," (4 cells; centroid at (0.5 + 0.5) / 3 = 1/3 of the side: the
    # middle third), then "small blue square bottom right ," (1 cell)
    assert _said(out) == [13, 8, 9, 3, 6, 1, 12, 10, 11, 4, 7, 1]
    blank = m(torch.stack([e[0]] * 9)[None])
    assert _said(blank) == [0] * 12  # nothing seen: all background


def test_without_size_words_no_size_token_and_long_scenes_are_cut():
    m = _module(n_tokens=4, sizes=False)
    e = torch.eye(3)
    out = m(torch.stack([e[2], e[0], e[0], e[1]])[None])  # 2x2: blue top left, red bottom right
    assert _said(out) == [10, 11, 2, 5]  # "blue square top left" then cut at 4 tokens


def test_an_untaught_objects_projector_says_so():
    m = SnapToObjects(torch.nn.Identity(), 3, 8)
    with pytest.raises(ConfigError, match="needs its word tables"):
        m(torch.zeros(1, 4, 3))


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_objects_must_be_a_count_and_need_snap(bad):
    with pytest.raises(ConfigError, match="whole number"):
        ProjectorConfig(snap=True, objects=bad)
    with pytest.raises(ConfigError, match="needs projector.snap"):
        ProjectorConfig(objects=8)
