"""A request as the generator sees it, and its decoding state.

- :class:`GenParams` — one request's sampling settings; :class:`Row` — its prompt ids, pixels,
  settings and callbacks; :class:`RowResult` — what it got.
- :class:`RowState` — tokens so far, text already streamed, why it finished. Special tokens
  (``<|im_start|>``, EOS, ...) never reach a row's text: a special token that is a stop ends the
  row, any other is counted but not shown. Text is sent as soon as it is safe: only a tail that
  could still become a stop string is held back.
- :class:`RowTracker` (a transformers ``StoppingCriteria``) steps every row's state on every new
  token and reports which rows are done (EOS, one of *its* stops, *its* ``max_new_tokens``, its
  cancel flag).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria

from llavakit.errors import LlavakitError

_SEED_SOURCE = random.SystemRandom()


@dataclass(frozen=True)
class GenParams:
    """Sampling settings of one request (``temperature`` 0 is greedy)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off; else drop tokens below min_p x the top token's probability
    repetition_penalty: float = 1.0  # 1: off; >1 discourages every token of the prompt and the reply so far (CTRL)
    frequency_penalty: float = 0.0  # OpenAI's: logit -= frequency x count in the reply so far
    presence_penalty: float = 0.0  # OpenAI's: logit -= presence if the token is in the reply so far
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise LlavakitError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LlavakitError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LlavakitError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or not 0 <= self.min_p <= 1 or not self.repetition_penalty > 0:
            raise LlavakitError(f"top_k must be >= 0, min_p in [0, 1], repetition_penalty > 0 (got {self.top_k}, "
                                f"{self.min_p}, {self.repetition_penalty})")

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.repetition_penalty != 1 or self.frequency_penalty or self.presence_penalty or self.logit_bias)


@dataclass
class RowResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Row:
    """One prompt to generate for: token ids (``<image>`` already expanded) and its images' pixels."""

    prompt_ids: list[int]
    pixel_values: torch.Tensor | None = None  # (num_images, 3, H, W), in the order of the image tokens
    params: GenParams = field(default_factory=GenParams)
    on_text: Callable[[str], None] | None = None  # newly generated text, as soon as it is safe
    on_finish: Callable[[RowResult], None] | None = None  # called once, the moment the row is done
    template: bool = True  # False: a raw-prompt completion (no template stop marker)
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # set once the result exists


def stop_strings_for(model, extra: Sequence[str] = (), template: bool = True) -> list[str]:
    """The template's stop marker (unless ``template`` is False: a raw completion), the request's
    stops, and the EOS/pad token strings."""
    tok = model.tokenizer
    specials = [tok.convert_ids_to_tokens(i) for i in model.eos_ids()] + [tok.eos_token, tok.pad_token]
    stops = model.stop_strings(list(extra)) if template else list(extra)
    return list(dict.fromkeys(s for s in [*stops, *specials] if s))


def special_token_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (EOS, BOS, pad, ``<|im_start|>``, ...): never reply text."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, tok in added.items() if getattr(tok, "special", False)}


def held_tail(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    longest = max((len(s) for s in stops), default=1) - 1
    for k in range(min(len(text), longest), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0


class RowState:
    """Decoding state of one row: tokens so far, text already sent, and why it finished."""

    def __init__(self, row: Row, tokenizer, stops: list[str], eos_ids: set[int], special_ids: set[int] = frozenset()):
        self.row = row
        self.tokenizer = tokenizer
        self.stops = stops
        self.eos_ids = eos_ids
        self.special_ids = set(special_ids) | set(eos_ids)
        self.tokens: list[int] = []  # every generated token (counted, penalised)
        self.text_tokens: list[int] = []  # those that are text (no special tokens)
        self.sent = ""
        self.result: RowResult | None = None
        self.generator: torch.Generator | None = None
        if row.params.temperature > 0:
            seed = row.params.seed if row.params.seed is not None else _SEED_SOURCE.randrange(2**62)
            self.generator = torch.Generator().manual_seed(seed)

    @property
    def done(self) -> bool:
        return self.result is not None

    def _emit(self, text: str) -> None:
        if text.startswith(self.sent) and len(text) > len(self.sent):
            delta, self.sent = text[len(self.sent):], text
            if self.row.on_text is not None:
                self.row.on_text(delta)

    def finish(self, reason: str, text: str | None = None) -> None:
        if self.done:
            return
        if text is None:
            text = self.tokenizer.decode(self.text_tokens, skip_special_tokens=False)
        self._emit(text)
        self.result = RowResult(text, reason, len(self.row.prompt_ids), len(self.tokens))
        self.row.finished.set()
        if self.row.on_finish is not None:
            self.row.on_finish(self.result)

    def step(self, token: int) -> None:
        if self.row.cancel.is_set():
            self.finish("cancelled", self.sent)
            return
        self.tokens.append(token)
        special = token in self.special_ids
        if not special:
            self.text_tokens.append(token)
        text = self.tokenizer.decode(self.text_tokens, skip_special_tokens=False)
        hits = [i for i in (text.find(s) for s in self.stops) if i != -1]
        if hits or token in self.eos_ids or (special and self.tokenizer.convert_ids_to_tokens(token) in self.stops):
            self.finish("stop", text[: min(hits)] if hits else text)
        elif len(self.tokens) >= self.row.params.max_new_tokens:
            self.finish("length", text)
        else:
            safe = text[: len(text) - held_tail(text, self.stops)]
            self._emit(safe.rstrip("\ufffd"))  # an incomplete UTF-8 sequence may still change


class RowTracker(StoppingCriteria):
    """Per-row streaming and stopping inside one ``generate`` call."""

    def __init__(self, states: list[RowState]):
        self.states = states

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for state, token in zip(self.states, last):
            if not state.done:  # finished rows get pad tokens from generate: ignored
                state.step(token)
        return torch.tensor([s.done for s in self.states], dtype=torch.bool, device=input_ids.device)
