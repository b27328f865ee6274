"""The LLaVA composition: frozen vision tower → projector → causal LM over one sequence.

The processor already expanded each ``<image>`` to the tower's N image-token positions, so the
forward is one masked scatter of projected features into the text embeddings. The loss applies the
LM head only at supervised positions: no vocabulary logits for image and prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.conversation.processor import IGNORE_INDEX, Processor, add_image_token
from llavakit.conversation.templates import resolve_template
from llavakit.errors import LlavakitError
from llavakit.model.config import LlavaConfig
from llavakit.model.generation import EmbedsGeneration
from llavakit.model.objects import SnapToObjects
from llavakit.model.projector import SnapToWords, build_projector


class ImageTokenMismatch(LlavakitError, ValueError):
    """The number of image-token positions differs from the number of image features."""


@dataclass
class LlavaOutput:
    loss: torch.Tensor | None
    num_supervised: int
    logits: torch.Tensor | None = None  # only with return_logits=True (tests, scoring)


class LlavaModel(EmbedsGeneration, nn.Module):
    checkpoint_dir = None  # set by from_pretrained: the directory this model was loaded from

    @property
    def _no_split_modules(self) -> list[str]:
        """Blocks kept whole when sharding: the LM's own (and a transformers tower's), so FSDP's
        TRANSFORMER_BASED_WRAP finds the decoder layer of whatever LM this is (accelerate reads
        this attribute when its config names no class)."""
        names: list[str] = []
        for part in (self.language_model, getattr(self.vision_tower, "model", None)):
            names += sorted(getattr(part, "_no_split_modules", None) or [])
        return list(dict.fromkeys(names))

    def __init__(self, config: LlavaConfig, vision_tower, language_model, tokenizer, projector: nn.Module | None = None):
        """Compose the parts. ``config`` is not changed (the model keeps a copy with its template
        resolved); ``tokenizer`` becomes the model's: its image token (and a pad token, if it had
        none) are added."""
        super().__init__()
        config = replace(config, template=resolve_template(config.template, tokenizer))
        self.config = config  # checkpoints record the resolved template name
        self.vision_tower = vision_tower
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.image_token_id = add_image_token(tokenizer, config.image_token)
        lm_dim = language_model.get_input_embeddings().weight.shape[1]
        if projector is None:
            projector = build_projector(config.projector.kind, vision_tower.hidden_size, lm_dim)
            if config.projector.objects:
                projector = SnapToObjects(projector, lm_dim, config.projector.objects, config.projector.object_split)
            elif config.projector.snap:
                projector = SnapToWords(projector, lm_dim)
        self.projector = projector
        self.projector.to(dtype=language_model.dtype)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.processor = self.make_processor()

    def set_template(self, template: str) -> None:
        """Talk with ``template`` from now on (a stage-2 run's model keeps the template it was tuned with)."""
        self.config = replace(self.config, template=resolve_template(template, self.tokenizer))
        self.processor = self.make_processor()

    def make_processor(self, template: str | None = None, system_prompt: str | None = None) -> Processor:
        """A processor for this model's tokenizer and image tokens, with its template and system prompt
        unless others are given (stage 1 trains with ``plain``)."""
        return Processor(self.tokenizer, template or self.config.template, self.num_image_tokens,
                         self.config.image_token, self.config.system_prompt if system_prompt is None else system_prompt)

    # --- pieces -------------------------------------------------------------------------------

    @property
    def num_image_tokens(self) -> int:
        return self.config.projector.objects or self.vision_tower.num_tokens

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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_logits: bool = False) -> LlavaOutput:
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
