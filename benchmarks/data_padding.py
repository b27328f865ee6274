"""Padding of an epoch with and without the length-grouped sampler, on a LLaVA-1.5-like mixed file.

The real LLaVA-1.5 665K mix cannot be downloaded here, so this writes a seeded file with its
composition (per-source record counts of the paper's Table 7, scaled down; rounds per record and
question/answer lengths like each source's) in the unchanged LLaVA schema, tokenizes it with a
model's real tokenizer (``--model nano``: SmolLM2 + 49 image tokens) and prints the padding
fraction of one epoch for shuffled batches vs. ``LengthGroupedSampler``, per device, for one and
for eight data-parallel ranks. It also prints how long building the dataset took.

    python benchmarks/data_padding.py --records 20000 --out /tmp/mix.json
    llavakit data inspect /tmp/mix.json --model nano --batch-size 16   # the same numbers, one rank
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

WORDS = (
    "the a of and to in is on with for that this it are as at by from an be or which there image man woman "
    "people person two three table dog cat car bus street sign building red blue green white black yellow "
    "large small wooden standing sitting holding wearing looking near next behind front left right top side "
    "water grass tree sky window door plate food pizza sandwich bowl cup phone laptop book shirt hat train "
    "road field background room kitchen bathroom bed chair couch picture scene appears likely because could "
    "would also may some several many other group area while its their they he she his her one player ball "
    "game tennis baseball surf board snow ski horse sheep cow elephant giraffe zebra bird boat plane clock "
    "answer question detail describe what where why how who color number count visible shows suggests time "
    "however therefore additionally overall important help way use used using make made provide information "
    "python function code data value list error example return string file system user model result case"
).split()
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."


def words(rng, mean: float, sigma: float = 0.5, lo: int = 1) -> str:
    n = max(lo, int(rng.lognormal(np.log(mean), sigma)))
    return " ".join(rng.choice(WORDS, n))


def box(rng) -> str:
    a = np.sort(rng.random(4).round(2))
    return f"[{a[0]:.2f}, {a[1]:.2f}, {a[2]:.2f}, {a[3]:.2f}]"


def record(rid: str, image: str | None, rounds: list[tuple[str, str]]) -> dict:
    turns = []
    for k, (q, a) in enumerate(rounds):
        turns += [{"from": "human", "value": ("<image>\n" + q) if k == 0 and image else q}, {"from": "gpt", "value": a}]
    out = {"id": rid, "conversations": turns}
    if image:
        out["image"] = image
    return out


def rounds_of(rng, mean: float, cap: int) -> int:
    return int(min(cap, max(1, rng.poisson(mean - 1) + 1)))


# source → (records in the 665K mix, maker)
def sources(rng):
    def conv():
        return [(words(rng, 10) + "?", words(rng, 45)) for _ in range(rounds_of(rng, 3, 8))]

    def detail():
        return [("Describe the following image in detail.", words(rng, 110, 0.3))]

    def reasoning():
        return [(words(rng, 18) + "?", words(rng, 110, 0.35))]

    def sharegpt():
        return [(words(rng, 40, 1.0), words(rng, 170, 0.8)) for _ in range(rounds_of(rng, 2.5, 12))]

    def vqa(mean_rounds, cap):
        n = rounds_of(rng, mean_rounds, cap)
        return [(words(rng, 6) + "?" + (VQA_SUFFIX if k == 0 else ""), words(rng, 1.3, 0.4)) for k in range(n)]

    def mc():
        opts = "\n".join(f"{c}. {words(rng, 2)}" for c in "ABCD")
        return [(f"{words(rng, 9)}?\n{opts}\nAnswer with the option's letter from the given choices directly.", "A")]

    def region(mean_rounds):
        n = rounds_of(rng, mean_rounds, 20)
        return [(f"Please provide a short description for this region: {box(rng)}.", words(rng, 4)) for _ in range(n)]

    def caption():
        return [("Provide a one-sentence caption for the provided image.\nReference OCR token: " + words(rng, 5),
                 words(rng, 12, 0.3))]

    return {
        "llava_conv": (58_000, conv), "llava_detail": (23_000, detail), "llava_reasoning": (77_000, reasoning),
        "sharegpt": (40_000, sharegpt), "vqav2": (83_000, lambda: vqa(5.3, 20)), "gqa": (72_000, lambda: vqa(13, 30)),
        "okvqa": (9_000, lambda: vqa(1, 1)), "ocrvqa": (80_000, lambda: vqa(5, 12)), "aokvqa": (66_000, mc),
        "textcaps": (22_000, caption), "refcoco": (48_000, lambda: region(6)), "vg": (86_000, lambda: region(7)),
    }


def build(n_records: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    table = sources(rng)
    total = sum(n for n, _ in table.values())
    out = []
    for name, (count, make) in table.items():
        for i in range(max(1, round(count * n_records / total))):
            image = None if name == "sharegpt" else f"{name}/{i:07d}.jpg"
            out.append(record(f"{name}-{i}", image, make()))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="nano")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", help="also write the mixed file here (LLaVA JSON)")
    args = parser.parse_args()

    from llavakit.data.batching import LengthGroupedSampler, padding_fraction, random_batches
    from llavakit.data.dataset import LlavaDataset
    from llavakit.model.tokenizer import load_processor

    records = build(args.records, args.seed)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(records, f)
    processor = load_processor(args.model)
    start = time.perf_counter()
    ds = LlavaDataset(records, processor, resolve_images=False)
    took = time.perf_counter() - start
    lengths = np.asarray(ds.lengths)
    mm = np.asarray(ds.is_multimodal)
    print(f"{len(ds)} records ({mm.sum()} with image, {(~mm).sum()} text-only), model {args.model}; "
          f"tokenized in {took:.1f} s ({len(ds) / took:.0f} records/s)")
    print(f"tokens: median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, max {lengths.max()}; "
          f"image samples median {int(np.median(lengths[mm]))}, text-only median {int(np.median(lengths[~mm]))}")
    bs = args.batch_size
    for world in (1, 8):
        grouped = []
        for epoch in range(3):
            per_rank = [LengthGroupedSampler(ds.lengths, ds.is_multimodal, bs, seed=args.seed, num_replicas=world, rank=r)
                        for r in range(world)]
            for s in per_rank:
                s.set_epoch(epoch)
            grouped.append(padding_fraction(ds.lengths, [b for s in per_rank for b in s]))
        shuffled = [padding_fraction(ds.lengths, random_batches(len(ds), bs, args.seed, e)) for e in range(3)]
        print(f"batch {bs} per device x {world} rank(s): padding {np.mean(shuffled):.1%} shuffled → "
              f"{np.mean(grouped):.1%} length-grouped (mean of 3 epochs)")


if __name__ == "__main__":
    main()
