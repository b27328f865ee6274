"""`llavakit export MODEL --to hf-llava --out DIR`: llavakit checkpoint → other formats."""

from __future__ import annotations

import argparse

FORMATS = ("hf-llava",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a llavakit checkpoint dir (or a preset name)")
    parser.add_argument("--to", choices=FORMATS, default="hf-llava",
                        help="hf-llava: transformers LlavaForConditionalGeneration + processor (vLLM's layout)")
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    from transformers import LlavaConfig

    from llavakit.interop.hf_llava import export_hf_llava, vllm_readiness
    from llavakit.model import load_model

    model = load_model(args.model)
    out = export_hf_llava(model, args.out)
    print(f"exported {args.model} to {out} (transformers LlavaForConditionalGeneration)")
    why_not = vllm_readiness(LlavaConfig.from_pretrained(out))
    print(f"vLLM: not loadable — {why_not}" if why_not else
          f"vLLM: vllm serve {out} --chat-template {out}/chat_template.jinja  (see docs/interop.md)")
    return 0
