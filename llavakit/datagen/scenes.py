"""Sample and render synthetic scenes with exact annotations.

Seed scheme (why a held-out split is disjoint): image ``index`` of the split with seed ``seed``
has image id ``seed * 1_000_000 + index`` and file ``s{seed}_{index:06d}.png``; its layout comes
from ``numpy.random.default_rng([seed, index, 0])`` and its captions from ``[seed, index, 1]``.
Two splits with different seeds therefore share no image id, no file name and no random stream
(NumPy's SeedSequence hashes the whole entropy list, so ``[0, 5, 0]`` and ``[5, 0, 0]`` differ);
each scene depends only on its own (seed, index), so a split can be grown (larger ``n``) or
regenerated in any order with identical results. Positions and sizes are continuous draws, so two
splits repeating an exact layout is practically impossible (the tests check a sample).

Rendering is done at 2x and box-filtered down, so edges are anti-aliased; masks, areas and
occlusion are measured on the 2x canvas and reported in 1x pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from llavakit.datagen.world import COLORS, PATTERNS, SHAPE_IDS, SHAPES, SIZE_ORDER, SceneConfig
from llavakit.errors import DataError

SS = 2  # supersampling factor
MAX_INDEX = 1_000_000
PLACE_ATTEMPTS = 60


def image_id(seed: int, index: int) -> int:
    return seed * MAX_INDEX + index


def file_name(seed: int, index: int) -> str:
    return f"s{seed}_{index:06d}.png"


@dataclass
class PlacedObject:
    shape: str
    color: str
    size: str
    x: int  # top-left of the mask on the 2x canvas
    y: int
    mask: np.ndarray  # bool, tight around the shape, 2x resolution
    full: int  # mask pixels (2x)
    visible: int  # pixels not covered by later objects (2x)
    occluded_by: list[int] = field(default_factory=list)  # draw indices of objects on top

    @property
    def bbox(self) -> list[float]:
        h, w = self.mask.shape
        return [self.x / SS, self.y / SS, w / SS, h / SS]


@dataclass
class Scene:
    seed: int
    index: int
    width: int
    height: int
    pattern: str
    tone: str
    background: np.ndarray  # uint8 HxWx3 at 1x
    objects: list[PlacedObject]

    @property
    def id(self) -> int:
        return image_id(self.seed, self.index)

    @property
    def file_name(self) -> str:
        return file_name(self.seed, self.index)


@lru_cache(maxsize=4096)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """A read-only bool mask (2x resolution) of ``shape`` drawn in a ``side``-px box, cropped tight."""
    n = side * SS
    img = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(img)
    poly = SHAPES[shape]
    if poly is None:
        draw.ellipse([0, 0, n - 1, n - 1], fill=1)
    else:
        draw.polygon([((px + 1) / 2 * (n - 1), (py + 1) / 2 * (n - 1)) for px, py in poly], fill=1)
    mask = np.asarray(img, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy()
    mask.setflags(write=False)
    return mask


def _background(rng: np.random.Generator, cfg: SceneConfig) -> tuple[np.ndarray, str, str, np.ndarray]:
    s = cfg.image_size
    level = rng.uniform(95, 170)
    base = level + rng.uniform(-14, 14, size=3)
    amp = rng.uniform(6, 16)
    pattern = cfg.patterns[int(rng.integers(len(cfg.patterns)))]
    yy, xx = np.ogrid[0:s, 0:s]
    if pattern == "plain":
        delta = np.zeros((1, 1), np.float32)
    elif pattern == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy) / s
        delta = ((t - t.min()) / max(float(np.ptp(t)), 1e-6) * 2 - 1) * amp
    elif pattern == "noise":
        delta = np.clip(rng.normal(0, amp / 2, size=(s, s)), -amp, amp).astype(np.float32)
    elif pattern == "stripes":
        period = rng.uniform(14, 36) * cfg.scale
        a = rng.choice([0.0, np.pi / 2, np.pi / 4, 3 * np.pi / 4])
        t = np.cos(a) * xx + np.sin(a) * yy
        delta = np.where(np.sin(2 * np.pi * t / period) >= 0, amp / 2, -amp / 2).astype(np.float32)
    else:  # checker
        cell = int(rng.integers(14, 33) * cfg.scale)
        delta = np.where(((xx // cell + yy // cell) % 2) == 0, amp / 2, -amp / 2).astype(np.float32)
    delta = np.broadcast_to(delta, (s, s))
    bg = np.clip(base[None, None, :] + delta[..., None], 0, 255).astype(np.uint8)
    tone = "dark gray" if level < 115 else "light gray" if level > 150 else "gray"
    # the darkest, brightest and mean background colours (delta is the same on every channel)
    probes = np.clip(base[None, :] + np.array([[-amp], [amp], [0.0]], np.float32), 0, 255)
    return bg, pattern, tone, probes


def _far_colors(probes: np.ndarray, cfg: SceneConfig) -> list[str]:
    return [
        c for c in cfg.colors
        if float(np.sqrt(((probes - np.asarray(COLORS[c], np.float32)) ** 2).sum(1)).min()) >= cfg.min_color_distance
    ]


def _try_place(label: np.ndarray, objects: list[PlacedObject], mask: np.ndarray, color: str,
               rng: np.random.Generator, cfg: SceneConfig) -> tuple[int, int] | None:
    H, W = label.shape
    mh, mw = mask.shape
    m = cfg.margin * SS
    if mw > W - 2 * m or mh > H - 2 * m:
        return None
    x = int(rng.integers(m, W - m - mw + 1))
    y = int(rng.integers(m, H - m - mh + 1))
    # objects of the same colour must not touch (they would merge into one blob)
    pad = 3 * SS
    around = label[max(0, y - pad):y + mh + pad, max(0, x - pad):x + mw + pad]
    same = np.array([False] + [o.color == color for o in objects])  # indexed by label + 1
    if same.any() and same[around + 1].any():
        return None
    covered = label[y:y + mh, x:x + mw][mask]
    hits = np.bincount(covered[covered >= 0], minlength=len(objects))
    for j in np.flatnonzero(hits):
        obj = objects[j]
        if obj.visible - hits[j] < (1.0 - cfg.max_occlusion) * obj.full:
            return None
    return x, y


def sample_scene(cfg: SceneConfig, seed: int, index: int) -> Scene:
    """The scene for (seed, index): a pure function of its arguments."""
    if not 0 <= index < MAX_INDEX or seed < 0:
        raise DataError(f"scene (seed {seed}, index {index}): need seed >= 0 and 0 <= index < {MAX_INDEX}")
    rng = np.random.default_rng([seed, index, 0])
    counts = np.arange(cfg.min_objects, cfg.max_objects + 1)
    weights = np.ones(len(counts)) if cfg.count_weights is None else np.asarray(cfg.count_weights, float)
    n = int(rng.choice(counts, p=weights / weights.sum()))
    for _ in range(50):
        bg, pattern, tone, probes = _background(rng, cfg)
        colors = _far_colors(probes, cfg)
        if colors:
            break
    else:
        raise DataError(f"scene (seed {seed}, index {index}): no colour is far enough from any background; "
                        f"lower min_color_distance ({cfg.min_color_distance})")
    size_p = np.asarray(cfg.size_weights, float) / sum(cfg.size_weights)
    s = cfg.image_size * SS
    label = np.full((s, s), -1, dtype=np.int16)
    objects: list[PlacedObject] = []
    for k in range(n):
        shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        color = colors[int(rng.integers(len(colors)))]
        want = SIZE_ORDER.index(str(rng.choice(SIZE_ORDER, p=size_p)))
        placed = None
        # crowded scenes fall back to smaller size classes; the recorded size is the drawn one
        for size in SIZE_ORDER[want::-1]:
            lo, hi = cfg.size_range(size)
            for _ in range(PLACE_ATTEMPTS):
                mask = shape_mask(shape, int(rng.integers(lo, hi + 1)))
                pos = _try_place(label, objects, mask, color, rng, cfg)
                if pos is not None:
                    placed = (size, mask, pos)
                    break
            if placed:
                break
        if placed is None:
            raise DataError(f"scene (seed {seed}, index {index}): could not place object {k + 1} of {n}; "
                            "lower max_objects or raise image_size")
        size, mask, (x, y) = placed
        region = label[y:y + mask.shape[0], x:x + mask.shape[1]]
        covered = region[mask]
        hits = np.bincount(covered[covered >= 0], minlength=len(objects))
        for j in np.flatnonzero(hits):
            objects[j].visible -= int(hits[j])
            objects[j].occluded_by.append(k)
        region[mask] = k
        full = int(mask.sum())
        objects.append(PlacedObject(shape, color, size, x, y, mask, full, full))
    return Scene(seed, index, cfg.image_size, cfg.image_size, pattern, tone, bg, objects)


def render(scene: Scene) -> Image.Image:
    """The RGB image of ``scene`` (drawn at 2x, box-filtered to 1x)."""
    canvas = np.repeat(np.repeat(scene.background, SS, 0), SS, 1)
    for obj in scene.objects:  # draw order = annotation order; later objects are on top
        h, w = obj.mask.shape
        canvas[obj.y:obj.y + h, obj.x:obj.x + w][obj.mask] = COLORS[obj.color]
    return Image.fromarray(canvas).reduce(SS)


def scene_record(scene: Scene) -> tuple[dict, list[dict]]:
    """COCO ``images`` entry and ``annotations`` of one scene (plus our attributes)."""
    image = {
        "id": scene.id, "file_name": scene.file_name, "width": scene.width, "height": scene.height,
        "seed": scene.seed, "index": scene.index,
        "background": {"pattern": scene.pattern, "tone": scene.tone,
                       "description": f"{PATTERNS[scene.pattern]} {scene.tone}"},
    }
    base = scene.id * 100
    anns = []
    for k, obj in enumerate(scene.objects):
        anns.append({
            "id": base + k,
            "image_id": scene.id,
            "category_id": SHAPE_IDS[obj.shape],
            "bbox": obj.bbox,
            "area": obj.visible / SS**2,
            "iscrowd": 0,
            "color": obj.color,
            "size": obj.size,
            "z": k,
            "occluded": round(1.0 - obj.visible / obj.full, 3),
            "occluded_by": [base + j for j in obj.occluded_by],
        })
    return image, anns


def categories(cfg: SceneConfig) -> list[dict]:
    return [{"id": SHAPE_IDS[s], "name": s, "supercategory": "shape"} for s in SHAPES if s in cfg.shapes]
