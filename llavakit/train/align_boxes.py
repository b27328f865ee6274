"""Boxes → the tower's grid for ``llavakit align``: where each cell's centre falls in the image
(per image mode), which object's words each cell names, and COCO instances read with errors that
name the entry."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from llavakit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from llavakit.train.align import AlignConfig


def cell_centres(width: int, height: int, grid: int, mode: str, size: int) -> list[tuple[float, float]]:
    """Image coordinates (pixels) of the centre of every grid cell of the tower's input, row-major."""
    out = []
    for r in range(grid):
        for c in range(grid):
            u, v = (c + 0.5) / grid, (r + 0.5) / grid
            if mode == "pad":
                side = max(width, height)
                out.append((u * side - (side - width) // 2, v * side - (side - height) // 2))
            elif mode == "resize":
                out.append((u * width, v * height))
            elif mode == "square":
                scale = size / min(width, height)
                nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
                out.append(((u * size + (nw - size) // 2) / scale, (v * size + (nh - size) // 2) / scale))
            else:
                raise ConfigError(f"align: image mode {mode!r} is not one of pad, resize, square")
    return out


def inside(point: tuple[float, float], bbox) -> bool:
    x, y, w, h = bbox
    return x <= point[0] < x + w and y <= point[1] < y + h


def cell_words(image: dict, anns: list[dict], names: dict[int, str], cfg: AlignConfig, grid: int, mode: str,
               size: int) -> list[tuple[str, ...]]:
    """The words each cell names: the front object's fields (``cfg.words``) or ``(background,)``. An
    object whose box holds no cell centre names the background cell nearest its box centre, so a
    small object is not lost between the grid's centres."""
    centres = cell_centres(int(image["width"]), int(image["height"]), grid, mode, size)
    objects = []
    for a in anns:
        words = tuple(str(names[a["category_id"]] if f == "category" else a[f]) for f in cfg.words if
                      (f == "category" or a.get(f) not in (None, "")))
        objects.append((float(a["bbox"][2]) * float(a["bbox"][3]), a["bbox"], words))
    objects.sort(key=lambda o: o[0])  # the smallest box covering a point is the one in front
    cells: list[tuple[str, ...]] = [(cfg.background,)] * len(centres)
    for i, p in enumerate(centres):
        hit = next((words for _, bbox, words in objects if inside(p, bbox)), None)
        if hit:
            cells[i] = hit
    for _, (x, y, w, h), words in objects:  # smaller than a cell: the cell nearest its centre names it
        if not any(inside(p, (x, y, w, h)) for p in centres):
            cx, cy = x + w / 2, y + h / 2
            i = min(range(len(centres)), key=lambda j: (centres[j][0] - cx) ** 2 + (centres[j][1] - cy) ** 2)
            if cells[i] == (cfg.background,):
                cells[i] = words
    return cells


def read_instances(cfg: AlignConfig) -> tuple[list[dict], dict[int, list[dict]], dict[int, str]]:
    """Images, annotations by image id and category names; malformed entries name themselves."""
    from llavakit.datagen.jsonio import load_json

    data = load_json(cfg.instances, "instances")
    try:
        names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images = list(data["images"])
        for im in images:
            name, w, h = im.get("file_name"), im.get("width"), im.get("height")
            if not isinstance(name, str) or not name or not all(isinstance(v, (int, float)) and v > 0 for v in (w, h)):
                raise DataError(f"{cfg.instances}: image {im.get('id')}: needs a file_name and a width and height > 0 "
                                f"(got {name!r}, {w!r}, {h!r})")
        by_image: dict[int, list[dict]] = {int(im["id"]): [] for im in images}
        for a in data["annotations"]:
            box = [float(v) for v in a["bbox"]]
            if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
                raise DataError(f"{cfg.instances}: annotation {a.get('id')}: bbox {a['bbox']} is not [x, y, w, h] >= 0")
            if a["category_id"] not in names:
                raise DataError(f"{cfg.instances}: annotation {a.get('id')}: unknown category_id {a['category_id']}")
            by_image.setdefault(int(a["image_id"]), []).append({**a, "bbox": box})
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{cfg.instances}: not COCO instances ({type(exc).__name__}: {exc})") from None
    fields = {k for anns in by_image.values() for a in anns for k in a}
    missing = [f for f in cfg.words if f != "category" and f not in fields]
    if missing:
        raise ConfigError(f"align: words {missing} are fields of no annotation in {cfg.instances} "
                          f"(fields: {', '.join(sorted(fields))}; 'category' is the category name)")
    return images, by_image, names
