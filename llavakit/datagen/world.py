"""The vocabulary of the synthetic world: colours, shapes, sizes, backgrounds, and its config.

Everything here is a registry keyed by exact names. The palette is eight clearly distinct named
colours; shapes have distinct silhouettes at every size (no rotation, so a square never looks like
a diamond); the three size classes have clear gaps (the smallest large object is ~1.25x the
largest medium one). Backgrounds are muted grey tones with faint patterns, and an object colour is
only used on a background it stays far from (``min_color_distance`` in RGB units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llavakit.errors import ConfigError

# name -> RGB; saturated hues plus white/black, all far from the mid-grey backgrounds
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (249, 115, 22),
    "yellow": (250, 214, 21),
    "green": (22, 163, 74),
    "blue": (37, 99, 235),
    "purple": (147, 51, 234),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}


def _star(points: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    out = []
    for k in range(points * 2):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + k * math.pi / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart(n: int = 48) -> list[tuple[float, float]]:
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x, y))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return [((x - cx) / half, (y - cy) / half) for x, y in pts]


_T = 0.34  # half the arm width of the cross
# name -> polygon in a unit box [-1, 1]^2 (y down); None = an ellipse filling the box.
# COCO category ids are the 1-based positions in this registry, the same for every split.
SHAPES: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,
    "square": [(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)],
    "triangle": [(0.0, -0.95), (1.0, 0.8), (-1.0, 0.8)],
    "star": _star(),
    "diamond": [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)],
    "cross": [(-_T, -1), (_T, -1), (_T, -_T), (1, -_T), (1, _T), (_T, _T), (_T, 1), (-_T, 1),
              (-_T, _T), (-1, _T), (-1, -_T), (-_T, -_T)],
    "heart": _heart(),
}
SHAPE_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(SHAPES)}

# size class -> (min, max) side of the shape's box in pixels for a 224-px image (scaled otherwise)
SIZES: dict[str, tuple[int, int]] = {"small": (26, 32), "medium": (44, 54), "large": (68, 82)}
SIZE_ORDER = ("small", "medium", "large")

# background pattern name -> caption phrase ("a {phrase} {tone} background")
PATTERNS: dict[str, str] = {
    "plain": "plain",
    "gradient": "softly graded",
    "noise": "speckled",
    "stripes": "faintly striped",
    "checker": "faintly checkered",
}


@dataclass
class SceneConfig:
    """How scenes are sampled. ``count_weights[k]`` weighs ``min_objects + k`` objects."""

    image_size: int = 224
    min_objects: int = 1
    max_objects: int = 8
    count_weights: list[float] | None = None  # None = uniform over min..max
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colors: list[str] = field(default_factory=lambda: list(COLORS))
    size_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # small, medium, large
    patterns: list[str] = field(default_factory=lambda: list(PATTERNS))
    max_occlusion: float = 0.15  # at most this fraction of any object may be hidden by later ones
    min_color_distance: float = 100.0  # RGB distance between an object colour and its background
    margin: int = 4  # pixels kept free between objects and the image border

    def __post_init__(self) -> None:
        if not 64 <= self.image_size <= 1024:
            raise ConfigError(f"scenes.image_size: {self.image_size} is outside 64..1024")
        if not 1 <= self.min_objects <= self.max_objects <= 12:
            raise ConfigError(
                f"scenes: need 1 <= min_objects <= max_objects <= 12, got {self.min_objects}..{self.max_objects}"
            )
        n_counts = self.max_objects - self.min_objects + 1
        if self.count_weights is not None:
            if len(self.count_weights) != n_counts:
                raise ConfigError(
                    f"scenes.count_weights: {len(self.count_weights)} weights for {n_counts} object counts "
                    f"({self.min_objects}..{self.max_objects})"
                )
            if min(self.count_weights) < 0 or sum(self.count_weights) <= 0:
                raise ConfigError("scenes.count_weights: weights must be >= 0 with a positive sum")
        for key, allowed in (("shapes", SHAPES), ("colors", COLORS), ("patterns", PATTERNS)):
            values = getattr(self, key)
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ConfigError(f"scenes.{key}: {bad or 'empty list'} not allowed; known: {', '.join(allowed)}")
            if len(set(values)) != len(values):
                raise ConfigError(f"scenes.{key}: duplicate names in {values}")
        if len(self.size_weights) != 3 or min(self.size_weights) < 0 or sum(self.size_weights) <= 0:
            raise ConfigError("scenes.size_weights: three weights >= 0 (small, medium, large) with a positive sum")
        if not 0.0 <= self.max_occlusion < 0.5:
            raise ConfigError(f"scenes.max_occlusion: {self.max_occlusion} is outside 0..0.5")

    @property
    def scale(self) -> float:
        return self.image_size / 224.0

    def size_range(self, size: str) -> tuple[int, int]:
        lo, hi = SIZES[size]
        return max(8, round(lo * self.scale)), max(9, round(hi * self.scale))
