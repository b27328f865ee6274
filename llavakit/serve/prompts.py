"""Generation prompts with an optional per-request system prompt, tokenized exactly as in training.

A request (an API call with a ``system`` message, ``llavakit chat --system``) may replace the
model's configured system prompt: the model's :class:`~llavakit.conversation.processor.Processor` takes a
leading ``Message("system", ...)`` for that. :class:`PromptEncoder` adds the lock that makes
tokenizing safe from the API's worker threads.
"""

from __future__ import annotations

import threading
from typing import Sequence

from llavakit.conversation.templates import SYSTEM, Message

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

    @property
    def context_length(self) -> int | None:
        return getattr(getattr(self.model.language_model, "config", None), "max_position_embeddings", None)

    def check_context(self, ids: list[int], max_new_tokens: int, what: str = "the prompt",
                      budget: str = "max_new_tokens") -> None:
        """Refuse a prompt that, with ``max_new_tokens``, does not fit the model's context (chat, infer, API)."""
        from llavakit.errors import LlavakitError

        limit = self.context_length
        if limit and len(ids) + max_new_tokens > limit:
            raise LlavakitError(f"{what} is {len(ids)} tokens and {budget} is {max_new_tokens}: over the "
                                f"model's context of {limit} tokens")

    # a token is rarely over this many characters: a longer text cannot fit, whatever it says
    CHARS_PER_TOKEN_BOUND = 32

    def check_text_size(self, chars: int, what: str = "the prompt") -> None:
        """Refuse, before tokenizing it, a text no context could hold: the tokenizer then never sees more
        than ``CHARS_PER_TOKEN_BOUND`` x context characters (chat, infer, API)."""
        from llavakit.errors import LlavakitError

        limit = self.context_length
        if limit and chars > self.CHARS_PER_TOKEN_BOUND * limit:
            raise LlavakitError(f"{what} is {chars} characters, far over the model's context of {limit} tokens")

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
