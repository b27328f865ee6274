"""Conversation → token ids + labels, with each ``<image>`` expanded to the tower's N positions.

Segments from the template are tokenized one by one and concatenated, so labels line up with ids
by construction. Each ``<image>`` placeholder becomes exactly ``num_image_tokens`` copies of the
image token id; the model's forward scatters projected features into those positions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Sequence

from llavakit.data.templates import ASSISTANT, USER, Message, Template, get_template
from llavakit.errors import DataError

IGNORE_INDEX = -100
Placement = Literal["first", "random", "keep"]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int

    def __len__(self) -> int:
        return len(self.input_ids)


def add_image_token(tokenizer, image_token: str = "<image>") -> int:
    """Register ``image_token`` as a special token of ``tokenizer`` (idempotent); return its id."""
    from tokenizers import AddedToken

    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(image_token)


def place_image(messages: Sequence[Message], image_token: str, placement: Placement, rng: random.Random | None):
    """Put the first turn's ``<image>`` first (LLaVA-1.5), first-or-last at random (the paper), or keep it."""
    if placement == "keep" or not messages or image_token not in messages[0].content:
        return list(messages)
    first = messages[0].content
    if first.count(image_token) != 1:
        return list(messages)
    question = first.replace(image_token, "").strip()
    after = placement == "random" and (rng or random).random() < 0.5
    content = f"{question}\n{image_token}" if after else f"{image_token}\n{question}"
    return [Message(messages[0].role, content), *messages[1:]]


class Processor:
    """Tokenizes conversations for one (tokenizer, template, tower) combination."""

    def __init__(
        self,
        tokenizer,
        template: str | Template,
        num_image_tokens: int,
        image_token: str = "<image>",
        system_prompt: str | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_token_id = add_image_token(tokenizer, image_token)
        self.template = (
            template if isinstance(template, Template) else get_template(template, tokenizer, image_token)
        )
        self.num_image_tokens = num_image_tokens
        self.system_prompt = system_prompt
        bos = tokenizer.bos_token_id
        probe = tokenizer("a").input_ids
        self.bos_ids = [bos] if bos is not None and probe and probe[0] == bos else []

    @property
    def stop_str(self) -> str:
        return self.template.stop_str

    def _tokenize(self, text: str) -> list[int]:
        """Text (possibly holding ``<image>``) → ids, each ``<image>`` expanded to N image ids."""
        ids: list[int] = []
        parts = text.split(self.image_token)
        for i, part in enumerate(parts):
            if i:
                ids.extend([self.image_token_id] * self.num_image_tokens)
            if part:
                ids.extend(self.tokenizer(part, add_special_tokens=False).input_ids)
        return ids

    def _start_ids(self, first_text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        return [] if (bos and first_text.startswith(bos)) else list(self.bos_ids)

    def encode(self, messages: Sequence[Message]) -> Encoded:
        """A training sample: ids and labels (IGNORE_INDEX outside assistant answers + stop markers)."""
        segments = self.template.segments(messages, self.system_prompt)
        ids = self._start_ids(segments[0].text if segments else "")
        labels = [IGNORE_INDEX] * len(ids)
        for seg in segments:
            seg_ids = self._tokenize(seg.text)
            if seg.supervised and self.image_token_id in seg_ids:
                raise DataError(f"an assistant turn contains {self.image_token}")
            ids.extend(seg_ids)
            labels.extend(seg_ids if seg.supervised else [IGNORE_INDEX] * len(seg_ids))
        num_images = sum(m.content.count(self.image_token) for m in messages)
        return Encoded(ids, labels, num_images)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Ids of a generation prompt: the conversation so far (ending with a user turn) + the
        assistant's opening, tokenized exactly as in training."""
        segments = self.template.segments(messages, self.system_prompt, add_generation_prompt=True)
        ids = self._start_ids(segments[0].text if segments else "")
        for seg in segments:
            ids.extend(self._tokenize(seg.text))
        return ids


def to_messages(turns: Sequence[dict], record_id: str = "?") -> list[Message]:
    """LLaVA turns (``from``: human/gpt, or user/assistant) → messages; errors name the record."""
    roles = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"record {record_id}: conversations[{i}] is not an object")
        role = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if role not in roles:
            raise DataError(f"record {record_id}: conversations[{i}].from is {role!r} (expected human or gpt)")
        if not isinstance(value, str):
            raise DataError(f"record {record_id}: conversations[{i}].value is not a string")
        out.append(Message(roles[role], value))
    return out
