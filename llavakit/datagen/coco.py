"""Read COCO captions + instances (real COCO 2014/2017 or our scenes) into per-image records, and
write each image's symbolic context the way the LLaVA paper does: its captions, one per line, then
one line per box ``category: [x1, y1, x2, y2]`` with coordinates normalised to 0–1, 3 decimals.

When annotations carry our attributes (``size``, ``color``), the box name includes them
(``large red circle: [...]``); real COCO boxes are just the category name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llavakit.datagen.facts import FactSet, facts_from_coco, read_bbox
from llavakit.datagen.jsonio import load_json
from llavakit.errors import DataError


@dataclass
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int
    captions: list[str]
    annotations: list[dict] = field(default_factory=list)


@dataclass
class CocoSet:
    images: list[CocoImage]
    categories: dict[int, str]
    skipped: list[tuple[int, str]]  # (image id, reason) of images left out
    instances: dict | None = None  # the parsed instances file, for facts

    def facts(self) -> FactSet:
        if self.instances is None:
            raise DataError("facts need an instances file (--instances)")
        return facts_from_coco(self.instances)


def box_name(ann: dict, categories: dict[int, str]) -> str:
    words = [ann[k] for k in ("size", "color") if isinstance(ann.get(k), str)]
    return " ".join(words + [categories[ann["category_id"]]])


def box_lines(image: CocoImage, categories: dict[int, str]) -> list[str]:
    lines = []
    for ann in image.annotations:
        x, y, w, h = read_bbox(ann, image.id)
        x1, y1 = x / image.width, y / image.height
        x2, y2 = (x + w) / image.width, (y + h) / image.height
        lines.append(f"{box_name(ann, categories)}: [{x1:.3f}, {y1:.3f}, {x2:.3f}, {y2:.3f}]")
    return lines


def symbolic_context(image: CocoImage, categories: dict[int, str]) -> str:
    """Captions, then boxes — the text a text-only teacher sees instead of the image."""
    return "\n".join([c.strip() for c in image.captions] + box_lines(image, categories))


def _captions_by_image(data: dict, where: str) -> dict[int, list[str]]:
    if not isinstance(data.get("annotations"), list):
        raise DataError(f"{where}: missing or non-list 'annotations'")
    out: dict[int, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise DataError(f"{where}: annotations[{i}] needs an image_id and a string caption")
        if ann["caption"].strip():
            out.setdefault(ann["image_id"], []).append(ann["caption"])
    return out


def _image_entry(img, i: int, where: str) -> tuple[int, str, int, int]:
    try:
        return int(img["id"]), str(img["file_name"]), int(img["width"]), int(img["height"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: images[{i}] needs id, file_name, width and height") from None


def _no_duplicate_ids(ids: list[int], where: str) -> None:
    """Image ids key every job and output record: a repeated id would give duplicate records."""
    first: dict[int, int] = {}
    for i, iid in enumerate(ids):
        if iid in first:
            raise DataError(f"{where}: images[{i}] repeats image id {iid} (first at images[{first[iid]}])")
        first[iid] = i


def read_coco(captions_path: str | Path, instances_path: str | Path | None = None) -> CocoSet:
    """Images with their captions (and boxes when ``instances_path`` is given), in file order.

    Images without any caption, or (with instances) missing from the instances file, are skipped
    and listed in ``skipped`` with the reason. Segmentations are dropped to save memory.
    """
    cap_data = load_json(captions_path, "captions")
    captions = _captions_by_image(cap_data, str(captions_path))
    skipped: list[tuple[int, str]] = []
    if instances_path is None:
        if not isinstance(cap_data.get("images"), list):
            raise DataError(f"{captions_path}: missing or non-list 'images'")
        entries = [_image_entry(img, i, str(captions_path)) for i, img in enumerate(cap_data["images"])]
        _no_duplicate_ids([e[0] for e in entries], str(captions_path))
        images = []
        for iid, name, w, h in entries:
            if iid in captions:
                images.append(CocoImage(iid, name, w, h, captions[iid]))
            else:
                skipped.append((iid, "no captions"))
        listed = {e[0] for e in entries}
        skipped += [(iid, "captions for an image not in 'images'") for iid in captions if iid not in listed]
        return CocoSet(images, {}, skipped)
    inst = load_json(instances_path, "instances")
    for key in ("images", "annotations", "categories"):
        if not isinstance(inst.get(key), list):
            raise DataError(f"{instances_path}: missing or non-list '{key}'")
    for ann in inst["annotations"]:
        if isinstance(ann, dict):
            ann.pop("segmentation", None)
    facts = facts_from_coco(inst, where=str(instances_path))  # validates annotations + categories
    by_image: dict[int, list[dict]] = {}
    for ann in inst["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    _no_duplicate_ids([_image_entry(img, i, str(instances_path))[0] for i, img in enumerate(inst["images"])],
                      str(instances_path))
    images = []
    seen = set()
    for i, img in enumerate(inst["images"]):
        iid, name, w, h = _image_entry(img, i, str(instances_path))
        seen.add(iid)
        if iid not in captions:
            skipped.append((iid, "no captions"))
            continue
        images.append(CocoImage(iid, name, w, h, captions[iid], by_image.get(iid, [])))
    skipped += [(iid, "not in the instances file") for iid in captions if iid not in seen]
    return CocoSet(images, facts.categories, skipped, inst)
