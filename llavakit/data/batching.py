"""Batches: padding collator, bad-image accounting, length-grouped (modality-aware) sampler.

Interface (consumed by the trainer)::

    collate = Collator(tokenizer.pad_token_id, padding_side="right",
                       image_fn=pixel_image_fn.for_model(model))     # or a feature-cache lookup
    batch = collate([ds[i] for i in idx])
    # {"input_ids", "attention_mask", "labels": LongTensor (B, T), "ids": [str],
    #  "pixel_values" or "image_features": images of the batch in order of appearance (absent
    #  when the batch has none), "skipped": [(id, reason)] of samples removed for a bad image}

    sampler = LengthGroupedSampler(ds.lengths, ds.is_multimodal, batch_size=8, seed=0,
                                   num_replicas=world, rank=rank)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    sampler.set_epoch(epoch)
    state = sampler.state_dict(consumed=batches_done)   # save with the checkpoint
    sampler.load_state_dict(state)                       # the next epoch iteration resumes there

``image_fn(paths) -> {"pixel_values": Tensor} | {"image_features": Tensor}`` is called once per
sample (first dimension = that sample's images); it raises DataError for a missing or corrupt
image. The collator's :class:`ImageLoader` records the sample id and reason, drops the sample and
raises DataError listing the bad ids once the bad fraction exceeds ``max_bad_fraction`` (after
``min_samples`` samples). With DataLoader workers each worker counts its own share; the main process
sees every skip in ``batch["skipped"]``. A batch whose every sample failed has ``ids == []``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from llavakit.imaging import DATA_MAX_PIXELS, image_reader
from llavakit.conversation.processor import IGNORE_INDEX
from llavakit.errors import ConfigError, DataError

ImageFn = Callable[[Sequence], dict]
IMAGE_KEYS = ("pixel_values", "image_features")


class pixel_image_fn:  # noqa: N801 - used like a function; a class so DataLoader workers can pickle it
    """``image_fn`` that decodes images from disk and runs ``preprocess`` (e.g. ``model.preprocess``).

    ``image_mode``: the tower's, so a ``pad`` model refuses an image whose padded square is over
    ``max_pixels`` (:func:`llavakit.imaging.check_size`) before decoding it; :meth:`for_model` takes
    both from a model."""

    def __init__(self, preprocess: Callable, image_mode: str = "square", max_pixels: int | None = DATA_MAX_PIXELS):
        self.preprocess = preprocess
        self.read = image_reader(image_mode, max_pixels)

    @classmethod
    def for_model(cls, model, max_pixels: int | None = DATA_MAX_PIXELS) -> "pixel_image_fn":
        return cls(model.preprocess, model.vision_tower.config.image_mode, max_pixels)

    def __call__(self, paths: Sequence) -> dict:
        return {"pixel_values": self.preprocess([self.read(p) for p in paths])}


@dataclass
class ImageLoader:
    """Runs ``image_fn`` for one sample at a time and accounts for samples whose images fail."""

    image_fn: ImageFn | None = None
    max_bad_fraction: float = 0.01
    min_samples: int = 100
    seen: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, sample_id: str, paths: Sequence) -> dict | None:
        """The image tensors of one sample, or None (recorded) when one of its images fails."""
        if self.image_fn is None:
            raise ConfigError("the collator got samples with images but no image_fn")
        self.seen += 1
        try:
            out = self.image_fn(list(paths))
        except DataError as exc:
            self.bad.append((sample_id, str(exc)))
            self.check()
            return None
        self.check()
        keys = [k for k in IMAGE_KEYS if k in out]
        if len(keys) != 1 or out[keys[0]].shape[0] != len(paths):
            raise ConfigError(
                f"image_fn must return one of {IMAGE_KEYS} with {len(paths)} rows for sample {sample_id}; "
                f"got keys {sorted(out)}"
            )
        return out

    def count_ok(self, n: int = 1) -> None:
        """Count samples that needed no image loading (text-only) toward the fraction."""
        self.seen += n
        self.check()

    def check(self) -> None:
        if self.seen >= self.min_samples and len(self.bad) > self.max_bad_fraction * self.seen:
            raise DataError(
                f"{len(self.bad)} of {self.seen} samples had a missing, corrupt or oversized image (more than "
                f"{self.max_bad_fraction:.1%}); bad ids: " + ", ".join(i for i, _ in self.bad[:50])
                + (" ..." if len(self.bad) > 50 else "") + f"; first reason: {self.bad[0][1]}"
            )

    def state_dict(self) -> dict:
        return {"seen": self.seen, "bad": [list(b) for b in self.bad]}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.bad = int(state["seen"]), [tuple(b) for b in state["bad"]]


class Collator:
    """Examples → a padded batch; images of the batch flattened in order of appearance."""

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        image_fn: ImageFn | None = None,
        loader: ImageLoader | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        if padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side {padding_side!r} is not 'right' or 'left'")
        if pad_token_id is None:
            raise ConfigError("the collator needs a pad token id (the tokenizer has none)")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.loader = loader or ImageLoader(image_fn)
        if image_fn is not None and loader is not None:
            self.loader.image_fn = image_fn
        self.multiple = pad_to_multiple_of

    def __call__(self, examples: Sequence) -> dict:
        kept, images, skipped = [], [], []
        key = None
        for ex in examples:
            if not ex.images:
                self.loader.count_ok()
                kept.append(ex)
                continue
            out = self.loader(ex.id, ex.images)
            if out is None:
                skipped.append(self.loader.bad[-1])
                continue
            (k,) = [k for k in IMAGE_KEYS if k in out]
            if key is not None and k != key:
                raise ConfigError(f"image_fn returned {k} for {ex.id} but {key} for an earlier sample")
            key = k
            images.append(out[k])
            kept.append(ex)
        batch = self.pad([ex.input_ids for ex in kept], [ex.labels for ex in kept])
        batch["ids"] = [ex.id for ex in kept]
        batch["skipped"] = skipped
        if images:
            batch[key] = torch.cat(images, dim=0)
        return batch

    def pad(self, ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None) -> dict:
        width = max((len(x) for x in ids), default=0)
        if self.multiple and width % self.multiple:
            width += self.multiple - width % self.multiple
        n = len(ids)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        out_labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for row, seq in enumerate(ids):
            span = slice(0, len(seq)) if self.padding_side == "right" else slice(width - len(seq), width)
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
            if labels is not None:
                out_labels[row, span] = torch.tensor(labels[row], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if labels is not None:
            batch["labels"] = out_labels
        return batch


# --- sampling ----------------------------------------------------------------------------------

def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions when each batch is padded to its longest sample."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / total if total else 0.0


def random_batches(n: int, batch_size: int, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    """Shuffled batches without length grouping (the baseline the grouped sampler is measured against)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


