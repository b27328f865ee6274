"""Conversation → token ids + labels, with each ``<image>`` expanded to the tower's N positions.

Segments from the template are tokenized one by one and concatenated, so labels line up with ids
by construction. Each ``<image>`` placeholder becomes exactly ``num_image_tokens`` copies of the
image token id; the model's forward scatters projected features into those positions.

Interface::

    proc = Processor(tokenizer, "chat_template", num_image_tokens=49)
    enc = proc.encode(messages)          # Encoded(input_ids, labels, num_images); labels are
                                         # IGNORE_INDEX except assistant answers + stop markers
    ids = proc.encode_prompt(messages)   # generation prompt, a prefix of encode(messages + [answer])
    proc.stop_str, proc.image_token_id

``messages`` may start with a ``Message("system", ...)``: it replaces the processor's system prompt
for that conversation. Tokenizers that prepend a space to every piece they tokenize (SentencePiece
"legacy" Llama/Vicuna tokenizers) are detected once; their pieces are tokenized behind a guard
prefix that is verified and removed, so joining pieces never inserts spaces.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Sequence

from llavakit.conversation.templates import ASSISTANT, SYSTEM, USER, Message, Template, get_template
from llavakit.errors import DataError

IGNORE_INDEX = -100
Placement = Literal["first", "random", "keep"]
PLACEMENTS = ("first", "random", "keep")
_GUARD = "\n"


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
    """Put the first turn's ``<image>`` first (LLaVA-1.5), first-or-last at random (the paper), or keep it.

    Only a first user turn holding exactly one ``<image>`` is changed; the question is stripped
    and joined to the image with a newline, as LLaVA does.
    """
    if placement not in PLACEMENTS:
        raise DataError(f"image placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    if placement == "keep" or not messages or messages[0].content.count(image_token) != 1:
        return list(messages)
    question = messages[0].content.replace(image_token, "").strip()
    after = placement == "random" and (rng or random).random() < 0.5
    if not question:
        content = image_token
    else:
        content = f"{question}\n{image_token}" if after else f"{image_token}\n{question}"
    return [Message(messages[0].role, content), *messages[1:]]


def split_system(messages: Sequence[Message], default: str | None) -> tuple[str | None, list[Message]]:
    """A leading system message overrides ``default``; system messages elsewhere are an error."""
    msgs = list(messages)
    system = default
    if msgs and msgs[0].role == SYSTEM:
        system, msgs = msgs[0].content, msgs[1:]
    for i, msg in enumerate(msgs):
        if msg.role == SYSTEM:
            raise DataError(f"turn {i}: a system message may only come first")
    return system, msgs


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
        if num_image_tokens < 1:
            raise DataError(f"num_image_tokens must be at least 1, got {num_image_tokens}")
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
        plain_a = self._raw("a")
        self._guard_ids = self._raw(_GUARD)
        # A tokenizer that encodes "a" differently at the start of a piece than after a newline
        # prepends something (a SentencePiece space) to every piece: tokenize behind the guard.
        self.guarded = self._raw(_GUARD + "a")[len(self._guard_ids):] != plain_a

    @property
    def stop_str(self) -> str:
        return self.template.stop_str

    def _raw(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text as a standalone piece (one batched tokenizer call)."""
        if not texts:
            return []
        if not self.guarded:
            return self.tokenizer(list(texts), add_special_tokens=False).input_ids
        n = len(self._guard_ids)
        out = []
        for text, ids in zip(texts, self.tokenizer([_GUARD + t for t in texts], add_special_tokens=False).input_ids):
            if ids[:n] != self._guard_ids:
                raise DataError(f"tokenizer merged the guard prefix into {text[:30]!r}; cannot tokenize it as a piece")
            out.append(ids[n:])
        return out

    def _tokenize_all(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text (possibly holding ``<image>``) → ids, each ``<image>`` expanded to N image ids."""
        split = [t.split(self.image_token) for t in texts]
        flat = [part for parts in split for part in parts if part]
        ids_iter = iter(self._pieces(flat))
        out = []
        for parts in split:
            ids: list[int] = []
            for i, part in enumerate(parts):
                if i:
                    ids.extend([self.image_token_id] * self.num_image_tokens)
                if part:
                    ids.extend(next(ids_iter))
            out.append(ids)
        return out

    def _tokenize(self, text: str) -> list[int]:
        return self._tokenize_all([text])[0]

    def _start_ids(self, first_text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        if bos and first_text.startswith(bos):
            return []
        if not self.bos_ids and self.template.bos_first and self.tokenizer.bos_token_id is not None:
            return [self.tokenizer.bos_token_id]
        return list(self.bos_ids)

    def encode(self, messages: Sequence[Message]) -> Encoded:
        """A training sample: ids and labels (IGNORE_INDEX outside assistant answers + stop markers)."""
        system, msgs = split_system(messages, self.system_prompt)
        segments = self.template.segments(msgs, system)
        ids = self._start_ids(segments[0].text if segments else "")
        labels = [IGNORE_INDEX] * len(ids)
        for seg, seg_ids in zip(segments, self._tokenize_all([seg.text for seg in segments])):
            if seg.supervised and self.image_token_id in seg_ids:
                raise DataError(f"an assistant turn contains {self.image_token}")
            ids.extend(seg_ids)
            labels.extend(seg_ids if seg.supervised else [IGNORE_INDEX] * len(seg_ids))
        num_images = sum(m.content.count(self.image_token) for m in msgs)
        return Encoded(ids, labels, num_images)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Ids of a generation prompt: the conversation so far (ending with a user turn) + the
        assistant's opening, tokenized exactly as in training."""
        system, msgs = split_system(messages, self.system_prompt)
        segments = self.template.segments(msgs, system, add_generation_prompt=True)
        ids = self._start_ids(segments[0].text if segments else "")
        for seg_ids in self._tokenize_all([seg.text for seg in segments]):
            ids.extend(seg_ids)
        return ids


ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM}


def to_messages(turns: Sequence[dict], record_id: str = "?") -> list[Message]:
    """LLaVA turns (``from``: human/gpt, or user/assistant; ``value``, or ``role``/``content``)
    → messages; errors name the record, the turn and the field."""
    if not isinstance(turns, (list, tuple)):
        raise DataError(f"record {record_id}: conversations is {type(turns).__name__}, expected a list")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"record {record_id}: conversations[{i}] is {type(turn).__name__}, expected an object")
        role_key = "from" if "from" in turn else "role"
        value_key = "value" if "value" in turn else "content"
        role, value = turn.get(role_key), turn.get(value_key)
        if role not in ROLES:
            raise DataError(
                f"record {record_id}: conversations[{i}].{role_key} is {role!r} "
                "(expected human, gpt, user, assistant or system)"
            )
        if value_key not in turn:
            raise DataError(f"record {record_id}: conversations[{i}] has no 'value'")
        if not isinstance(value, str):
            raise DataError(
                f"record {record_id}: conversations[{i}].{value_key} is {type(value).__name__}, expected a string"
            )
        out.append(Message(ROLES[role], value))
    return out
