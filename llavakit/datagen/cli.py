"""`llavakit datagen`: LLaVA instruction data from COCO-style captions + boxes with a teacher.

    llavakit datagen --captions C.json --instances I.json --types conversation,detail,reasoning \\
        --teacher template --out instruct.json
    llavakit datagen ... --teacher openai --base-url http://localhost:8000/v1 --model NAME
    llavakit datagen captions --captions C.json --out stage1.json     # the stage-1 caption set

See docs/datagen.md for the block format, the cache, resume and sharding.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from llavakit.errors import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("--captions", help="COCO captions JSON (captions_*.json or our scenes' captions.json)")
    parser.add_argument("--instances", help="COCO instances JSON with the boxes (needed by the template teacher)")
    parser.add_argument("--out", help="output LLaVA JSON")
    parser.add_argument("--types", default="conversation,detail,reasoning",
                        help="comma-separated types among conversation, detail, reasoning, vqa; 'type:N' makes N "
                             "variants per image (vqa always comes from the annotations, whatever --teacher)")
    parser.add_argument("--teacher", default="template", help="template (offline) or openai (any compatible server)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phrasing choices")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--shard", default="0/1", help="I/N: run only this share of the jobs (no merge)")
    parser.add_argument("--cache-dir", help="resume cache directory (default: OUT.cache)")
    parser.add_argument("--retry-rejected", action="store_true", help="ask again for outputs rejected before")
    parser.add_argument("--merge-only", action="store_true", help="never call a teacher: merge what the cache holds")
    parser.add_argument("--vqa-questions", type=int, default=5, help="short questions per vqa sample (default 5)")
    llm = parser.add_argument_group("openai teacher")
    llm.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: OpenAI)")
    llm.add_argument("--model", help="model name on that endpoint")
    llm.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    llm.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    llm.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt (default 120)")
    llm.add_argument("--max-retries", type=int, default=6, help="retries on 429/5xx/timeouts (default 6)")
    llm.add_argument("--temperature", type=float, default=0.7)
    llm.add_argument("--max-tokens", type=int, default=1024)
    llm.add_argument("--price-in", type=float, help="USD per 1M prompt tokens (for the cost estimate)")
    llm.add_argument("--price-out", type=float, help="USD per 1M completion tokens")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    sub = parser.add_subparsers(dest="datagen_mode", metavar="{captions}")
    cap = sub.add_parser("captions", help="the stage-1 set: one brief-description pair per image",
                         description="The stage-1 set: one (image, caption) pair per image as a single-turn "
                                     "'describe briefly' instruction.")
    cap.add_argument("--captions", required=True, dest="cap_captions", help="COCO captions JSON")
    cap.add_argument("--out", required=True, dest="cap_out", help="output LLaVA JSON")
    cap.add_argument("--seed", type=int, default=0, dest="cap_seed", help="seed of the caption/instruction choice")
    cap.add_argument("--limit", type=int, dest="cap_limit", help="only the first N images")


def _print_stats(stats: dict) -> None:
    console = Console(stderr=True)
    table = Table(title=f"datagen: {stats['records']} records" + (f" → {stats['out']}" if stats["out"] else
                                                                    f" (shard {stats['shard']}, not merged)"))
    table.add_column("type")
    table.add_column("jobs", justify="right")
    table.add_column("ok", justify="right")
    table.add_column("not in output (reason: count)")
    for kind, counts in stats["per_type"].items():
        other = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k not in ("jobs", "ok"))
        table.add_row(kind, str(counts.get("jobs", 0)), str(counts.get("ok", 0)), other or "-")
    console.print(table)
    for name, usage in stats["usage"].items():
        cost = f", est. cost ${usage['cost_usd']:.4f}" if usage["cost_usd"] is not None else ""
        why = ", ".join(f"{k}: {v}" for k, v in usage["retry_reasons"].items())
        console.print(f"{name}: {usage['requests']} requests, {usage['retries']} retries{f' ({why})' if why else ''}, "
                      f"{usage['failures']} failed, "
                      f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens{cost}")
    for why, info in stats["skipped_images"].items():
        console.print(f"skipped images ({why}): {info['count']}, e.g. ids {info['ids'][:5]}")
    console.print(f"from cache: {stats['from_cache']}, generated now: {stats['generated_now']}, "
                  f"{stats['seconds']} s; stats: {stats['stats_file']}")


def run(args) -> int:
    if args.datagen_mode == "captions":
        from llavakit.datagen.stage1 import build_caption_set

        print(json.dumps(build_caption_set(args.cap_captions, args.cap_out, args.cap_seed, args.cap_limit), indent=2))
        return 0
    from llavakit.datagen.pipeline import DatagenConfig, run_datagen
    from llavakit.llm_client import LLMConfig

    if not args.captions or not args.out:
        raise ConfigError("--captions and --out are required (or use: llavakit datagen captions ...)")
    llm = None
    if args.teacher == "openai" and args.model:
        llm = LLMConfig(model=args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                        concurrency=args.concurrency, timeout=args.timeout, max_retries=args.max_retries,
                        temperature=args.temperature, max_tokens=args.max_tokens,
                        price_in=args.price_in, price_out=args.price_out)
    elif args.teacher != "openai" and (args.model or args.base_url):
        raise ConfigError("--model/--base-url only apply to --teacher openai")
    cfg = DatagenConfig(captions=args.captions, out=args.out, instances=args.instances, types=args.types,
                        teacher=args.teacher, seed=args.seed, limit=args.limit, shard=args.shard,
                        cache_dir=args.cache_dir, retry_rejected=args.retry_rejected, merge_only=args.merge_only,
                        vqa_questions=args.vqa_questions, progress=not args.quiet, llm=llm)
    stats = run_datagen(cfg)
    _print_stats(stats)
    failed = sum(v["count"] for k, v in stats["not_in_output"].items() if k.startswith("failed:"))
    return 1 if failed else 0
