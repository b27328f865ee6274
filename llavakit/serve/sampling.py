"""Per-row sampling inside one batched ``generate``: each row's logit bias and repetition /
frequency / presence penalties, then greedy or temperature + top-k + top-p + min-p sampling from
the row's own ``torch.Generator``. (transformers' logits processors apply one setting to the whole
batch; rows here each have their own.)
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from llavakit.serve.rows import GenParams, RowState


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
