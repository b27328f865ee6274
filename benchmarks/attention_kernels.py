"""The LM's attention kernel while training on the CPU under bf16 autocast (``attention=auto``).

The embedded SmolLM2-135M, one synthetic batch per shape, a training step each (forward, backward,
and for stage 2 a fused AdamW step), the kernels interleaved step by step so machine noise hits all
alike; the median step time per kernel is printed. Shapes: the nano quickstart's stage 1 (8 captions
of ~70 tokens, LM frozen, its linear layers in bf16 as the runner casts them) and stage 2 (2 samples
of ~330 tokens, everything trains). Then accuracy: the logits of one forward under bf16 autocast
against fp32 (same weights, image-like inputs with a large shared offset as the projector makes).

    python benchmarks/attention_kernels.py              # ~2 min on 2 CPU cores
    python benchmarks/attention_kernels.py --rounds 3   # quicker, noisier
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {
    "sdpa (flash)": ("sdpa", lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])),
    "sdpa_math": ("sdpa", lambda: sdpa_kernel([SDPBackend.MATH])),
    "eager": ("eager", contextlib.nullcontext),
}


def load():
    from llavakit.model.config import LMConfig
    from llavakit.model.lm import load_lm

    lm, tokenizer = load_lm(LMConfig(kind="embedded", name_or_path="SmolLM2-135M-Instruct"))
    return lm, tokenizer


def step_times(lm, batch: int, length: int, stage: int, rounds: int) -> dict[str, float]:
    from llavakit.train.precision import frozen_linears_to_bf16

    lm.requires_grad_(stage != 1)
    if stage == 1:
        frozen_linears_to_bf16(lm)
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True) if params else None
    torch.manual_seed(0)
    embeds = torch.randn(batch, length, lm.config.hidden_size, requires_grad=True)

    def step(name: str) -> float:
        impl, context = KERNELS[name]
        lm.set_attn_implementation(impl)
        start = time.perf_counter()
        with context(), torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = lm.model(inputs_embeds=embeds).last_hidden_state
            loss = lm.lm_head(hidden[:, -20:]).float().logsumexp(-1).mean()
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - start

    for name in KERNELS:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in KERNELS}
    for _ in range(rounds):
        for name in KERNELS:
            times[name].append(step(name))
    return {name: statistics.median(v) for name, v in times.items()}


def logit_error(lm, tokenizer) -> dict[str, float]:
    """Mean |logit - fp32 logit| per kernel under bf16 autocast (forward only)."""
    lm.eval()
    torch.manual_seed(0)
    offset = torch.randn(lm.config.hidden_size)
    image = offset / offset.norm() * 186 + torch.randn(4, 49, lm.config.hidden_size) * 3
    ids = tokenizer(["A yellow diamond and a yellow square on a speckled gray background."] * 4,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = torch.cat([image, lm.get_input_embeddings()(ids)], 1)

    def logits(name: str | None) -> torch.Tensor:
        impl, context = KERNELS[name or "sdpa (flash)"]
        lm.set_attn_implementation(impl)
        with torch.no_grad(), context(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name is not None):
            return lm(inputs_embeds=embeds).logits[:, 49:].float()

    reference = logits(None)
    return {name: (logits(name) - reference).abs().mean().item() for name in KERNELS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    from llavakit.train.precision import cpu_has_bf16

    if not cpu_has_bf16():
        raise SystemExit("this CPU has no native bf16: the comparison is about bf16 autocast on the CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    for label, batch, length, stage in (("stage 1 (8 x 70, LM frozen)", 8, 70, 1),
                                         ("stage 2 (2 x 330, full)", 2, 330, 2)):
        times = step_times(load()[0], batch, length, stage, args.rounds)  # a fresh LM: stage 1 casts it
        base = times["sdpa (flash)"]
        print(f"{label}: " + ", ".join(f"{k} {v:.3f} s ({base / v:.2f}x)" for k, v in times.items()), flush=True)
    errors = logit_error(*load())
    print("mean |logit - fp32| under bf16 autocast: " + ", ".join(f"{k} {v:.3f}" for k, v in errors.items()))


if __name__ == "__main__":
    main()
