"""The run's data: dataset, frozen-feature cache, length-grouped sampler, collator, loaders.

Built on :mod:`llavakit.data` (dataset, collator, sampler). With the feature cache on, every image
is run through the tower once before training; images that cannot be read are known up front and
their examples are left out of the sampler (listed in ``skipped.json``). Without the cache, images
are decoded per batch and a sample with a bad image is dropped by the collator (also listed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from llavakit.data.batching import Collator, ImageLoader, LengthGroupedSampler, pixel_image_fn
from llavakit.data.dataset import LlavaDataset
from llavakit.imaging import image_reader
from llavakit.conversation.processor import IGNORE_INDEX
from llavakit.errors import DataError
from llavakit.train.config import BatchPlan, TrainConfig
from llavakit.train.feature_cache import FeatureCache


def context_length(model) -> int | None:
    return getattr(model.language_model.config, "max_position_embeddings", None)


class TrainData:
    def __init__(self, cfg: TrainConfig, records: list[dict], processor, model, accelerator, plan: BatchPlan):
        self.cfg = cfg
        main = accelerator.is_main_process
        bars = main and cfg.progress
        self.dataset = LlavaDataset(
            records,
            processor,
            image_folder=cfg.data.image_folder,
            max_length=cfg.data.max_length or context_length(model),
            long_policy=cfg.data.long_policy,
            image_placement=cfg.data.image_placement,
            seed=cfg.seed,
            progress=bars,
        )
        report = self.dataset.report
        if main:
            print(f"llavakit train: data {cfg.data.path}: {report.summary()}", file=sys.stderr, flush=True)
        self.unreadable: list[tuple[str, str]] = []  # (example id, reason), known before training
        self.runtime_skipped: list[tuple[str, str]] = []  # dropped by the collator during training
        keep = list(range(len(self.dataset)))
        self.cache = None
        if cfg.feature_cache.enabled and any(self.dataset.is_multimodal):
            keep, image_fn = self._build_cache(model, accelerator, keep)
        else:
            image_fn = pixel_image_fn.for_model(model, cfg.data.max_image_pixels)
        self.indices = keep
        self.collator = Collator(
            model.tokenizer.pad_token_id, "right",
            loader=ImageLoader(image_fn, max_bad_fraction=cfg.data.max_bad_image_fraction)
        )
        self.sampler = LengthGroupedSampler(
            [self.dataset.lengths[i] for i in keep],
            [self.dataset.is_multimodal[i] for i in keep],
            batch_size=plan.per_device,
            seed=cfg.seed,
            shuffle=True,
            num_replicas=accelerator.num_processes,
            rank=accelerator.process_index,
            pool_batches=50 if cfg.data.group_by_length else 1,
            longest_first=cfg.data.group_by_length,
        )
        self.micro_batches_per_epoch = len(self.sampler) if keep else 0
        self.pin = accelerator.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.indices)

    def _build_cache(self, model, accelerator, keep: list[int]):
        fc = self.cfg.feature_cache
        tower = model.vision_tower.to(accelerator.device)
        self.cache = FeatureCache(fc.dir, tower)
        paths = {i: self.dataset.image_paths(i) for i in keep if self.dataset.is_multimodal[i]}
        every = [p for ps in paths.values() for p in ps]
        report = self.cache.build(every, image_reader(tower.config.image_mode, self.cfg.data.max_image_pixels), fc.batch_size, fc.shard_size, accelerator, accelerator.device,
                                 progress=self.cfg.progress)
        if accelerator.is_main_process:
            print(f"llavakit train: {report.describe()} ({self.cache.dir})", file=sys.stderr, flush=True)
        bad = {str(p): reason for p, reason in report.bad.items()}
        kept = []
        for i in keep:
            reasons = [bad[str(p)] for p in paths.get(i, []) if str(p) in bad]
            if reasons:
                self.unreadable.append((self.dataset.record(i).id, reasons[0]))
            else:
                kept.append(i)
        if self.unreadable and accelerator.is_main_process:
            shown = "; ".join(f"{i}: {r}" for i, r in self.unreadable[:5])
            print(f"llavakit train: {len(self.unreadable)} examples left out for unreadable images: {shown}",
                  file=sys.stderr, flush=True)
        limit = self.cfg.data.max_bad_image_fraction
        if paths and len(self.unreadable) > limit * len(paths):
            report = Path(self.cfg.output_dir) / "skipped.json"
            if accelerator.is_main_process:
                report.parent.mkdir(parents=True, exist_ok=True)
                self.indices = kept
                self.write_report(report)
            raise DataError(
                f"{len(self.unreadable)} of {len(paths)} samples with images have a missing, corrupt or oversized image "
                f"(more than data.max_bad_image_fraction = {limit:.1%}); bad ids: "
                + ", ".join(i for i, _ in self.unreadable[:20]) + (" ..." if len(self.unreadable) > 20 else "")
                + f"; first reason: {self.unreadable[0][1]}; all of them: {report}"
            )
        return kept, self.cache.image_fn

    def loader(self, epoch: int, skip: int = 0):
        """This rank's collated micro-batches of ``epoch``, starting after ``skip`` of them."""
        if skip >= self.micro_batches_per_epoch:
            return
        self.sampler.set_epoch(epoch)
        self.sampler.load_state_dict(self.sampler.state_dict(consumed=skip))
        # the loader's worker seeds come from its own generator, never from the global RNG that
        # training uses (dropout): creating a loader mid-epoch on resume must not shift it
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        loader = DataLoader(
            Subset(self.dataset, self.indices),
            batch_sampler=self.sampler,
            collate_fn=self.collator,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.pin,
            generator=generator,
        )
        for batch in loader:
            if batch["skipped"]:
                self.runtime_skipped.extend(batch["skipped"])
            yield batch

    @property
    def skipped(self) -> int:
        r = self.dataset.report
        return len(r.bad) + len(r.dropped) + len(self.unreadable) + len(self.runtime_skipped)

    def write_report(self, path: Path) -> None:
        r = self.dataset.report
        data = {
            "records": r.total,
            "trained_on": len(self.indices),
            "invalid_records": [{"id": i, "reason": why} for i, why in r.bad],
            "too_long_dropped": [{"id": i, "tokens": n} for i, n in r.dropped],
            "too_long_cut": [{"id": i, "turns_before": a, "turns_after": b} for i, a, b in r.cut],
            "unreadable_images": [{"id": i, "reason": why} for i, why in self.unreadable],
            "dropped_while_training": [{"id": i, "reason": why} for i, why in self.runtime_skipped],
        }
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def null_batch(model, device, use_features: bool) -> dict:
    """A one-image batch with nothing supervised: keeps ranks in step when a micro-batch lost every sample."""
    n = model.num_image_tokens
    ids = torch.full((1, n), model.image_token_id, dtype=torch.long, device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, IGNORE_INDEX)}
    tower = model.vision_tower
    if use_features:
        batch["image_features"] = torch.zeros(1, n, tower.hidden_size, device=device)
    else:
        batch["pixel_values"] = torch.zeros(1, 3, tower.image_size, tower.image_size, device=device)
    return batch
