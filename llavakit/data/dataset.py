"""LLaVA-format records → validated, tokenized training examples.

Interface (consumed by the trainer)::

    records = load_records("llava_v1_5_mix665k.json")   # JSON list, JSONL, .parquet, .arrow,
                                                         # or a datasets.save_to_disk directory
    ds = LlavaDataset(records, processor, image_folder="playground/data",
                      max_length=2048, long_policy="drop",   # or "truncate" (at a turn boundary)
                      image_placement="first",               # or "random" (seeded per sample), "keep"
                      seed=0)
    ds[i]              # Example(id, input_ids, labels, images=[resolved Path, ...])
    ds.lengths         # token length of every example (for the length-grouped sampler)
    ds.is_multimodal   # whether each example has an image
    ds.report          # DataReport: bad records, dropped / cut long samples (ids + reasons)

A record is ``{"id", "image" (str, list of str, or absent/null for text-only),
"conversations": [{"from": "human"|"gpt"|"user"|"assistant"|"system", "value": str}, ...]}``.
Invalid records are skipped and listed in ``report.bad`` with the reason; if more than
``max_bad_fraction`` of the records are invalid the dataset refuses to build (DataError).
Image paths are resolved inside ``image_folder``; ``..``, absolute paths elsewhere and symlinks
that lead outside it make the record invalid. Whether an image decodes is checked when it is
loaded (:mod:`llavakit.data.batching`), not here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from llavakit.conversation.processor import PLACEMENTS, Processor, place_image
from llavakit.data.records import Record, load_records, parse_record, record_id, resolve_image
from llavakit.conversation.templates import SYSTEM, Message
from llavakit.errors import ConfigError, DataError

__all__ = ["DataReport", "Example", "LlavaDataset", "Record", "load_records", "parse_record"]

LongPolicy = Literal["drop", "truncate"]
LONG_POLICIES = ("drop", "truncate")


# --- the dataset -------------------------------------------------------------------------------

@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]
    images: list[Path]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class DataReport:
    """What happened to every record: kept, invalid (id, reason), dropped or cut for length."""

    total: int = 0
    kept: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, int]] = field(default_factory=list)  # (id, tokens)
    cut: list[tuple[str, int, int]] = field(default_factory=list)  # (id, turns before, turns after)

    def summary(self, show: int = 5) -> str:
        lines = [f"{self.kept} of {self.total} records kept"]
        if self.bad:
            lines.append(f"{len(self.bad)} invalid: " + "; ".join(f"{i}: {r}" for i, r in self.bad[:show]))
        if self.dropped:
            lines.append(
                f"{len(self.dropped)} dropped as too long: " + ", ".join(f"{i} ({n} tokens)" for i, n in self.dropped[:show])
            )
        if self.cut:
            lines.append(
                f"{len(self.cut)} cut at a turn boundary: " + ", ".join(f"{i} ({a}→{b} turns)" for i, a, b in self.cut[:show])
            )
        return "\n".join(lines)


class LlavaDataset:
    """Validated, tokenized LLaVA examples (a map-style dataset for ``torch.utils.data.DataLoader``)."""

    def __init__(
        self,
        records: Sequence[dict],
        processor: Processor,
        image_folder: str | Path | None = None,
        max_length: int | None = None,
        long_policy: LongPolicy = "drop",
        image_placement: str = "first",
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        resolve_images: bool = True,
        progress: bool | None = None,
    ):
        if long_policy not in LONG_POLICIES:
            raise ConfigError(f"long_policy {long_policy!r} is not one of {', '.join(LONG_POLICIES)}")
        if image_placement not in PLACEMENTS:
            raise ConfigError(f"image_placement {image_placement!r} is not one of {', '.join(PLACEMENTS)}")
        if max_length is not None and max_length < 1:
            raise ConfigError(f"max_length must be positive, got {max_length}")
        self.records = records
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder is not None else None
        if self.image_folder is not None and not self.image_folder.is_dir():
            raise ConfigError(f"image folder {self.image_folder} is not a directory")
        self.max_length, self.long_policy = max_length, long_policy
        self.image_placement, self.seed = image_placement, seed
        self.report = DataReport(total=len(records))
        self._index: list[int] = []  # record index of each example
        self._turns: list[int] = []  # messages kept (after a cut)
        self._images: list[list[Path]] = []
        self.lengths: list[int] = []
        self.is_multimodal: list[bool] = []
        from llavakit.progress import bar as progress_bar

        bar = progress_bar(records, desc="tokenizing records", unit="rec", show=progress is None or progress)
        for i, raw in enumerate(bar):
            try:
                rec = parse_record(raw, i, processor.image_token)
                if rec.images and self.image_folder is None and resolve_images:
                    raise ConfigError(f"record {rec.id} has an image ({rec.images[0]!r}): pass the image folder")
                paths = [resolve_image(self.image_folder, p, rec.id) if resolve_images else Path(p) for p in rec.images]
                kept, length = self._fit(rec)
            except DataError as exc:
                self.report.bad.append((record_id(raw, i), str(exc)))
                continue
            if kept == 0:
                self.report.dropped.append((rec.id, length))
                continue
            if kept < len(rec.messages):
                self.report.cut.append((rec.id, len(rec.messages), kept))
                token = processor.image_token  # images of the turns that were cut go with them
                paths = paths[: sum(m.content.count(token) for m in self._messages(rec)[:kept])]
            self._index.append(i)
            self._turns.append(kept)
            self._images.append(paths)
            self.lengths.append(length)
            self.is_multimodal.append(bool(paths))
        self.report.kept = len(self._index)
        if records and len(self.report.bad) > max_bad_fraction * len(records):
            raise DataError(
                f"{len(self.report.bad)} of {len(records)} records are invalid "
                f"(more than {max_bad_fraction:.1%}): " + "; ".join(f"{r}" for _, r in self.report.bad[:10])
                + (" ..." if len(self.report.bad) > 10 else "")
            )

    # --- encoding ---

    def _messages(self, rec: Record) -> list[Message]:
        msgs = rec.messages
        system = [msgs[0]] if msgs and msgs[0].role == SYSTEM else []
        body = msgs[len(system):]
        rng = random.Random(f"{self.seed}:{rec.index}:{rec.id}")  # str seeds hash with sha512: stable
        return system + place_image(body, self.processor.image_token, self.image_placement, rng)

    def _fit(self, rec: Record) -> tuple[int, int]:
        """(messages kept, length): all of them if they fit; else a cut at a turn boundary or 0 (drop)."""
        msgs = self._messages(rec)
        length = len(self.processor.encode(msgs))
        if self.max_length is None or length <= self.max_length:
            return len(msgs), length
        if self.long_policy == "drop":
            return 0, length
        start = 1 if msgs[0].role == SYSTEM else 0
        lo, hi, best = 1, (len(msgs) - start) // 2, None  # number of (user, assistant) pairs kept
        while lo <= hi:
            mid = (lo + hi) // 2
            n = len(self.processor.encode(msgs[: start + 2 * mid]))
            if n <= self.max_length:
                best, lo = (start + 2 * mid, n), mid + 1
            else:
                hi = mid - 1
        return best if best is not None else (0, length)

    def __len__(self) -> int:
        return len(self._index)

    def record(self, i: int) -> Record:
        idx = self._index[i]
        return parse_record(self.records[idx], idx, self.processor.image_token)

    def record_index(self, i: int) -> int:
        """Position in ``records`` of example ``i``."""
        return self._index[i]

    def image_paths(self, i: int) -> list[Path]:
        return list(self._images[i])

    def messages(self, i: int) -> list[Message]:
        """The conversation of example ``i`` as encoded (image placed, cut if it was too long)."""
        return self._messages(self.record(i))[: self._turns[i]]

    def __getitem__(self, i: int) -> Example:
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range ({len(self)} examples)")
        i %= len(self)
        rec = self.record(i)
        enc = self.processor.encode(self._messages(rec)[: self._turns[i]])
        return Example(rec.id, enc.input_ids, enc.labels, list(self._images[i]))
