"""Decode speed of the llavakit wrapper vs bare transformers, in one run on one machine.

    python benchmarks/generate_speed.py [--tokens 128] [--repeats 5]

Rows:
- text-only prompt: `nano` (LlavaModel.generate from inputs_embeds) vs the same SmolLM2-135M
  weights through plain `AutoModelForCausalLM.generate(input_ids)` — alternating, same prompt,
  greedy, a fixed number of new tokens (EOS ignored); target ratio ≥ 0.95.
- image encode latency (EfficientNet-Lite0 + projector, one 224 image),
- time to first token with an image (preprocess + encode + prefill + 1 token).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _decode_rate(fn, tokens: int, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        produced = fn()
        rates.append(produced / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from PIL import Image
    from skimage import data
    from transformers import AutoModelForCausalLM

    from llavakit.conversation.templates import Message
    from llavakit.model import load_model
    from llavakit.model.lm import convert_gguf, embedded_dir
    from llavakit.serve.batch import collate
    from llavakit.serve.rows import Row

    model = load_model("nano")
    bare = AutoModelForCausalLM.from_pretrained(str(convert_gguf(*embedded_dir("SmolLM2-135M-Instruct"))), dtype=torch.float32).eval()
    msgs = [Message("user", "Write a long story about a lighthouse keeper and a storm.")]
    batch = collate([Row(model.processor.encode_prompt(msgs))], model.tokenizer.pad_token_id)
    ids = batch["input_ids"]
    common = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)

    def ours():
        out = model.generate(**batch, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
        return out.shape[1]

    def theirs():
        with torch.no_grad():
            out = bare.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=model.tokenizer.pad_token_id, **common)
        return out.shape[1] - ids.shape[1]

    ours(), theirs()  # warm-up
    ours_rates, theirs_rates = [], []
    for _ in range(args.repeats):  # alternate so drift hits both equally
        ours_rates += _decode_rate(ours, args.tokens, 1)
        theirs_rates += _decode_rate(theirs, args.tokens, 1)

    cat = Image.fromarray(data.chelsea())
    encode_ms, ttft_ms = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            model.encode_images(model.preprocess([cat]))
        encode_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        img_batch = collate([Row(model.processor.encode_prompt([Message("user", "<image>\nWhat is in the picture?")]),
                                 model.preprocess([cat]))], model.tokenizer.pad_token_id)
        model.generate(**img_batch, max_new_tokens=1)
        ttft_ms.append((time.perf_counter() - start) * 1e3)

    med = statistics.median
    print(f"torch threads: {torch.get_num_threads()}, prompt {ids.shape[1]} tokens, {args.tokens} new tokens, {args.repeats} alternating repeats")
    print("| measure | llavakit nano | bare transformers SmolLM2 | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| decode tokens/s (median) | {med(ours_rates):.1f} | {med(theirs_rates):.1f} | {med(ours_rates) / med(theirs_rates):.3f} |")
    print(f"| image encode, 1 image (median ms) | {med(encode_ms):.1f} | – | – |")
    print(f"| time to first token with an image (median ms) | {med(ttft_ms):.1f} | – | – |")


if __name__ == "__main__":
    main()
