"""The generation pipeline behind `llavakit datagen`: jobs → teacher → cache → LLaVA JSON + stats.

A job is (image, type, variant). Its cache key is ``{image_id}/{type}/{variant}/{prompt hash}``
where the hash covers everything that determines the output (the teacher's payload). Finished
jobs — accepted or rejected — are appended to the JSONL cache (:mod:`cache`) as they arrive, so a
rerun after kill -9 skips them; failed requests (network, HTTP errors after retries) are not
cached and are retried by the next run. ``--retry-rejected`` re-asks rejected ones.

``--shard i/n`` keeps the jobs whose stable hash of (image, type, variant) is ``i`` mod ``n``;
every shard writes ``shard-i-of-n.jsonl`` into the same cache directory and does not merge. The
merge — the final LLaVA JSON in job order (images in file order, types as given, variants), ids
``{image_id}-{type}-{variant}``, ``<image>`` at the start of the first human turn — is done by an
unsharded run (which finds every job cached; ``--merge-only`` never calls a teacher).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from llavakit.datagen.cache import CacheWriter, read_cache
from llavakit.datagen.coco import read_coco
from llavakit.datagen.jsonio import write_json
from llavakit.datagen.prompts import prompt_hash
from llavakit.datagen.teachers import TEACHERS, Job, OpenAITeacher, Outcome, TemplateTeacher
from llavakit.datagen.template_teacher import TEMPLATE_TYPES
from llavakit.errors import ConfigError
from llavakit.llm_client import LLMConfig
from llavakit.progress import bar as progress_bar

IMAGE_TOKEN = "<image>"


@dataclass
class DatagenConfig:
    captions: str
    out: str
    instances: str | None = None
    types: str = "conversation,detail,reasoning"  # "type" or "type:variants", comma-separated
    teacher: str = "template"
    seed: int = 0
    limit: int | None = None  # first N images
    shard: str = "0/1"
    cache_dir: str | None = None  # default: OUT.cache/
    retry_rejected: bool = False
    merge_only: bool = False
    vqa_questions: int = 5
    fsync_every: float = 1.0
    progress: bool = True
    llm: LLMConfig | None = None

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ConfigError(f"--teacher {self.teacher!r}: known teachers are {', '.join(TEACHERS)}")
        if self.teacher == "openai" and self.llm is None and not self.merge_only:
            raise ConfigError("--teacher openai needs --model (and --base-url for a server other than OpenAI)")
        self.type_list = parse_types(self.types)
        self.shard_index, self.shard_count = parse_shard(self.shard)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be >= 1")
        if not 1 <= self.vqa_questions <= 20:
            raise ConfigError(f"--vqa-questions {self.vqa_questions}: must be 1..20")


def parse_types(text: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, count = part.partition(":")
        if name not in TEMPLATE_TYPES:
            raise ConfigError(f"--types: unknown type {name!r}; known: {', '.join(TEMPLATE_TYPES)}")
        try:
            n = int(count) if count else 1
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--types: {part!r} needs a positive number of variants (e.g. vqa:3)")
        if any(name == k for k, _ in out):
            raise ConfigError(f"--types: {name!r} is listed twice")
        out.append((name, n))
    if not out:
        raise ConfigError("--types: no types given")
    return out


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def in_shard(image_id: int, kind: str, variant: int, index: int, count: int) -> bool:
    if count == 1:
        return True
    h = hashlib.sha256(f"{image_id}/{kind}/{variant}".encode()).digest()
    return int.from_bytes(h[:8], "big") % count == index


def to_llava(job: Job, pairs) -> dict:
    conversations = []
    for i, (q, a) in enumerate(pairs):
        if i == 0 and IMAGE_TOKEN not in q:
            q = f"{IMAGE_TOKEN}\n{q}"
        conversations += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": f"{job.image.id}-{job.kind}-{job.variant}", "image": job.image.file_name, "type": job.kind,
            "conversations": conversations}


@dataclass
class _Tally:
    per_type: dict = field(default_factory=lambda: defaultdict(Counter))
    reasons: dict = field(default_factory=lambda: defaultdict(list))  # "rejected:why" -> keys


def build_jobs(cfg: DatagenConfig):
    coco = read_coco(cfg.captions, cfg.instances)
    images = coco.images[:cfg.limit] if cfg.limit else coco.images
    uses_template = cfg.teacher == "template" or any(k == "vqa" for k, _ in cfg.type_list)
    teachers: dict = {}
    if uses_template:
        if coco.instances is None:
            raise ConfigError("the template teacher (and type vqa) needs --instances: facts come from the boxes")
        teachers["template"] = TemplateTeacher(coco.facts(), cfg.seed, cfg.vqa_questions)
    if cfg.teacher == "openai" and any(k != "vqa" for k, _ in cfg.type_list):
        if cfg.llm is None:  # --merge-only without a model: keys still need the payload
            raise ConfigError("--teacher openai needs --model (the cache keys include it), also with --merge-only")
        teachers["openai"] = OpenAITeacher(cfg.llm, coco.categories, cfg.seed, connect=not cfg.merge_only)
    jobs = []
    for image in images:
        for kind, variants in cfg.type_list:
            name = "template" if cfg.teacher == "template" or kind == "vqa" else "openai"
            teacher = teachers[name]
            for v in range(variants):
                key = f"{image.id}/{kind}/{v}/{prompt_hash(teacher.payload(image, kind, v))}"
                jobs.append(Job(image, kind, v, name, key))
    return coco, images, teachers, jobs


@contextmanager
def exclusive(path: Path, what: str):
    """Hold an advisory lock on ``path`` for the block; a second holder is refused at once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"{what} is being written by another run (lock {path}); wait for it to finish or "
                          "use another --out") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_datagen(cfg: DatagenConfig) -> dict:
    """Generate (resuming from the cache); two runs on one output and shard are refused, not paid twice."""
    out = Path(cfg.out)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out.with_name(out.name + ".cache")
    with exclusive(cache_dir / f".shard-{cfg.shard_index}-of-{cfg.shard_count}.lock", str(out)):
        return _run_datagen(cfg, out, cache_dir)


