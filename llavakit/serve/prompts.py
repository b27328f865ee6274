"""Generation prompts with an optional per-request system prompt, tokenized exactly as in training.

A request (an API call with a ``system`` message, ``llavakit chat --system``) may replace the
model's configured system prompt: the model's :class:`~llavakit.data.processor.Processor` takes a
leading ``Message("system", ...)`` for that. :class:`PromptEncoder` adds the lock that makes
tokenizing safe from the API's worker threads.
"""

from __future__ import annotations

import threading
from typing import Sequence

from llavakit.data.templates import SYSTEM, Message

DEFAULT = object()  # "use the model's configured system prompt"


class PromptEncoder:
    def __init__(self, model):
        self.model = model
        self._lock = threading.Lock()  # fast tokenizers are not safe to use from many threads at once

    def encode(self, messages: Sequence[Message], system=DEFAULT) -> list[int]:
        """Ids of the prompt for ``messages`` (ending with a user turn) + the assistant's opening.

        ``system``: ``DEFAULT`` keeps the model's configured system prompt, a string replaces it.
        Raises :class:`~llavakit.errors.DataError` when the template rejects the conversation.
        """
        msgs = list(messages) if system is DEFAULT else [Message(SYSTEM, system), *messages]
        with self._lock:
            return self.model.processor.encode_prompt(msgs)

    def encode_text(self, text: str) -> list[int]:
        """Ids of a raw prompt (``/v1/completions``): the tokenizer's own special-token rule, no template."""
        with self._lock:
            return list(self.model.tokenizer(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        with self._lock:
            return self.model.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def image_token(self) -> str:
        return self.model.processor.image_token
