"""Generation primitives shared by every llavakit model (LLaVA or text-only): transformers'
generate from ``inputs_embeds`` with a KV cache, stop strings, decoding. Requests become batches,
streams and replies in one place: :func:`llavakit.serve.batch.generate_rows` (chat, infer, serve
and eval all go through it).

A class using :class:`EmbedsGeneration` provides ``language_model``, ``tokenizer``, ``processor``,
``embed(input_ids, pixel_values, image_features)`` and ``preprocess(images)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

# generate's KV-cache argument and output field: ``cache`` from transformers 5 (``past_key_values``
# before; the old name warns in 5.x and goes in 5.40) — read from the output class, not a version
CACHE_FIELD = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


class EmbedsGeneration:
    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    def stop_strings(self, extra: Sequence[str] | None = None) -> list[str]:
        stops = [s for s in [self.processor.stop_str, *(extra or [])] if s]
        return list(dict.fromkeys(stops))

    def generation_kwargs(self, max_new_tokens, temperature, top_p, stop, streamer) -> dict:
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids(),
            streamer=streamer,
        )
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        stops = [s for s in self.stop_strings(stop) if s not in self.tokenizer.all_special_tokens]
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        return kwargs

    def eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        stop = self.processor.stop_str
        if stop in self.tokenizer.all_special_tokens:
            ids.add(self.tokenizer.convert_tokens_to_ids(stop))
        return sorted(i for i in ids if i is not None)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        streamer=None,
        **kwargs,
    ) -> torch.Tensor:
        """New token ids ``(B, T)`` (left-padded batches); transformers' generate with a KV cache."""
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.embed(input_ids, pixel_values, image_features)
        gen = self.generation_kwargs(max_new_tokens, temperature, top_p, stop, streamer)
        gen.update(kwargs)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask.to(self.device), **gen)

    @torch.no_grad()
    def generate_from_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor, cache=None,
                             max_new_tokens: int = 256, **kwargs):
        """Greedy ``generate`` from an embedded (left-padded) sequence; with ``cache`` (a KV cache)
        holding all but its last position, it continues an earlier call (the row-level sampling and
        stopping come in ``kwargs``: :mod:`llavakit.serve.batch`)."""
        gen = self.generation_kwargs(max_new_tokens, 0.0, 1.0, None, None)
        gen.update(kwargs)
        if cache is not None:
            gen[CACHE_FIELD] = cache
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **gen)

    def decode(self, new_ids: torch.Tensor, stop: Sequence[str] | None = None) -> str:
        """Text of generated ids, cut at the first stop string (which is not included)."""
        text = self.tokenizer.decode(new_ids, skip_special_tokens=False)
        cut = len(text)
        for s in self.stop_strings(stop) + [t for t in [self.tokenizer.eos_token, self.tokenizer.pad_token] if t]:
            idx = text.find(s)
            if idx != -1:
                cut = min(cut, idx)
        return text[:cut]
