"""`llavakit eval pope MODEL`: the POPE object-hallucination probe on held-out synthetic scenes.

"Is there a {object} in the image?" (+ the short-answer instruction). For every image, up to
``per_image`` objects that are present (positives, label yes) are paired with as many absent ones
(negatives, label no), sampled three ways as in POPE (Li et al., 2023):

- ``random``: uniformly among the objects not in the image;
- ``popular``: the objects in the most images of the whole set, not in this image;
- ``adversarial``: the objects that co-occur most often with this image's objects (summed over
  its objects, counted per image over the whole set), not in this image.

Ties are broken by name, so popular/adversarial are deterministic. Objects are the synthetic
categories (shapes) with ``objects="shape"``, or colour + shape ("red circle") with
``objects="color-shape"``. Positives are the same in all three modes, so each distinct question
is answered once. An image without any absent (or any present) object is skipped and listed.

Per mode: accuracy, precision, recall, F1 (positive = yes), yes-ratio, and the count of answers
with neither yes nor no (wrong, and not a yes).
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

from llavakit.datagen.language import article
from llavakit.datagen.prompts import VQA_SUFFIX
from llavakit.errors import ConfigError
from llavakit.eval.answering import answer_questions, model_label, resolve_model
from llavakit.eval.records import read_jsonl
from llavakit.eval.report import md_table, write_report
from llavakit.eval.scenes_input import (
    DEFAULT_HELDOUT_SEED,
    add_scene_arguments,
    ensure_scenes,
    heldout_warnings,
    limit_images,
    load_scenes,
    read_scene_seed,
)
from llavakit.eval.scoring import binary_metrics, parse_yes_no

MODES = ("random", "popular", "adversarial")
OBJECTS = ("shape", "color-shape")


def object_sets(facts, image_ids, objects: str = "shape") -> dict[int, set[str]]:
    """``{image_id: names of the objects present}``."""
    if objects not in OBJECTS:
        raise ConfigError(f"objects {objects!r} is not one of {', '.join(OBJECTS)}")
    out = {}
    for iid in image_ids:
        f = facts.images[iid]
        if objects == "shape":
            out[iid] = {o.shape for o in f.objects}
        else:
            out[iid] = {f"{o.color} {o.shape}" if o.color else o.shape for o in f.objects}
    return out


def vocabulary(facts, present: dict[int, set[str]], objects: str) -> list[str]:
    """Every object name a question may ask about."""
    if objects == "shape":
        return sorted(set(facts.shapes))
    seen = set().union(*present.values()) if present else set()
    return sorted(seen | {f"{c} {s}" for c in facts.colors for s in facts.shapes})


def popularity(present: dict[int, set[str]]) -> Counter:
    """Number of images each object is in."""
    return Counter(name for names in present.values() for name in names)


def cooccurrence(present: dict[int, set[str]]) -> dict[str, Counter]:
    """``co[a][b]`` = number of images holding both a and b (a ≠ b)."""
    co: dict[str, Counter] = {}
    for names in present.values():
        for a in names:
            co.setdefault(a, Counter()).update(b for b in names if b != a)
    return co


def sample_negatives(mode: str, here: set[str], vocab: list[str], k: int, rng: random.Random,
                     pop: Counter, co: dict[str, Counter]) -> list[str]:
    """``k`` objects absent from the image, chosen by ``mode``."""
    absent = [name for name in vocab if name not in here]
    if mode == "random":
        return rng.sample(absent, min(k, len(absent)))
    if mode == "popular":
        return sorted(absent, key=lambda n: (-pop[n], n))[:k]
    if mode == "adversarial":
        score = {n: sum(co.get(p, Counter())[n] for p in here) for n in absent}
        return sorted(absent, key=lambda n: (-score[n], n))[:k]
    raise ConfigError(f"POPE mode {mode!r} is not one of {', '.join(MODES)}")


def build_probes(facts, image_ids, folder_name: str, per_image: int = 3, objects: str = "shape", seed: int = 0,
                 modes=MODES) -> tuple[dict[str, list[dict]], list[dict]]:
    """``({mode: [probe]}, skipped)``; a probe is ``{question_id, image_id, object, label}``."""
    if per_image < 1:
        raise ConfigError(f"per_image: {per_image} must be >= 1")
    present = object_sets(facts, image_ids, objects)
    vocab = vocabulary(facts, present, objects)
    pop, co = popularity(present), cooccurrence(present)
    probes: dict[str, list[dict]] = {m: [] for m in modes}
    skipped = []
    for iid in image_ids:
        here = present[iid]
        k = min(per_image, len(here), len(vocab) - len(here))
        if k == 0:
            skipped.append({"image_id": iid, "reason": "no object present" if not here else "every object present"})
            continue
        rng = random.Random(f"pope/{seed}/{iid}")
        positives = rng.sample(sorted(here), k)
        for mode in modes:
            negatives = sample_negatives(mode, here, vocab, k, random.Random(f"pope/{seed}/{iid}/{mode}"), pop, co)
            for name, label in [(p, True) for p in positives] + [(n, False) for n in negatives]:
                probes[mode].append({"question_id": f"{iid}:{name}", "image_id": iid, "object": name, "label": label,
                                     "image": f"{folder_name}/{facts.images[iid].file_name}"})
    return probes, skipped


def question_text(name: str) -> str:
    return f"Is there {article(name)} in the image?\n{VQA_SUFFIX}"


def evaluate(model, scenes_dir: str | Path, out_dir: str | Path, per_image: int = 3, objects: str = "shape",
             modes=MODES, max_images: int | None = None, seed: int = 0, n_scenes: int | None = None,
             scene_seed: int = DEFAULT_HELDOUT_SEED, batch_size: int = 8, max_new_tokens: int = 8,
             progress: bool = True) -> dict:
    """Build probes, answer each distinct question once (resumable), score per mode."""
    out_dir = Path(out_dir)
    scenes_dir = ensure_scenes(scenes_dir, n_scenes, scene_seed, progress)
    facts, folder = load_scenes(scenes_dir)
    image_ids = limit_images(facts, max_images)
    probes, skipped = build_probes(facts, image_ids, folder.name, per_image, objects, seed, modes)
    questions = {}
    for mode_probes in probes.values():
        for p in mode_probes:
            questions.setdefault(p["question_id"], {"question_id": p["question_id"], "image": p["image"],
                                                    "text": question_text(p["object"])})
    if not questions:
        raise ConfigError(f"no POPE question could be built from {scenes_dir} ({len(skipped)} image(s) skipped)")
    path = answer_questions(resolve_model(model), list(questions.values()), folder.parent, out_dir / "answers.jsonl",
                            batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress,
                            label=model_label(model))
    answers = {r["question_id"]: str(r["text"]) for r in read_jsonl(path, "answers file")}
    result = {"model": model_label(model), "scenes": str(scenes_dir), "scene_seed": read_scene_seed(scenes_dir),
              "images": len(image_ids), "objects": objects, "per_image": per_image, "seed": seed,
              "warnings": heldout_warnings(scenes_dir, model, folder),
              "skipped_images": skipped, "modes": {}}
    for mode, mode_probes in probes.items():
        preds = [parse_yes_no(answers[p["question_id"]]) for p in mode_probes]
        metrics = binary_metrics(preds, [p["label"] for p in mode_probes])
        metrics["unparsed_ids"] = [p["question_id"] for p, v in zip(mode_probes, preds) if v is None]
        result["modes"][mode] = metrics
    write_report(out_dir, "pope", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    rows = [[mode, m["n"], m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"], m["unparsed"]]
            for mode, m in result["modes"].items()]
    skipped = result["skipped_images"]
    return "\n".join([
        f"# POPE — {result['model']}", "",
        f"{result['images']} held-out scenes from {result['scenes']} (scene seed {result['scene_seed']}); objects: "
        f"{result['objects']}; up to {result['per_image']} positives + as many negatives per image"
        + (f"; {len(skipped)} image(s) skipped (no absent or no present object)" if skipped else "") + ".", "",
        md_table(["mode", "questions", "accuracy", "precision", "recall", "F1", "yes-ratio (%)", "neither yes nor no"],
                 rows, digits=1), "",
        *[f"**Warning:** {w}\n" for w in result.get("warnings", [])],
        "Positive = \"yes\". Precision = how often a \"yes\" is right; recall = how many present objects are "
        "confirmed; a yes-ratio far above 50% means the model tends to say yes (hallucinates). Answers with "
        "neither yes nor no count as wrong.",
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scene_arguments(parser)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="negative sampling modes")
    parser.add_argument("--per-image", type=int, default=3, help="positives (and negatives) per image (default 3)")
    parser.add_argument("--objects", default="shape", choices=OBJECTS,
                        help="ask about shapes (the categories) or colour + shape (default shape)")
    parser.add_argument("--max-images", type=int, help="use only the first N images")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    result = evaluate(args.model, args.scenes, args.out, args.per_image, args.objects, tuple(args.modes),
                      args.max_images, args.seed, args.n, args.scene_seed, args.batch_size, args.max_new_tokens,
                      not args.quiet)
    print(markdown(result))
    print(f"\nwrote {Path(args.out) / 'pope.json'} and {Path(args.out) / 'pope.md'}")
    return 0
