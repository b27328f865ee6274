"""Synthetic scenes: determinism, disjoint splits, annotations that match the pixels, captions
that only state true things, config validation, resumable rendering, the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from llavakit.cli import main
from llavakit.datagen.facts import facts_from_coco, plural
from llavakit.datagen.language import REGION_PHRASES
from llavakit.datagen.scenes import image_id, render, sample_scene, scene_record
from llavakit.datagen.scenes_cli import generate_scenes
from llavakit.datagen.world import COLORS, SHAPES, SIZES, SceneConfig
from llavakit.errors import ConfigError

WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    summary = generate_scenes(out, n=40, seed=3, progress=False)
    inst = json.loads((out / "instances.json").read_text())
    caps = json.loads((out / "captions.json").read_text())
    return out, summary, inst, caps


def test_files_and_coco_structure(world):
    out, summary, inst, caps = world
    assert summary["images"] == 40 and len(inst["images"]) == 40
    assert {c["name"] for c in inst["categories"]} == set(SHAPES)
    ids = [a["id"] for a in inst["annotations"]]
    assert len(ids) == len(set(ids))
    image_ids = {im["id"] for im in inst["images"]}
    for im in inst["images"]:
        assert (out / "images" / im["file_name"]).is_file()
        assert 224 == im["width"] == im["height"]
    for a in inst["annotations"]:
        assert a["image_id"] in image_ids and a["iscrowd"] == 0
        assert a["color"] in COLORS and a["size"] in SIZES
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 224 and y + h <= 224 and w > 0 and h > 0
        assert 0 < a["area"] <= w * h
        assert 0.0 <= a["occluded"] <= 0.15
    per_image = {}
    for c in caps["annotations"]:
        per_image.setdefault(c["image_id"], []).append(c["caption"])
    assert set(per_image) == image_ids
    assert all(len(v) == 5 and len(set(v)) == 5 for v in per_image.values())


def test_boxes_match_rendered_pixels(world):
    out, _, inst, _ = world
    by_image = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in inst["images"][:15]:
        arr = np.asarray(Image.open(out / "images" / im["file_name"]).convert("RGB")).astype(int)
        for a in by_image.get(im["id"], []):
            x, y, w, h = (int(round(v)) for v in a["bbox"])
            crop = arr[y:y + h, x:x + w]
            near = (np.abs(crop - np.array(COLORS[a["color"]])).sum(-1) < 60).sum()
            # the object's colour fills its visible area (edges are anti-aliased), nothing of that colour
            # from another object is inside its box (same-coloured objects never touch)
            assert 0.8 * a["area"] <= near <= 1.05 * a["area"] + 4, (im["file_name"], a)
            outside = (np.abs(arr - np.array(COLORS[a["color"]])).sum(-1) < 60).sum() - near
            assert outside >= 0


def test_size_classes_have_gaps(world):
    _, _, inst, _ = world
    sides = {s: [] for s in SIZES}
    for a in inst["annotations"]:
        sides[a["size"]].append(max(a["bbox"][2], a["bbox"][3]))
    assert max(sides["small"]) < min(sides["medium"]) and max(sides["medium"]) < min(sides["large"])


def _claims(caption: str):
    """(number, colour, shape) claims such as 'two red circles' / '3 squares' / 'a blue star'."""
    colors = "|".join(COLORS)
    shapes = "|".join(sorted({plural(s) for s in SHAPES} | set(SHAPES), key=len, reverse=True))
    pat = re.compile(rf"\b(a|an|one|two|three|four|five|six|seven|eight|\d+) (?:(?:small|medium|large) )?"
                     rf"(?:({colors}) )?({shapes})\b", re.I)
    for m in pat.finditer(caption):
        word, color, noun = m.group(1).lower(), m.group(2), m.group(3).lower()
        shape = next(s for s in SHAPES if noun in (s, plural(s)))
        n = 1 if word in ("a", "an") else WORDS.get(word, None) or int(word)
        yield n, color, shape


def test_captions_state_only_true_things(world):
    _, _, inst, caps = world
    facts = facts_from_coco(inst)
    checked = 0
    for c in caps["annotations"]:
        f = facts.images[c["image_id"]]
        text = c["caption"]
        for color in COLORS:
            if re.search(rf"\b{color}\b", text, re.I):
                assert f.color_counts[color] > 0, (text, "colour not present")
        for shape in SHAPES:
            if re.search(rf"\b({shape}|{plural(shape)})\b", text, re.I):
                assert f.shape_counts[shape] > 0, (text, "shape not present")
        for n, color, shape in _claims(text):
            have = f.count(shape=shape, color=color)
            # "a"/"one" may pick one of several; explicit numbers are exact counts
            assert have >= 1 if n == 1 else have == n, (text, n, color, shape, have)
            checked += 1
        for region, phrase in REGION_PHRASES.items():
            for m in re.finditer(rf"(?:a|an) (?:(small|medium|large) )?(\w+) (\w+) {phrase}", text):
                size, color, shape = m.groups()
                assert any(o.region == region and o.color == color and o.shape == shape
                           and (size is None or o.size == size) for o in f.objects), (text, m.group(0))
                checked += 1
    assert checked > 100


def test_deterministic_and_seed_splits_disjoint():
    cfg = SceneConfig()
    a, b = sample_scene(cfg, 0, 7), sample_scene(cfg, 0, 7)
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert scene_record(a) == scene_record(b)
    layouts = {}
    for seed in (0, 1):
        for i in range(60):
            image, anns = scene_record(sample_scene(cfg, seed, i))
            key = json.dumps([(x["category_id"], x["color"], x["bbox"]) for x in anns])
            assert key not in layouts, "two splits share a layout"
            layouts[key] = image["id"]
    assert image_id(0, 5) != image_id(5, 0) and image_id(1, 0) != image_id(0, 0)


def test_count_weights_and_config_validation():
    cfg = SceneConfig(count_weights=[0, 0, 1, 0, 0, 0, 0, 0])
    assert {len(sample_scene(cfg, 0, i).objects) for i in range(10)} == {3}
    cfg = SceneConfig(min_objects=8, max_objects=8, shapes=["circle", "square"], colors=["red", "blue"])
    for i in range(5):
        scene = sample_scene(cfg, 0, i)
        assert len(scene.objects) == 8 and {o.shape for o in scene.objects} <= {"circle", "square"}
    with pytest.raises(ConfigError, match="count_weights"):
        SceneConfig(count_weights=[1, 2])
    with pytest.raises(ConfigError, match="hexagon"):
        SceneConfig(shapes=["circle", "hexagon"])
    with pytest.raises(ConfigError, match="max_objects"):
        SceneConfig(min_objects=5, max_objects=2)


def test_colors_stay_far_from_background():
    cfg = SceneConfig()
    for i in range(30):
        scene = sample_scene(cfg, 2, i)
        bg = scene.background.reshape(-1, 3).astype(float)
        for o in scene.objects:
            d = np.sqrt(((bg - np.array(COLORS[o.color])) ** 2).sum(1)).min()
            assert d >= cfg.min_color_distance - 1


def test_resume_reuses_images_and_rejects_other_config(tmp_path):
    s1 = generate_scenes(tmp_path, n=4, seed=1, progress=False)
    first = (tmp_path / "images" / "s1_000002.png").read_bytes()
    s2 = generate_scenes(tmp_path, n=6, seed=1, progress=False)
    assert not s1["reused_images"] and s2["reused_images"] and s2["images"] == 6
    assert (tmp_path / "images" / "s1_000002.png").read_bytes() == first
    with pytest.raises(ConfigError, match="another seed or config"):
        generate_scenes(tmp_path, n=2, seed=2, progress=False)
    generate_scenes(tmp_path, n=2, seed=2, progress=False, overwrite=True)


def test_cli_scenes(tmp_path, capsys):
    code = main(["scenes", "--n", "3", "--seed", "4", "--out", str(tmp_path), "--quiet",
                 "--count-weights", "0,1", "--min-objects", "2", "--max-objects", "3", "--image-size", "256"])
    assert code == 0
    inst = json.loads((tmp_path / "instances.json").read_text())
    assert all(im["width"] == 256 for im in inst["images"])
    assert len(inst["annotations"]) == 9
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert main(["scenes", "--n", "3", "--out", str(tmp_path / "x"), "--count-weights", "1,a"]) == 2


def test_cli_config_file_and_set_overrides(tmp_path):
    (tmp_path / "scenes.yaml").write_text("shapes: [circle, square]\ncolors: [red, blue, white]\nmax_objects: 3\n")
    out = tmp_path / "w"
    assert main(["scenes", "--n", "6", "--out", str(out), "--quiet", "--config", str(tmp_path / "scenes.yaml"),
                 "--set", "colors=[red]"]) == 0
    inst = json.loads((out / "instances.json").read_text())
    assert [c["name"] for c in inst["categories"]] == ["circle", "square"]
    assert {a["color"] for a in inst["annotations"]} == {"red"}
    assert all(sum(a["image_id"] == im["id"] for a in inst["annotations"]) <= 3 for im in inst["images"])
    assert main(["scenes", "--n", "2", "--out", str(tmp_path / "v"), "--set", "max_occlusion=0.9"]) == 2
    assert main(["scenes", "--n", "2", "--out", str(tmp_path / "v"), "--set", "colours=[red]"]) == 2
