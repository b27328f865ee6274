"""Many requests through one batched ``generate``, in slices that can pause and resume.

A :class:`Cohort` left-pads its rows' prompts into one batch and runs the model's ``generate``
(transformers' KV-cache loop) with two hooks that keep the rows independent:
:class:`~llavakit.serve.rows.RowTracker` (each row's stream and stops) and
:class:`~llavakit.serve.sampling.RowSampler` (each row's own sampling). ``advance(should_pause)``
runs until every row is done or ``should_pause()`` is true after a step; the KV cache and the
embedded sequence carry over, so the next ``advance`` continues exactly where it stopped (the
same tokens as one uninterrupted call). The server's engine interleaves cohorts this way, so a
short request never waits for a long batch to end (:mod:`llavakit.serve.engine`).

:func:`generate_rows` runs one cohort to the end — ``llavakit infer``, ``llavakit chat`` and the
evaluations use it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from llavakit.model.generation import CACHE_FIELD
from llavakit.serve.rows import (
    Row,
    RowResult,
    RowState,
    RowTracker,
    special_token_ids,
    stop_strings_for,
)
from llavakit.serve.sampling import RowSampler


def collate(rows: Sequence[Row], pad_id: int) -> dict:
    """Left-padded ``input_ids`` / ``attention_mask`` and the rows' pixels concatenated in order."""
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in rows])
    mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
    pixels = [r.pixel_values for r in rows if r.pixel_values is not None and len(r.pixel_values)]
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels) if pixels else None}


class _Pause(StoppingCriteria):
    """Stops the whole ``generate`` call (every row) when ``should_pause()`` says so."""

    def __init__(self, should_pause: Callable[[], bool]):
        self.should_pause = should_pause

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), bool(self.should_pause()), dtype=torch.bool, device=input_ids.device)


class Cohort:
    """``rows`` generating together (see the module docstring). Every row's ``on_finish`` is
    called exactly once — except when ``advance`` raises: then the unfinished rows' callbacks are
    not called and the caller reports the error to them (:meth:`unfinished`)."""

    def __init__(self, model, rows: Sequence[Row]):
        self.model = model
        eos_ids = set(model.eos_ids())
        special = special_token_ids(model.tokenizer)
        self.states = [RowState(r, model.tokenizer, stop_strings_for(model, r.params.stop, r.template), eos_ids,
                                special) for r in rows]
        for state in self.states:
            if state.row.cancel.is_set():
                state.finish("cancelled", "")
        self.live = [s for s in self.states if not s.done]
        self.limit = max((s.row.params.max_new_tokens for s in self.live), default=0)
        self.generated = 0  # tokens generated per row so far (finished rows get pads)
        self.embeds = self.mask = self.cache = None

    @property
    def done(self) -> bool:
        return all(s.done for s in self.states)

    def unfinished(self) -> list[Row]:
        return [s.row for s in self.states if not s.done]

    def advance(self, should_pause: Callable[[], bool] | None = None) -> bool:
        """Generate until every row is done (True) or ``should_pause()`` after a step (False)."""
        if self.done:
            return True
        model = self.model
        if self.embeds is None:  # the first slice: embed the prompts (images included)
            batch = collate([s.row for s in self.live], model.tokenizer.pad_token_id)
            self.embeds = model.embed(batch["input_ids"].to(model.device), batch["pixel_values"], None)
            self.mask = batch["attention_mask"].to(model.device)
        processors = [RowSampler(self.live)] if any(s.generator is not None or s.row.params.adjusts_logits
                                                    for s in self.live) else []
        criteria = [RowTracker(self.live)] + ([_Pause(should_pause)] if should_pause else [])
        out = model.generate_from_embeds(
            self.embeds, self.mask, cache=self.cache, max_new_tokens=self.limit - self.generated,
            stopping_criteria=StoppingCriteriaList(criteria), logits_processor=LogitsProcessorList(processors),
            return_dict_in_generate=True,
        )
        new = out.sequences  # only the new tokens: generate started from embeddings
        self.generated += new.shape[1]
        if self.done or self.generated >= self.limit:
            for state in self.live:  # generate ended at the longest row's limit
                state.finish("length")
            self.embeds = self.mask = self.cache = None  # the KV cache is freed with the cohort's end
            return True
        self.cache = getattr(out, CACHE_FIELD)
        self.embeds = torch.cat([self.embeds, model.language_model.get_input_embeddings()(new).to(self.embeds.dtype)], 1)
        self.mask = torch.cat([self.mask, torch.ones_like(new, dtype=self.mask.dtype)], 1)
        return False


def generate_rows(model, rows: Sequence[Row]) -> list[RowResult]:
    """Generate for all ``rows`` as one cohort, to the end; results in row order."""
    cohort = Cohort(model, rows)
    cohort.advance()
    return [s.result for s in cohort.states]