def _run_datagen(cfg: DatagenConfig, out: Path, cache_dir: Path) -> dict:
    t0 = time.perf_counter()
    coco, images, teachers, jobs = build_jobs(cfg)
    cache = read_cache(cache_dir)

    def done(job: Job) -> bool:
        rec = cache.records.get(job.key)
        return rec is not None and (rec["status"] == "ok" or (rec["status"] == "rejected" and not cfg.retry_rejected))

    mine = [j for j in jobs if in_shard(j.image.id, j.kind, j.variant, cfg.shard_index, cfg.shard_count)]
    cached = [j for j in mine if done(j)]
    pending = [] if cfg.merge_only else [j for j in mine if not done(j)]
    failures: dict[str, tuple[str, str]] = {}
    generated = Counter()
    repaired = 0
    if pending:
        name = "all.jsonl" if cfg.shard_count == 1 else f"shard-{cfg.shard_index}-of-{cfg.shard_count}.jsonl"
        llm = teachers.get("openai")
        bar = progress_bar(total=len(pending), desc=f"datagen ({cfg.teacher})", unit="sample", show=cfg.progress,
                   smoothing=0.05)
        with CacheWriter(cache_dir / name, cfg.fsync_every) as writer:
            repaired = writer.repaired

            def emit(job: Job, oc: Outcome) -> None:
                if oc.status == "failed":
                    failures[job.key] = (oc.reason or "failed", oc.detail)
                else:
                    rec = {"key": job.key, "image_id": job.image.id, "image": job.image.file_name, "type": job.kind,
                           "variant": job.variant, "teacher": job.teacher, "status": oc.status,
                           "reason": oc.reason, "detail": oc.detail, "pairs": [list(p) for p in oc.pairs],
                           "raw": oc.raw, "usage": [oc.prompt_tokens, oc.completion_tokens]}
                    writer.append(rec)
                    cache.records[job.key] = rec
                generated[oc.status] += 1
                bar.update()
                if llm is not None:
                    cost = llm.client.usage.cost
                    bar.set_postfix_str((f"cost=${cost:.4f} " if cost is not None else "")
                                        + f"rejected={generated['rejected']} failed={generated['failed']}",
                                        refresh=False)

            for name_, teacher in teachers.items():
                teacher.run([j for j in pending if j.teacher == name_], emit)
        bar.close()

    tally = _Tally()
    records = []
    for job in (mine if cfg.shard_count > 1 else jobs):
        t = tally.per_type[job.kind]
        t["jobs"] += 1
        rec = cache.records.get(job.key)
        if rec is not None and rec["status"] == "ok":
            t["ok"] += 1
            records.append(to_llava(job, rec["pairs"]))
        elif rec is not None:
            t[f"rejected:{rec['reason']}"] += 1
            tally.reasons[f"rejected:{rec['reason']}"].append(job.key)
        elif job.key in failures:
            t[f"failed:{failures[job.key][0]}"] += 1
            tally.reasons[f"failed:{failures[job.key][0]}"].append(job.key)
        else:
            why = "not run (another shard or --merge-only)" if (cfg.merge_only or cfg.shard_count > 1) else "missing"
            t[f"pending:{why}"] += 1
            tally.reasons[f"pending:{why}"].append(job.key)
    merged = cfg.shard_count == 1
    if merged:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, records)
    usage = {name: t.client.usage.as_dict() for name, t in teachers.items()
             if isinstance(t, OpenAITeacher) and t.client is not None}
    stats = {
        "out": str(out) if merged else None, "records": len(records), "teacher": cfg.teacher,
        "shard": cfg.shard, "images": len(images),
        "skipped_images": {why: {"count": sum(w == why for _, w in coco.skipped),
                                 "ids": [i for i, w in coco.skipped if w == why][:100]}
                           for why in sorted({w for _, w in coco.skipped})},
        "jobs": len(mine), "from_cache": len(cached),
        "generated_now": dict(generated),
        "per_type": {k: dict(v) for k, v in tally.per_type.items()},
        "not_in_output": {why: {"count": len(keys), "keys": keys[:100]}  # the first 100 keys
                          for why, keys in tally.reasons.items()},
        "failure_details": {k: d for k, (_, d) in list(failures.items())[:20]},
        "cache": {"dir": str(cache_dir), "files": cache.files, "torn_lines_skipped": cache.torn,
                  "duplicate_keys": cache.duplicates, "torn_bytes_repaired": repaired},
        "usage": usage, "seconds": round(time.perf_counter() - t0, 2),
    }
    stats_path = out.with_name(out.stem + ".stats.json") if merged else \
        cache_dir / f"stats-shard-{cfg.shard_index}-of-{cfg.shard_count}.json"
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(stats_path, stats)
    stats["stats_file"] = str(stats_path)
    return stats
