"""How a ``projector.objects`` model says the held-out scenes of a quickstart run: what its
connector delivers against the annotations (the oracle of ``grounding_probe.py --objects``).

    python benchmarks/grounding_connector.py --run runs/quickstart --model runs/quickstart/stage2/model
    python benchmarks/grounding_connector.py --run runs/quickstart --model nano-objects \
        --projector runs/screen/x/projector      # an align arm, screened without a stage 2

Prints one line: scenes said exactly, object count right, and of all annotated objects the share
said with the right colour and shape, and among all objects the right size / vertical / horizontal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from grounding_probe import annotated_objects
from llavakit.model import load_model
from llavakit.train.align import build_align_config


def said_objects(model, names: list[str], folder: Path) -> dict[str, list[tuple[str, ...]]]:
    """file name → the objects a ``projector.objects`` model says for the image (its word tokens read
    back: each object's words up to its comma)."""
    from llavakit.imaging import load_image

    proj = model.projector
    emb = model.language_model.get_input_embeddings().weight.detach().float()
    # each row of `words` back to its word: the nearest LM embedding (every word here is one token)
    word_of = [model.tokenizer.decode(int(i)).strip() for i in torch.cdist(proj.words.float(), emb).argmin(-1)]
    out = {}
    with torch.no_grad():
        for k in range(0, len(names), 32):
            chunk = names[k:k + 32]
            feats = model.vision_tower(model.preprocess([load_image(str(folder / n)) for n in chunk]))
            _, keys = proj.nearest(feats.to(model.dtype))
            for n, rows in zip(chunk, proj.word_rows(keys)):
                objs, cur = [], []
                for w in (word_of[r] for r in rows):
                    if w == ",":
                        objs.append(tuple(cur))
                        cur = []
                    elif w != "background":
                        cur.append(w)
                out[n] = objs
    return out


def connector_report(run: Path, model_dir: str, projector: str | None = None) -> int:
    """How well a ``projector.objects`` model says the held-out scenes: scenes said exactly, object
    count right, and per field the share right among objects matched by (colour, shape). With
    ``projector`` (an align artifact) the model's projector is replaced: align arms are screened
    without a stage 2."""
    model = load_model(model_dir, projector=projector)
    if not model.config.projector.objects:
        raise SystemExit(f"{model_dir}: not a projector.objects model")
    cfg = build_align_config({}, [])
    truth = annotated_objects(cfg, run / "scenes" / "heldout")
    said = said_objects(model, sorted(truth), run / "scenes" / "heldout" / "images")
    exact = sum(sorted(said[n]) == sorted(truth[n]) for n in truth)
    count = sum(len(said[n]) == len(truth[n]) for n in truth)
    fields = ["size", "colour+shape", "vertical", "horizontal"]
    right, total = dict.fromkeys(fields, 0), 0
    for n in truth:
        pool = list(said[n])
        for t in truth[n]:
            total += 1
            match = next((s for s in pool if len(s) == 5 and s[1:3] == t[1:3]), None)
            if match is None:
                continue
            pool.remove(match)
            right["colour+shape"] += 1
            right["size"] += match[0] == t[0]
            right["vertical"] += match[3] == t[3]
            right["horizontal"] += match[4] == t[4]
    print(f"held-out scenes {len(truth)}: said exactly {100 * exact / len(truth):.1f}%, object count right "
          f"{100 * count / len(truth):.1f}%; of {total} objects: " +
          ", ".join(f"{f} {100 * right[f] / total:.1f}%" for f in fields))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished quickstart run dir (its scenes/heldout)")
    ap.add_argument("--model", required=True, help="a projector.objects checkpoint (e.g. RUN/stage2/model) "
                                                   "or preset (nano-objects, with --projector)")
    ap.add_argument("--projector", help="an align artifact to say the scenes with (e.g. RUN/align/projector)")
    args = ap.parse_args()
    return connector_report(Path(args.run), args.model, args.projector)


if __name__ == "__main__":
    raise SystemExit(main())
