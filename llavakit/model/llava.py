"""The LLaVA composition: frozen vision tower → projector → causal LM over one sequence.

The processor already expanded each ``<image>`` to the tower's N image-token positions, so the
forward is one masked scatter of projected features into the text embeddings. The loss applies the
LM head only at supervised positions: no vocabulary logits for image and prompt tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.data.processor import IGNORE_INDEX, Processor, add_image_token
from llavakit.errors import LlavakitError
from llavakit.model.config import LlavaConfig
from llavakit.model.projector import build_projector


class ImageTokenMismatch(LlavakitError, ValueError):
    """The number of image-token positions differs from the number of image features."""


@dataclass
class LlavaOutput:
    loss: torch.Tensor | None
    num_supervised: int
    logits: torch.Tensor | None = None  # only with return_logits=True (tests, scoring)


class LlavaModel(nn.Module):
    def __init__(self, config: LlavaConfig, vision_tower, language_model, tokenizer, projector: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.image_token_id = add_image_token(tokenizer, config.image_token)
        lm_dim = language_model.get_input_embeddings().weight.shape[1]
        self.projector = projector or build_projector(config.projector.kind, vision_tower.hidden_size, lm_dim)
        self.projector.to(dtype=language_model.dtype)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.processor = Processor(
            tokenizer, config.template, vision_tower.num_tokens, config.image_token, config.system_prompt
        )

    # --- pieces -------------------------------------------------------------------------------

    @property
    def num_image_tokens(self) -> int:
        return self.vision_tower.num_tokens

    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    def preprocess(self, images) -> torch.Tensor:
        return self.vision_tower.preprocess(images)

    def encode_images(self, pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None):
        """Projected image features ``(num_images, N, lm_dim)`` from pixels or cached tower features."""
        if image_features is None:
            if pixel_values is None:
                return None
            image_features = self.vision_tower(pixel_values.to(self.vision_tower_device))
        return self.projector(image_features.to(device=self.device, dtype=self.dtype))

    @property
    def vision_tower_device(self) -> torch.device:
        return next(self.vision_tower.parameters()).device

    def embed(self, input_ids: torch.Tensor, pixel_values=None, image_features=None) -> torch.Tensor:
        """Text embeddings with projected image features scattered into the image-token positions."""
        is_image = input_ids == self.image_token_id
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        projected = self.encode_images(pixel_values, image_features)
        positions = int(is_image.sum())
        count = 0 if projected is None else projected.shape[0] * projected.shape[1]
        if positions != count:
            n_img = 0 if projected is None else projected.shape[0]
            raise ImageTokenMismatch(
                f"the input has {positions} image-token positions but {n_img} image(s) x "
                f"{self.num_image_tokens} tokens = {count} image features"
            )
        if count:
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), projected.to(embeds.dtype))
        return embeds

    # --- training forward ---------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> LlavaOutput:
        embeds = self.embed(input_ids, pixel_values, image_features)
        decoder = self.language_model.get_decoder()
        hidden = decoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
        head = self.language_model.get_output_embeddings()
        logits = head(hidden) if return_logits else None
        if labels is None:
            return LlavaOutput(None, 0, logits)
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        n = int(supervised.sum())
        if n == 0:  # keep the graph connected so DDP / accumulation still see every parameter
            return LlavaOutput(hidden.sum() * 0.0, 0, logits)
        picked = head(hidden[:, :-1][supervised])  # logits only where a label exists
        loss = F.cross_entropy(picked.float(), targets[supervised])
        return LlavaOutput(loss, n, logits)

    # --- generation ---------------------------------------------------------------------------

    def stop_strings(self, extra: Sequence[str] | None = None) -> list[str]:
        stops = [s for s in [self.processor.stop_str, *(extra or [])] if s]
        return list(dict.fromkeys(stops))

    def _gen_kwargs(self, max_new_tokens, temperature, top_p, stop, streamer) -> dict:
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self._eos_ids(),
            streamer=streamer,
        )
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        stops = [s for s in self.stop_strings(stop) if s not in self.tokenizer.all_special_tokens]
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        return kwargs

    def _eos_ids(self) -> list[int]:
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
        gen = self._gen_kwargs(max_new_tokens, temperature, top_p, stop, streamer)
        gen.update(kwargs)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask.to(self.device), **gen)

    def decode(self, new_ids: torch.Tensor, stop: Sequence[str] | None = None) -> str:
        """Text of generated ids, cut at the first stop string (which is not included)."""
        text = self.tokenizer.decode(new_ids, skip_special_tokens=False)
        cut = len(text)
        for s in self.stop_strings(stop) + [t for t in [self.tokenizer.eos_token, self.tokenizer.pad_token] if t]:
            idx = text.find(s)
            if idx != -1:
                cut = min(cut, idx)
        return text[:cut]

    # --- conveniences for chat / serving ------------------------------------------------------

    def prepare(self, conversations: Sequence[Sequence], images: Sequence[Sequence] = ()) -> dict:
        """Prompts (lists of :class:`Message`) + their images → a left-padded generation batch."""
        prompts = [self.processor.encode_prompt(msgs) for msgs in conversations]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        flat = [img for per_sample in images for img in per_sample]
        pixels = self.preprocess(flat) if flat else None
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}

    def answer(self, messages: Sequence, images: Sequence = (), **gen) -> str:
        """One reply to a conversation ending with a user turn."""
        batch = self.prepare([messages], [list(images)])
        new = self.generate(**batch, **gen)
        return self.decode(new[0], gen.get("stop"))

    def stream(self, messages: Sequence, images: Sequence = (), **gen) -> Iterator[str]:
        """Yield text pieces of one reply as they are generated (stop strings cut off)."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=False)
        batch = self.prepare([messages], [list(images)])
        errors: list[BaseException] = []

        def work():
            try:
                self.generate(**batch, streamer=streamer, **gen)
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        stops = self.stop_strings(gen.get("stop")) + [t for t in [self.tokenizer.eos_token] if t]
        yield from cut_stream(streamer, stops)
        thread.join()
        if errors:
            raise errors[0]


def cut_stream(pieces, stops: Sequence[str]) -> Iterator[str]:
    """Pass text pieces through, holding back what might be the start of a stop string."""
    held = ""
    hold = max((len(s) for s in stops), default=1) - 1
    for piece in pieces:
        held += piece
        hits = [held.find(s) for s in stops if s in held]
        if hits:
            if min(hits):
                yield held[: min(hits)]
            for _ in pieces:  # drain so the producer thread can finish
                pass
            return
        if len(held) > hold:
            cut = len(held) - hold
            yield held[:cut]
            held = held[cut:]
    if held:
        yield held