class LengthGroupedSampler:
    """Batches of similar length, image and text-only samples never mixed (LLaVA's modality grouping).

    Per epoch: each modality's indices are shuffled, cut into pools of ``pool_batches`` global
    batches, each pool sorted by length and cut into global batches (``batch_size * num_replicas``);
    all global batches are shuffled together (the longest first if ``longest_first``). Everything is
    a function of (seed, epoch), so every rank and a resumed run see the same batches. A global
    batch is dealt to the ranks in sorted order, so each rank gets ``batch_size`` similar lengths.
    The last partial batch of a modality is padded with repeats when ``num_replicas > 1`` (all ranks
    must step together) and kept short otherwise; ``drop_last`` drops it instead. Use it as a
    DataLoader ``batch_sampler``; it yields this rank's lists of indices.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        is_multimodal: Sequence[bool] | None,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        pool_batches: int = 50,
        longest_first: bool = True,
        drop_last: bool = False,
    ):
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas or pool_batches < 1:
            raise ConfigError(f"sampler: need batch_size ≥ 1, pool_batches ≥ 1 and 0 ≤ rank < num_replicas; got "
                              f"{batch_size}, {pool_batches}, {rank}, {num_replicas}")
        mm = [False] * len(lengths) if is_multimodal is None else list(map(bool, is_multimodal))
        if len(mm) != len(lengths):
            raise ConfigError(f"sampler: {len(lengths)} lengths but {len(mm)} is_multimodal flags")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.is_multimodal = np.asarray(mm, dtype=bool)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.pool_batches, self.longest_first, self.drop_last = pool_batches, longest_first, drop_last
        self.epoch = 0
        self.start_index = 0  # batches of the current epoch already consumed (resume)
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_index = 0
        self.epoch = epoch

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's global batches (each ``batch_size * num_replicas`` indices, sorted by length)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        size = self.batch_size * self.num_replicas
        out: list[list[int]] = []
        for flag in (True, False):
            group = np.flatnonzero(self.is_multimodal == flag)
            if not len(group):
                continue
            order = rng.permutation(group) if self.shuffle else group
            pool = size * self.pool_batches
            batches = []
            for start in range(0, len(order), pool):
                chunk = order[start:start + pool]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                batches += [chunk[i:i + size].tolist() for i in range(0, len(chunk), size)]
            batches = self._complete(batches, order, size)
            out += batches
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        if self.longest_first and out:
            longest = max(range(len(out)), key=lambda b: max(self.lengths[out[b]]))
            out.insert(0, out.pop(longest))
        return out

    def _complete(self, batches: list[list[int]], order: np.ndarray, size: int) -> list[list[int]]:
        """Make the partial batches whole: drop them, keep one short batch, or pad with repeats."""
        partial = [i for b in batches if len(b) < size for i in b]
        full = [b for b in batches if len(b) == size]
        if not partial or self.drop_last:
            return full
        if self.num_replicas == 1:
            for start in range(0, len(partial), size):
                full.append(partial[start:start + size])
            return full
        need = -len(partial) % self.num_replicas
        repeats = np.resize(order, need).tolist() if need else []
        last = sorted(partial + repeats, key=lambda i: -self.lengths[i])
        return full + [last]

    def _split(self, batch: list[int], rank: int) -> list[int]:
        per_rank = len(batch) // self.num_replicas
        return batch[rank * per_rank:(rank + 1) * per_rank]

    def _rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        return [self._split(b, self.rank) for b in self.global_batches(epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start, self.start_index = self.start_index, 0
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        return len(self._rank_batches())

    def fingerprint(self) -> str:
        ident = [self.lengths.tolist(), self.is_multimodal.tolist(), self.batch_size, self.num_replicas,
                 self.pool_batches, self.shuffle, self.longest_first, self.drop_last]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def state_dict(self, consumed: int | None = None) -> dict:
        """Where the epoch stands. Pass ``consumed`` (batches the trainer finished): a DataLoader
        prefetches, so the count of batches this sampler yielded runs ahead of training."""
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self._yielded if consumed is None else consumed,
                "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise ConfigError("sampler state was saved for different data or batch settings; cannot resume exactly")
        self.seed, self.epoch, self.start_index = int(state["seed"]), int(state["epoch"]), int(state["consumed"])

    def padding_report(self, epoch: int | None = None) -> dict:
        """Padding fraction of one epoch with this sampler vs. plain shuffled batches."""
        per_device = [self._split(b, r) for b in self.global_batches(epoch) for r in range(self.num_replicas)]
        base = random_batches(len(self.lengths), self.batch_size, self.seed, self.epoch if epoch is None else epoch)
        return {"grouped": padding_fraction(self.lengths, per_device), "random": padding_fraction(self.lengths, base)}
