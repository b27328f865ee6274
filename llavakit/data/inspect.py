"""`llavakit data inspect FILE`: what a LLaVA data file holds and what the model will learn from it.

Prints record counts, the image / text-only split, rounds per conversation, a token-length
histogram, invalid records with their reasons, too-long samples, missing or unreadable images
(each image's header is read; ``--check-images`` decodes them all), and one sample rendered token by
token with the supervised spans highlighted (green; marked ⟦ ⟧ when the output has no colour) and
image spans collapsed. Only the tokenizer is loaded (:func:`llavakit.model.tokenizer.load_processor`),
never model weights.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import numpy as np

from llavakit.data.dataset import LONG_POLICIES, LlavaDataset, load_records
from llavakit.conversation.processor import IGNORE_INDEX, PLACEMENTS
from llavakit.conversation.templates import TEMPLATES
from llavakit.errors import LlavakitError
from llavakit.imaging import DATA_MAX_PIXELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="LLaVA data: JSON list, JSONL, .parquet/.arrow, or a saved datasets folder")
    parser.add_argument("--image-folder", help="folder the records' image paths are relative to (checks they exist)")
    parser.add_argument("--template", choices=TEMPLATES, help="conversation template (default: the model's)")
    parser.add_argument("--model", default="nano", help="preset or checkpoint dir whose tokenizer to use (default: nano)")
    parser.add_argument("--max-length", type=int, help="report (and drop/cut) samples longer than this many tokens")
    parser.add_argument("--long-policy", choices=LONG_POLICIES, default="drop")
    parser.add_argument("--image-placement", choices=PLACEMENTS, default="first")
    parser.add_argument("--system-prompt", help="system prompt (default: the model's / template's)")
    parser.add_argument("--sample", help="id or index (#N) of the sample to render (default: the first)")
    parser.add_argument("--check-images", action="store_true", help="decode every image (slow), not only read its header")
    parser.add_argument("--max-image-pixels", type=int, default=DATA_MAX_PIXELS,
                        help="flag images over this many pixels (with a pad model: its padded square), as training "
                             "would with data.max_image_pixels (0: no limit)")
    parser.add_argument("--bins", type=int, default=10, help="token-length histogram bins")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="report an epoch's padding at this per-device batch size, with and without length grouping")
    parser.add_argument("--show", type=int, default=10, help="how many ids to list per problem")


def _reason_kind(reason: str) -> str:
    """A reason without its record id and quoted values, to group similar problems."""
    text = re.sub(r"^record \S+?:\s*", "", reason)
    text = re.sub(r"^record \S+ ", "", text)
    text = re.sub(r"\[\d+\]", "[i]", text)
    return re.sub(r"'[^']*'", "'…'", text)


def _histogram(console, values, bins: int, title: str) -> None:
    if not values:
        return
    counts, edges = np.histogram(values, bins=max(1, min(bins, len(set(values)))))
    peak = max(counts.max(), 1)
    console.print(f"[bold]{title}[/bold]")
    for count, lo, hi in zip(counts, edges[:-1], edges[1:]):
        bar = "█" * int(round(40 * count / peak))
        console.print(f"  {int(lo):>7}–{int(hi):<7} │{bar} {count}", highlight=False)


def render_sample(processor, example, plain: bool):
    """The sample's tokens as rich Text: supervised runs green (⟦…⟧ if plain), image runs collapsed."""
    from rich.text import Text

    tok, image_id = processor.tokenizer, processor.image_token_id
    text = Text()
    runs: list[tuple[str, list[int]]] = []
    for tid, label in zip(example.input_ids, example.labels):
        kind = "image" if tid == image_id else ("supervised" if label != IGNORE_INDEX else "context")
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(tid)
        else:
            runs.append((kind, [tid]))
    for kind, ids in runs:
        if kind == "image":
            text.append(f"[{processor.image_token} ×{len(ids)}]", style="bold magenta")
        elif kind == "supervised":
            body = tok.decode(ids, skip_special_tokens=False)
            text.append(f"⟦{body}⟧" if plain else body, style="bold black on green")
        else:
            text.append(tok.decode(ids, skip_special_tokens=False), style="dim")
    return text


def _pick(ds: LlavaDataset, wanted: str | None) -> int | None:
    if not len(ds):
        return None
    if wanted is None:
        return next((i for i, mm in enumerate(ds.is_multimodal) if mm), 0)
    ids = [ds.record(i).id for i in range(len(ds))] if not wanted.startswith("#") else None
    if ids is not None and wanted in ids:
        return ids.index(wanted)
    if wanted.startswith("#") and wanted[1:].isdigit():
        index = int(wanted[1:])
        hit = [i for i in range(len(ds)) if ds.record_index(i) == index]
        if hit:
            return hit[0]
    raise LlavakitError(f"--sample {wanted}: no kept sample has that id (or record index #N)")


