"""The tests' reference for generation: transformers' ``generate`` called directly through the
model (``model.generate`` + ``model.decode``), independent of the serving path
(:func:`llavakit.serve.batch.generate_rows`) whose results the tests compare against it."""

from __future__ import annotations

from typing import Sequence

import torch


def prepare(model, conversations: Sequence[Sequence], images: Sequence[Sequence] = ()) -> dict:
    """Prompts (lists of Message) + their images → a left-padded generation batch."""
    prompts = [model.processor.encode_prompt(msgs) for msgs in conversations]
    width = max(len(p) for p in prompts)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    flat = [img for per_sample in images for img in per_sample]
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": model.preprocess(flat) if flat else None}


def answer(model, messages: Sequence, images: Sequence = (), **gen) -> str:
    """One greedy (or sampled, with ``temperature``) reply to a conversation ending with a user turn."""
    new = model.generate(**prepare(model, [messages], [list(images)]), **gen)
    return model.decode(new[0], gen.get("stop"))
