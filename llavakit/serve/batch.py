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
import torch.nn.functional as F
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
        self.live = [s for s in self.states if not s.done]  # the rows of the batch tensors, in order
        self.embeds = self.mask = self.cache = None

    @property
    def done(self) -> bool:
        return all(s.done for s in self.states)

    def unfinished(self) -> list[Row]:
        return [s.row for s in self.states if not s.done]

    @torch.no_grad()  # a cohort may live for as long as the server is busy: no autograd graph may grow with it
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
        remaining = max(s.row.params.max_new_tokens - len(s.tokens) for s in self.live if not s.done)
        out = model.generate_from_embeds(
            self.embeds, self.mask, cache=self.cache, max_new_tokens=remaining,
            stopping_criteria=StoppingCriteriaList(criteria), logits_processor=LogitsProcessorList(processors),
            return_dict_in_generate=True,
        )
        new = out.sequences  # only the new tokens: generate started from embeddings
        if self.done or new.shape[1] >= remaining:
            for state in self.live:  # every row reached its own limit (RowTracker finished them): a no-op
                state.finish("length")
            self.embeds = self.mask = self.cache = None  # the KV cache is freed with the cohort's end
            return True
        self.cache = getattr(out, CACHE_FIELD)
        self.embeds = torch.cat([self.embeds, model.language_model.get_input_embeddings()(new).to(self.embeds.dtype)], 1)
        self.mask = torch.cat([self.mask, torch.ones_like(new, dtype=self.mask.dtype)], 1)
        return False


    # --- continuous batching: rows leave and join between slices --------------------------------

    def mergeable(self) -> bool:
        """Paused mid-generation with a KV cache of per-layer key/value tensors (the kind this merges)."""
        layers = getattr(self.cache, "layers", None)
        return not self.done and bool(layers) and all(
            isinstance(getattr(layer, "keys", None), torch.Tensor) and not getattr(layer, "is_sliding", False)
            for layer in layers)

    def _keep(self, rows: list[int], start: int) -> None:
        """Keep only batch rows ``rows`` and sequence positions from ``start`` on."""
        index = torch.tensor(rows, device=self.mask.device)
        self.embeds, self.mask = self.embeds[index, start:], self.mask[index, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
        self.live = [self.live[i] for i in rows]

    def compact(self) -> None:
        """Drop finished rows and the padding columns no row needs any more."""
        rows = [i for i, s in enumerate(self.live) if not s.done]
        start = int((self.mask[rows].sum(0) > 0).nonzero()[0]) if rows else 0
        if rows and (len(rows) < len(self.live) or start > 0):
            self._keep(rows, start)

    @torch.no_grad()
    def absorb(self, other: Cohort) -> None:
        """Take ``other``'s live rows into this batch (both paused and :meth:`mergeable`): the shorter
        sequence is left-padded (mask 0, zero keys and values), then the two are stacked."""
        self.compact()
        other.compact()
        length = max(self.embeds.shape[1], other.embeds.shape[1])
        pads = (length - self.embeds.shape[1], length - other.embeds.shape[1])  # the caches hold one less

        def stack(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:  # dim: the sequence axis
            shaped = [F.pad(t, (0, 0) * (t.dim() - 1 - dim) + (pad, 0)) for t, pad in zip((a, b), pads)]
            return torch.cat(shaped, 0)

        self.embeds, self.mask = stack(self.embeds, other.embeds, 1), stack(self.mask, other.mask, 1)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys, mine.values = stack(mine.keys, theirs.keys, 2), stack(mine.values, theirs.values, 2)
        self.live += other.live
        # finished rows have had their on_finish: a cohort that keeps absorbing arrivals (a busy server)
        # must not keep them, or it grows with every request it ever answered
        self.states = [st for st in (*self.states, *other.states) if not st.done]
        other.embeds = other.mask = other.cache = None
        other.live = []


def generate_rows(model, rows: Sequence[Row]) -> list[RowResult]:
    """Generate for all ``rows`` as one cohort, to the end; results in row order."""
    cohort = Cohort(model, rows)
    cohort.advance()
    return [s.result for s in cohort.states]
