"""`llavakit scenes`: render a synthetic annotated world in COCO format.

Writes ``OUT/images/s{seed}_{index:06d}.png``, ``OUT/instances.json`` (COCO instances plus our
attributes: colour, size class, draw order, occlusion), ``OUT/captions.json`` (COCO captions, five
per image) and ``OUT/scenes.json`` (the seed and config). Resumable: a rerun with the same seed
and config keeps the images already written (each is written atomically) and renders the rest;
``--n`` may grow. A held-out split is the same command with another ``--seed`` (see
:mod:`llavakit.datagen.scenes` for why seeds give disjoint splits).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from llavakit.progress import bar as progress_bar

from llavakit.config import from_dict, load_yaml, merge, parse_override, to_dict
from llavakit.datagen.captions import scene_captions
from llavakit.datagen.facts import image_facts
from llavakit.datagen.jsonio import write_json
from llavakit.datagen.scenes import MAX_INDEX, categories, render, sample_scene, scene_record
from llavakit.datagen.world import SceneConfig
from llavakit.errors import ConfigError, DataError
from llavakit.io import atomic_path

GENERATOR = "llavakit-scenes/1"


def _render_one(args: tuple[SceneConfig, int, int, str, bool]) -> tuple[dict, list[dict]]:
    cfg, seed, index, image_dir, reuse = args
    scene = sample_scene(cfg, seed, index)
    path = Path(image_dir) / scene.file_name
    if not (reuse and path.is_file() and path.stat().st_size > 0):
        with atomic_path(path) as tmp:
            render(scene).save(tmp, format="PNG", compress_level=1)
    return scene_record(scene)


def _check_manifest(out: Path, manifest: dict, overwrite: bool) -> bool:
    """True when existing images can be reused; raises if OUT holds a different world."""
    path = out / "scenes.json"
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        old = None
    if old == manifest:
        return True
    if not overwrite:
        raise ConfigError(f"{out} holds scenes made with another seed or config ({path}); "
                          "use another --out or pass --overwrite")
    return False


def generate_scenes(out: str | Path, n: int, seed: int = 0, cfg: SceneConfig | None = None,
                    overwrite: bool = False, workers: int = 1, progress: bool = True) -> dict:
    """Render ``n`` scenes into ``out`` (resumable); returns a summary dict."""
    cfg = cfg or SceneConfig()
    if not 1 <= n <= MAX_INDEX:
        raise ConfigError(f"--n {n}: must be between 1 and {MAX_INDEX}")
    if not 0 <= seed < 1_000_000:
        raise ConfigError(f"--seed {seed}: must be between 0 and 999999")
    out = Path(out)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"generator": GENERATOR, "seed": seed, "config": to_dict(cfg)}
    reuse = _check_manifest(out, manifest, overwrite)
    write_json(out / "scenes.json", manifest)
    t0 = time.perf_counter()
    jobs = [(cfg, seed, i, str(image_dir), reuse) for i in range(n)]
    records: list[tuple[dict, list[dict]]] = []
    bar = progress_bar(total=n, desc="scenes", unit="img", show=progress)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for rec in pool.map(_render_one, jobs, chunksize=32):
                records.append(rec)
                bar.update()
    else:
        for job in jobs:
            records.append(_render_one(job))
            bar.update()
    bar.close()
    cats = categories(cfg)
    names = {c["id"]: c["name"] for c in cats}
    images, annotations, captions = [], [], []
    for image, anns in records:
        images.append(image)
        annotations.extend(anns)
        facts = image_facts(image, anns, names)
        rng = random.Random(f"{seed}/{image['index']}/captions")
        for k, text in enumerate(scene_captions(facts, rng)):
            captions.append({"id": image["id"] * 10 + k, "image_id": image["id"], "caption": text})
    info = {"description": "llavakit synthetic scenes", "generator": GENERATOR, "seed": seed,
            "image_folder": "images", "config": to_dict(cfg)}
    write_json(out / "instances.json", {"info": info, "licenses": [], "images": images,
                                        "annotations": annotations, "categories": cats})
    write_json(out / "captions.json", {"info": info, "licenses": [], "images": images, "annotations": captions})
    counts = Counter(len(anns) for _, anns in records)
    return {
        "out": str(out), "images": len(images), "objects": len(annotations), "captions": len(captions),
        "objects_per_image": dict(sorted(counts.items())),
        "occluded_objects": sum(1 for a in annotations if a["occluded"] > 0),
        "sizes": dict(Counter(a["size"] for a in annotations)),
        "reused_images": reuse, "seconds": round(time.perf_counter() - t0, 2),
    }


def add_arguments(parser) -> None:
    parser.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="split seed; a held-out split uses another seed")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default 224)")
    parser.add_argument("--min-objects", type=int, help="fewest objects per image (default 1)")
    parser.add_argument("--max-objects", type=int, help="most objects per image (default 8)")
    parser.add_argument("--count-weights", help="comma-separated weights for min..max objects, e.g. 1,1,2,2,2,2,1,1")
    parser.add_argument("--max-occlusion", type=float, help="largest hidden fraction of any object (default 0.15)")
    parser.add_argument("--config", help="YAML with SceneConfig fields (flags override it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a SceneConfig field, e.g. --set shapes=[circle,square]")
    parser.add_argument("--workers", type=int, default=1, help="render processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace scenes made with another seed/config")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args) -> SceneConfig:
    data = load_yaml(args.config) if args.config else {}
    for text in args.set:
        data = merge(data, parse_override(text))
    flags = {"image_size": args.image_size, "min_objects": args.min_objects, "max_objects": args.max_objects,
             "max_occlusion": args.max_occlusion}
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.count_weights:
        try:
            data["count_weights"] = [float(w) for w in args.count_weights.split(",")]
        except ValueError:
            raise ConfigError(f"--count-weights {args.count_weights!r}: expected comma-separated numbers") from None
    return from_dict(SceneConfig, data, "scenes")


def run(args) -> int:
    cfg = config_from_args(args)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1")
    try:
        summary = generate_scenes(args.out, args.n, args.seed, cfg, args.overwrite, args.workers, not args.quiet)
    except OSError as exc:
        raise DataError(f"--out {args.out}: cannot write ({exc})") from None
    print(json.dumps(summary, indent=2))
    return 0