def _check_images(ds: LlavaDataset, decode: bool, show: int, max_pixels: int, canvas: bool) -> list[str]:
    from llavakit.progress import bar as progress_bar

    from llavakit.errors import DataError
    from llavakit.imaging import load_image, read_size

    bad: list[tuple[str, str]] = []
    todo = [i for i, mm in enumerate(ds.is_multimodal) if mm]
    for i in progress_bar(todo, desc="checking images", unit="sample"):
        for path in ds.image_paths(i):
            if not path.is_file():
                bad.append((ds.record(i).id, f"missing {path}"))
                continue
            try:  # without --check-images only the header: empty, non-image and oversized files
                (load_image if decode else read_size)(path, max_pixels, canvas, "--max-image-pixels")
            except DataError as exc:
                bad.append((ds.record(i).id, str(exc)))
    what = ("missing, undecodable or oversized" if decode
            else "missing, unreadable or oversized (headers read; --check-images decodes)")
    lines = [f"images: {len(todo)} samples checked, {len(bad)} {what}"]
    lines += [f"  {rid}: {reason}" for rid, reason in bad[:show]]
    return lines


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from llavakit.model.spec import config_of
    from llavakit.model.tokenizer import load_processor

    console = Console(highlight=False, soft_wrap=True)
    plain = console.no_color or not console.is_terminal
    records = load_records(args.file)
    processor = load_processor(args.model, args.template, args.system_prompt)
    folder = Path(args.image_folder) if args.image_folder else None
    ds = LlavaDataset(
        records, processor, image_folder=folder, max_length=args.max_length, long_policy=args.long_policy,
        image_placement=args.image_placement, max_bad_fraction=1.0, resolve_images=folder is not None,
    )
    rep = ds.report
    n_mm = sum(ds.is_multimodal)
    console.print(f"[bold]{escape(str(args.file))}[/bold]: {rep.total} records, {rep.kept} usable "
                  f"(model {args.model}, template {processor.template.name}, {processor.num_image_tokens} image tokens)")
    console.print(f"  with image: {n_mm}   text-only: {rep.kept - n_mm}")
    id_counts = Counter(ds.record(i).id for i in range(len(ds)))
    dups = [i for i, c in id_counts.items() if c > 1]
    if dups:
        console.print(f"  {len(dups)} ids occur more than once (fine for training; ambiguous in reports): {escape(', '.join(dups[:args.show]))}")
    rounds = Counter(sum(m.role == "assistant" for m in ds.messages(i)) for i in range(len(ds)))
    console.print("  rounds per conversation: " + ", ".join(f"{k}: {rounds[k]}" for k in sorted(rounds)))
    if ds.lengths:
        lengths = np.asarray(ds.lengths)
        sup = [sum(lab != IGNORE_INDEX for lab in ds[i].labels) for i in range(min(len(ds), 2000))]
        console.print(f"  tokens: min {lengths.min()}, median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, "
                      f"p99 {int(np.percentile(lengths, 99))}, max {lengths.max()}; supervised "
                      f"{sum(sup) / max(sum(ds.lengths[:len(sup)]), 1):.1%} of tokens"
                      + (f" (first {len(sup)} samples)" if len(sup) < len(ds) else ""))
        _histogram(console, ds.lengths, args.bins, "token lengths")
        from llavakit.data.batching import LengthGroupedSampler

        pad = LengthGroupedSampler(ds.lengths, ds.is_multimodal, max(1, args.batch_size)).padding_report()
        console.print(f"  padding at batch size {args.batch_size}: {pad['grouped']:.1%} with the length-grouped "
                      f"sampler, {pad['random']:.1%} with shuffled batches")
    if rep.bad:
        console.print(f"[bold red]{len(rep.bad)} invalid records[/bold red] (skipped in training):")
        kinds = Counter(_reason_kind(r) for _, r in rep.bad)
        for kind, count in kinds.most_common():
            ids = [i for i, r in rep.bad if _reason_kind(r) == kind][: args.show]
            console.print(f"  {count} × {escape(kind)}  [dim](e.g. {escape(', '.join(ids))})[/dim]")
        for rid, reason in rep.bad[: args.show]:
            console.print(f"    {escape(reason)}")
    if rep.dropped:
        console.print(f"[yellow]{len(rep.dropped)} longer than {args.max_length} tokens, dropped:[/yellow] "
                      + escape(", ".join(f"{i} ({n})" for i, n in rep.dropped[: args.show])))
    if rep.cut:
        console.print(f"[yellow]{len(rep.cut)} cut at a turn boundary to fit {args.max_length} tokens:[/yellow] "
                      + escape(", ".join(f"{i} ({a}→{b} turns)" for i, a, b in rep.cut[: args.show])))
    if folder is not None:
        config = config_of(args.model)  # None for a foreign layout: its pad rule is not known without weights
        canvas = config is not None and config.vision.image_mode == "pad"
        for line in _check_images(ds, args.check_images, args.show, args.max_image_pixels, canvas):
            console.print(escape(line))
    elif n_mm:
        console.print("  images not checked (pass --image-folder)")
    index = _pick(ds, args.sample)
    if index is not None:
        example = ds[index]
        console.print(f"\n[bold]sample {escape(example.id)}[/bold] ({len(example)} tokens; "
                      + ("supervised spans marked ⟦ ⟧" if plain else "[bold black on green]supervised[/bold black on green] "
                         "[dim]context[/dim]") + "):")
        console.print(render_sample(processor, example, plain), soft_wrap=True)
    return 0
