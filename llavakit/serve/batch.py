"""One shared ``generate`` call for many requests, each with its own sampling, stops and stream.

:func:`generate_rows` left-pads the rows' prompts into one batch and runs the model's
``generate`` (transformers' KV-cache loop) once. Two hooks make the rows independent:

- :class:`RowTracker` (a ``StoppingCriteria``) sees every new token of every row: it decodes the
  row's text, sends newly safe text to the row's ``on_text`` callback (holding back only a tail
  that could still become a stop string), and marks the row done on EOS, one of *its* stop
  strings, *its* ``max_new_tokens`` or its cancel flag. ``generate`` stops when every row is done.
- :class:`RowSampler` (a ``LogitsProcessor``) picks each row's token itself: first the row's
  logit bias and repetition / frequency / presence penalties, then greedy for temperature 0,
  otherwise temperature + top-k + top-p + min-p sampling from the row's own ``torch.Generator``
  (seeded per request); it leaves only that token finite so the outer greedy step takes it.
  (transformers' processors apply one setting to the whole batch; rows here each have their own.)

Special tokens (``<|im_start|>``, EOS, ...) never reach a row's text: a special token that is a
stop ends the row, any other is counted but not shown.

Used by the server's engine (:mod:`llavakit.serve.engine`), ``llavakit infer`` and ``llavakit chat``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

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


def adjust_logits(logits: torch.Tensor, params: GenParams, prompt: list[int], reply: list[int]) -> torch.Tensor:
    """One row's ``(V,)`` logits after its logit bias and repetition / frequency / presence penalties."""
    logits = logits.float().clone()
    for token, bias in params.logit_bias:
        if 0 <= token < logits.shape[0]:
            logits[token] += bias
    if params.repetition_penalty != 1:
        seen = torch.tensor(sorted(set(prompt) | set(reply)), dtype=torch.long, device=logits.device)
        seen = seen[(seen >= 0) & (seen < logits.shape[0])]
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if reply and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(torch.tensor(reply, device=logits.device), minlength=logits.shape[0])[:logits.shape[0]]
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    return logits


def sample_probs(logits: torch.Tensor, params: GenParams) -> torch.Tensor:
    """``(V,)`` probabilities after temperature, top-k, top-p and min-p (``temperature`` > 0)."""
    logits = logits.float()
    # shifted so the top logit is 0, and T floored where float32 still divides: finite for any T > 0
    probs = torch.softmax((logits - logits.max()) / max(params.temperature, 1e-6), dim=-1)
    if 0 < params.top_k < probs.shape[0]:
        probs[probs < probs.topk(params.top_k).values[-1]] = 0.0
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = (sorted_probs.cumsum(0) - sorted_probs) / sorted_probs.sum() > params.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    if params.min_p > 0:
        probs[probs < params.min_p * probs.max()] = 0.0
    return probs


class RowSampler(LogitsProcessor):
    """Chooses each row's next token with the row's own penalties, sampling settings and generator."""

    def __init__(self, states: list[RowState]):
        self.states = states

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = scores.argmax(dim=-1)
        for i, state in enumerate(self.states):
            params = state.row.params
            if state.done or (params.temperature <= 0 and not params.adjusts_logits):
                continue
            logits = adjust_logits(scores[i], params, state.row.prompt_ids, state.tokens) if params.adjusts_logits \
                else scores[i]
            if params.temperature <= 0:
                chosen[i] = logits.argmax()
                continue
            probs = sample_probs(logits, params)
            chosen[i] = torch.multinomial(probs.cpu(), 1, generator=state.generator).to(chosen.device)[0]
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out


def collate(rows: Sequence[Row], pad_id: int) -> dict:
    """Left-padded ``input_ids`` / ``attention_mask`` and the rows' pixels concatenated in order."""
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in rows])
    mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
    pixels = [r.pixel_values for r in rows if r.pixel_values is not None and len(r.pixel_values)]
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels) if pixels else None}


def generate_rows(model, rows: Sequence[Row]) -> list[RowResult]:
    """Generate for all ``rows`` in one batched ``generate`` call; results in row order.

    Every row's ``on_finish`` is called exactly once (also when ``generate`` raises: then the
    exception propagates after the callbacks of unfinished rows have *not* been called — the
    caller reports the error to them).
    """
    if not rows:
        return []
    eos_ids = set(model.eos_ids())
    special = special_token_ids(model.tokenizer)
    states = [RowState(r, model.tokenizer, stop_strings_for(model, r.params.stop, r.template), eos_ids, special)
              for r in rows]
    for state in states:
        if state.row.cancel.is_set():
            state.finish("cancelled", "")
    live = [s for s in states if not s.done]
    if live:
        batch = collate([s.row for s in live], model.tokenizer.pad_token_id)
        processors = [RowSampler(live)] if any(s.generator is not None or s.row.params.adjusts_logits
                                               for s in live) else []
        model.generate(
            **batch,
            max_new_tokens=max(s.row.params.max_new_tokens for s in live),
            temperature=0.0,
            stop=None,
            stopping_criteria=StoppingCriteriaList([RowTracker(live)]),
            logits_processor=LogitsProcessorList(processors),
        )
        for state in live:  # generate ended at the longest row's limit
            state.finish("length")
    return [s.result for s in states]
