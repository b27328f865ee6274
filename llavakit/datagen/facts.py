"""Facts about an image, derived once from its COCO annotations — shared by teachers and evaluation.

Every fact a question can be asked about is computed here, with margins so that no answer is
borderline: a fact that is not clear-cut is ``None`` (position) or absent (relation), and callers
simply do not ask about it.

API::

    from llavakit.datagen.facts import load_facts, image_facts
    fs = load_facts("scenes/instances.json")      # FactSet: .images {image_id: ImageFacts},
                                                  #   .shapes, .colors (the vocabulary), .categories
    f = fs.images[image_id]
    f.objects                   # list[Obj] in annotation (= draw) order
    o.shape, o.color, o.size    # category name; colour / size class (None if unknown)
    o.hpos, o.vpos, o.region    # "left"|"center"|"right", "top"|"middle"|"bottom", "top left"|... or None
    f.count(shape=, color=, size=)   f.exists(...)        # any subset of attributes
    f.shape_counts, f.color_counts, f.pair_counts         # {"circle": 2}, {"red": 1}, {("red", "circle"): 1}
    f.refer(o)                  # shortest unique description ("circle", "red circle", "large red circle")
    f.refer(o, exclude="color") # ... without naming that attribute (to ask "what colour is the ...")
    f.relations                 # [Relation(a, "left of", b), ...] unambiguous pairs only
    f.relation(a, b, axis)      # "left of"/"right of" (axis "x") or "above"/"below" ("y"), or None
    f.extreme("left")           # the object clearly furthest left (or None when it is not clear)
    f.compare_size(a, b)        # "larger" | "smaller" | None (same size class or unknown)
    f.absent_pairs(fs.colors, fs.shapes)  # (colour, shape) pairs not in the image

Geometry (``Geometry`` dataclass, fractions of the image side): ``hpos`` uses box centres against
the thirds of the width, undefined within ``margin`` of 1/3 and 2/3 (likewise ``vpos``). A
relation "A left of B" needs A's box to end at least ``gap`` before B's box starts (x-projections
do not overlap), so it holds for every point of both objects. ``extreme`` needs the winner's centre
to lead the runner-up by ``gap``. Sizes are the ``size`` attribute when annotations have one
(our scenes), else COCO's area rule (small < 32², medium < 96², large otherwise).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from llavakit.datagen.jsonio import load_json
from llavakit.errors import DataError

HPOS = ("left", "center", "right")
VPOS = ("top", "middle", "bottom")
RELATIONS = ("left of", "right of", "above", "below")
SIZES = ("small", "medium", "large")
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen twenty").split()


def number_word(n: int) -> str:
    """0..20 as words ("three"), larger numbers as digits."""
    return _WORDS[n] if 0 <= n < len(_WORDS) else str(n)


def plural(noun: str, n: int = 2) -> str:
    if n == 1:
        return noun
    return noun + "es" if noun.endswith(("s", "x", "sh", "ch")) else noun + "s"


def region_name(hpos: str | None, vpos: str | None) -> str | None:
    """("left", "top") → "top left"; ("center", "middle") → "center"; None if either is unclear."""
    if hpos is None or vpos is None:
        return None
    if vpos == "middle":
        return hpos
    return vpos if hpos == "center" else f"{vpos} {hpos}"


@dataclass(frozen=True)
class Geometry:
    margin: float = 0.04  # ambiguity band around 1/3 and 2/3, as a fraction of the side
    gap: float = 0.02  # separation needed for a relation / an extreme, as a fraction of the side


@dataclass(frozen=True)
class Obj:
    id: int  # annotation id
    shape: str
    color: str | None
    size: str | None
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    hpos: str | None
    vpos: str | None
    occluded: float = 0.0
    occluded_by: tuple[int, ...] = ()

    @property
    def cx(self) -> float:
        return self.bbox[0] + self.bbox[2] / 2

    @property
    def cy(self) -> float:
        return self.bbox[1] + self.bbox[3] / 2

    @property
    def region(self) -> str | None:
        return region_name(self.hpos, self.vpos)

    def describe(self, size: bool = False) -> str:
        """"red circle" (with ``size``: "large red circle"); attributes that are unknown are left out."""
        words = ([self.size] if size and self.size else []) + ([self.color] if self.color else []) + [self.shape]
        return " ".join(words)


@dataclass(frozen=True)
class Relation:
    subject: Obj
    relation: str  # one of RELATIONS
    object: Obj


def _pos(center: float, side: float, names: tuple[str, str, str], margin: float) -> str | None:
    t = center / side
    if t < 1 / 3 - margin:
        return names[0]
    if t > 2 / 3 + margin:
        return names[2]
    if 1 / 3 + margin < t < 2 / 3 - margin:
        return names[1]
    return None


@dataclass
class ImageFacts:
    image_id: int
    file_name: str
    width: int
    height: int
    objects: list[Obj]
    geometry: Geometry = field(default_factory=Geometry)
    background: str | None = None  # our scenes: e.g. "speckled gray"

    def __post_init__(self) -> None:
        self.shape_counts = Counter(o.shape for o in self.objects)
        self.color_counts = Counter(o.color for o in self.objects if o.color)
        self.pair_counts = Counter((o.color, o.shape) for o in self.objects if o.color)
        self.relations = [r for a, b in combinations(self.objects, 2) for r in self._pair_relations(a, b)]

    # -- counting and existence ---------------------------------------------------------------
    def select(self, shape: str | None = None, color: str | None = None, size: str | None = None) -> list[Obj]:
        return [o for o in self.objects if (shape is None or o.shape == shape)
                and (color is None or o.color == color) and (size is None or o.size == size)]

    def count(self, shape: str | None = None, color: str | None = None, size: str | None = None) -> int:
        return len(self.select(shape, color, size))

    def exists(self, shape: str | None = None, color: str | None = None, size: str | None = None) -> bool:
        return self.count(shape, color, size) > 0

    def absent_pairs(self, colors, shapes) -> list[tuple[str, str]]:
        return [(c, s) for c in colors for s in shapes if (c, s) not in self.pair_counts]

    # -- reference --------------------------------------------------------------------------------
    def refer(self, obj: Obj, exclude: str | None = None) -> str | None:
        """The shortest description that fits ``obj`` alone, e.g. "circle" or "large red circle".

        ``exclude`` ("shape", "color" or "size") keeps that attribute out, so a question can ask for
        it ("What colour is the large circle?"); without the shape, the noun is "object". Returns
        None when no description is unique.
        """
        options = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"),
                   ("color",), ("size", "color"), ("size",)]
        for attrs in options:
            if exclude in attrs or any(getattr(obj, a) is None for a in attrs):
                continue
            matches = [o for o in self.objects if all(getattr(o, a) == getattr(obj, a) for a in attrs)]
            if len(matches) == 1:
                words = [getattr(obj, a) for a in ("size", "color", "shape") if a in attrs]
                return " ".join(words) if "shape" in attrs else " ".join(words) + " object"
        return None

    def referable(self, exclude: str | None = None) -> list[tuple[Obj, str]]:
        out = []
        for o in self.objects:
            ref = self.refer(o, exclude)
            if ref is not None:
                out.append((o, ref))
        return out

    # -- geometry ---------------------------------------------------------------------------------
    def relation(self, a: Obj, b: Obj, axis: str) -> str | None:
        """"left of"/"right of" (axis "x") or "above"/"below" (axis "y") when unambiguous, else None."""
        if axis == "x":
            gap = self.geometry.gap * self.width
            a0, a1, b0, b1 = a.bbox[0], a.bbox[0] + a.bbox[2], b.bbox[0], b.bbox[0] + b.bbox[2]
            names = ("left of", "right of")
        elif axis == "y":
            gap = self.geometry.gap * self.height
            a0, a1, b0, b1 = a.bbox[1], a.bbox[1] + a.bbox[3], b.bbox[1], b.bbox[1] + b.bbox[3]
            names = ("above", "below")
        else:
            raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
        if a1 + gap <= b0:
            return names[0]
        if b1 + gap <= a0:
            return names[1]
        return None

    def _pair_relations(self, a: Obj, b: Obj) -> list[Relation]:
        out = []
        for axis in ("x", "y"):
            rel = self.relation(a, b, axis)
            if rel:
                out += [Relation(a, rel, b), Relation(b, _INVERSE[rel], a)]
        return out

    def extreme(self, side: str) -> Obj | None:
        """The object clearly furthest to ``side`` ("left", "right", "top", "bottom"), or None."""
        key = {"left": lambda o: o.cx, "right": lambda o: -o.cx, "top": lambda o: o.cy, "bottom": lambda o: -o.cy}
        if side not in key or not self.objects:
            raise ValueError(f"side must be left/right/top/bottom, got {side!r}")
        ranked = sorted(self.objects, key=key[side])
        if len(ranked) == 1:
            return ranked[0]
        side_px = self.width if side in ("left", "right") else self.height
        return ranked[0] if key[side](ranked[1]) - key[side](ranked[0]) >= self.geometry.gap * side_px else None

    def compare_size(self, a: Obj, b: Obj) -> str | None:
        if a.size is None or b.size is None or a.size == b.size:
            return None
        return "larger" if SIZES.index(a.size) > SIZES.index(b.size) else "smaller"


def _size_of(ann: dict) -> str | None:
    size = ann.get("size")
    if size is not None:
        return size if size in SIZES else None
    area = ann.get("area")
    if not isinstance(area, (int, float)):
        return None
    return "small" if area < 32**2 else "medium" if area < 96**2 else "large"


def read_bbox(ann: dict, image_id) -> tuple[float, float, float, float]:
    """An annotation's COCO ``[x, y, w, h]``: four finite numbers with w, h >= 0, or a DataError naming
    the image and the annotation (the template and openai teachers read boxes through this)."""
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (TypeError, ValueError, KeyError):
        raise DataError(f"image {image_id}: annotation {ann.get('id')}: bbox {ann.get('bbox')!r} is not "
                        "[x, y, w, h]") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise DataError(f"image {image_id}: annotation {ann.get('id')}: bbox {ann['bbox']} must be finite "
                        "numbers with w, h >= 0")
    return x, y, w, h


def image_facts(image: dict, annotations: list[dict], categories: dict[int, str],
                geometry: Geometry | None = None) -> ImageFacts:
    """Facts of one COCO image from its annotations and ``{category_id: name}``."""
    geometry = geometry or Geometry()
    try:
        w, h = float(image["width"]), float(image["height"])
        objects = []
        for ann in annotations:
            x, y, bw, bh = read_bbox(ann, image.get("id", "?"))
            cat = categories[ann["category_id"]]
            objects.append(Obj(
                id=ann["id"], shape=cat, color=ann.get("color"), size=_size_of(ann), bbox=(x, y, bw, bh),
                hpos=_pos(x + bw / 2, w, HPOS, geometry.margin), vpos=_pos(y + bh / 2, h, VPOS, geometry.margin),
                occluded=float(ann.get("occluded", 0.0)), occluded_by=tuple(ann.get("occluded_by", ())),
            ))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"image {image.get('id', '?')}: malformed annotation ({type(exc).__name__}: {exc})") from None
    bg = image.get("background")
    return ImageFacts(int(image["id"]), str(image.get("file_name", "")), int(w), int(h), objects, geometry,
                      bg.get("description") if isinstance(bg, dict) else None)


@dataclass
class FactSet:
    images: dict[int, ImageFacts]
    categories: dict[int, str]
    shapes: list[str]  # category names, in id order
    colors: list[str]  # colour attributes seen in the file (empty for real COCO)


def facts_from_coco(instances: dict, geometry: Geometry | None = None, where: str = "instances") -> FactSet:
    """A FactSet from a parsed COCO ``instances`` dict (ours or real COCO)."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(instances.get(key), list):
            raise DataError(f"{where}: missing or non-list '{key}'")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in instances["categories"]}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: every category needs an integer 'id' and a 'name'") from None
    by_image: dict[int, list[dict]] = {}
    for i, ann in enumerate(instances["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise DataError(f"{where}: annotations[{i}] has no image_id")
        if ann.get("category_id") not in categories:
            raise DataError(f"{where}: annotations[{i}] (id {ann.get('id')}) has unknown category_id "
                            f"{ann.get('category_id')!r}")
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = {}
    for i, img in enumerate(instances["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise DataError(f"{where}: images[{i}] has no id")
        images[int(img["id"])] = image_facts(img, by_image.get(img["id"], []), categories, geometry)
    colors = sorted({a["color"] for a in instances["annotations"] if isinstance(a.get("color"), str)})
    return FactSet(images, categories, [categories[k] for k in sorted(categories)], colors)


def load_facts(instances_path: str | Path, geometry: Geometry | None = None) -> FactSet:
    """Facts for every image of a COCO ``instances.json``."""
    return facts_from_coco(load_json(instances_path, "instances"), geometry, where=str(instances_path))
