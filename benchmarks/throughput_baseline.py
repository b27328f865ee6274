"""The baseline of ``train_throughput.py``: the same model as transformers'
``LlavaForConditionalGeneration`` trained by ``Trainer`` with the original LLaVA repo's settings
(gradient checkpointing, lazy per-sample image loading, length-grouped sampler, cosine schedule),
and a check that both stacks give the same loss on the same batch. Run only as that script's
``--worker baseline`` / ``--worker same-model`` subprocesses.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from train_throughput import LR, peak_memory_mb


def _baseline_model(work: Path, stage: int):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from llavakit.model import load_model

    lk = load_model(str(work / "model"))
    vision = lk.vision_tower.model
    cfg = LlavaConfig(vision_config=vision.config.to_dict(), text_config=lk.language_model.config.to_dict(),
                      image_token_index=lk.image_token_id, projector_hidden_act="gelu", vision_feature_layer=-2,
                      vision_feature_select_strategy="default", image_seq_length=lk.num_image_tokens)
    hf = LlavaForConditionalGeneration(cfg)
    hf.model.vision_tower.load_state_dict(vision.state_dict())
    proj = hf.model.multi_modal_projector
    proj.linear_1.load_state_dict(lk.projector[0].state_dict())
    proj.linear_2.load_state_dict(lk.projector[2].state_dict())
    hf.model.language_model.load_state_dict(lk.language_model.model.state_dict())
    hf.lm_head.load_state_dict(lk.language_model.lm_head.state_dict())
    hf.resize_token_embeddings(len(lk.tokenizer))  # the <image> token gets an embedding row, as in HF's llava
    hf.requires_grad_(False)  # LLaVA's train.py: vision frozen; stage 1 tunes only the mm projector
    proj.requires_grad_(True)
    if stage == 2:
        hf.model.language_model.requires_grad_(True)
        hf.lm_head.requires_grad_(True)
    hf.enable_input_require_grads()  # as LLaVA does with gradient checkpointing
    return hf, lk


def worker_baseline(a) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from llavakit.conversation.processor import IGNORE_INDEX, Processor
    from llavakit.data.dataset import LlavaDataset, load_records
    from llavakit.imaging import load_image

    work = Path(a.work)
    model, lk = _baseline_model(work, a.stage)
    proc = Processor(lk.tokenizer, "plain" if a.stage == 1 else lk.processor.template, lk.num_image_tokens)
    ds = LlavaDataset(load_records(work / f"stage{a.stage}.json"), proc, image_folder=work / "images", progress=False)
    tower = lk.vision_tower

    class Lazy(torch.utils.data.Dataset):  # LLaVA's LazySupervisedDataset: load + preprocess per sample
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            ex = ds[i]
            return {"input_ids": ex.input_ids, "labels": ex.labels,
                    "pixel_values": tower.preprocess([load_image(ex.images[0])])[0]}

    def collate(items):
        width = max(len(x["input_ids"]) for x in items)
        pad = lk.tokenizer.pad_token_id
        ids = torch.tensor([x["input_ids"] + [pad] * (width - len(x["input_ids"])) for x in items])
        labels = torch.tensor([x["labels"] + [IGNORE_INDEX] * (width - len(x["labels"])) for x in items])
        mask = torch.tensor([[1] * len(x["input_ids"]) + [0] * (width - len(x["input_ids"])) for x in items])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "pixel_values": torch.stack([x["pixel_values"] for x in items])}

    class LLaVATrainer(Trainer):  # the original groups by (modality) length with precomputed lengths
        def _get_train_sampler(self, *args, **kwargs):
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=list(ds.lengths))

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-", dir=a.work), per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1, learning_rate=LR[a.stage], weight_decay=0.0, warmup_steps=0.03,
        lr_scheduler_type="cosine", max_steps=a.warmup + a.steps, activation_checkpointing=True,
        dataloader_num_workers=a.baseline_workers, save_strategy="no", report_to="none", logging_steps=10_000,
        disable_tqdm=True, remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), seed=42,
    )
    trainer = LLaVATrainer(model=model, args=args, train_dataset=Lazy(), data_collator=collate, callbacks=[Clock()])
    trainer.train()
    t0, t1 = times[a.warmup - 1], times[a.warmup + a.steps - 1]
    return {"samples_per_s": a.batch * a.steps / (t1 - t0), "peak_mb": peak_memory_mb()}


def worker_same_model(a) -> dict:
    """The two stacks hold the same model: their loss on the same stage-2 batch must agree."""
    from llavakit.data.batching import Collator, pixel_image_fn
    from llavakit.data.dataset import LlavaDataset, load_records

    work = Path(a.work)
    hf, lk = _baseline_model(work, 2)
    ds = LlavaDataset(load_records(work / "stage2.json"), lk.processor, image_folder=work / "images", progress=False)
    batch = Collator(lk.tokenizer.pad_token_id, image_fn=pixel_image_fn.for_model(lk))([ds[0], ds[1]])
    batch.pop("ids"), batch.pop("skipped")
    with torch.no_grad():
        ours = float(lk(**batch).loss)
        theirs = float(hf(**batch).loss)
    return {"llavakit_loss": ours, "baseline_loss": theirs}
