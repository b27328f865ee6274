"""Teachers turn jobs (image, type, variant) into question/answer turns. Registry :data:`TEACHERS`:

- ``template``: offline and deterministic, from the image's facts (:mod:`template_teacher`);
  all of ``conversation``, ``detail``, ``reasoning``, ``vqa``;
- ``openai``: any OpenAI-compatible chat endpoint through :mod:`llavakit.llm_client`, prompted with
  the image's symbolic context (:mod:`coco`, :mod:`prompts`) and parsed back (:mod:`parse`);
  ``conversation``, ``detail``, ``reasoning``.

Each teacher gives a job's ``payload`` (everything that determines its output; hashed into the cache
key, so a changed prompt, model or annotation regenerates) and ``run(jobs, emit)`` which calls
``emit(job, outcome)`` once per job, as results arrive.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from llavakit.datagen.coco import CocoImage, symbolic_context
from llavakit.datagen.facts import FactSet
from llavakit.datagen.parse import parse_output
from llavakit.datagen.prompts import DETAIL_INSTRUCTIONS, LLM_TYPES, build_messages
from llavakit.datagen.questions import Vocab
from llavakit.datagen.template_teacher import TEMPLATE_TYPES, VERSION, generate
from llavakit.errors import ConfigError
from llavakit.llm_client import ChatClient, LLMConfig, LLMError


@dataclass(frozen=True)
class Job:
    image: CocoImage
    kind: str
    variant: int
    teacher: str
    key: str = ""


@dataclass
class Outcome:
    status: str  # "ok" | "rejected" | "failed"
    pairs: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None
    detail: str = ""
    raw: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


Emit = Callable[[Job, Outcome], None]


class TemplateTeacher:
    name = "template"
    types = TEMPLATE_TYPES

    def __init__(self, facts: FactSet, seed: int = 0, vqa_questions: int = 5):
        if not facts.colors:
            raise ConfigError("the template teacher writes about llavakit scenes and needs their 'color'/'size' "
                              "attributes, which these instances lack; for real COCO use --teacher openai")
        self.facts = facts
        self.seed = seed
        self.vqa_questions = vqa_questions
        self.vocab = Vocab(list(facts.shapes), list(facts.colors))

    def payload(self, image: CocoImage, kind: str, variant: int) -> dict:
        anns = [{k: a.get(k) for k in ("id", "category_id", "bbox", "color", "size", "area", "occluded",
                                       "occluded_by")} for a in image.annotations]
        return {"teacher": "template", "version": VERSION, "seed": self.seed, "variant": variant,
                "vqa_questions": self.vqa_questions if kind == "vqa" else None,
                "image": [image.width, image.height], "annotations": anns,
                "vocab": [self.vocab.shapes, self.vocab.colors]}

    def run(self, jobs: Sequence[Job], emit: Emit) -> None:
        for job in jobs:
            f = self.facts.images[job.image.id]
            g = generate(job.kind, f, self.vocab, self.seed, job.variant, self.vqa_questions)
            if g.pairs:
                emit(job, Outcome("ok", g.pairs))
            else:
                emit(job, Outcome("rejected", reason="no_facts", detail="the image offers no clear-cut facts"))


def detail_instruction(seed: int, image_id: int, variant: int) -> str:
    return random.Random(f"{seed}/{image_id}/detail-instruction/{variant}").choice(DETAIL_INSTRUCTIONS)


class OpenAITeacher:
    name = "openai"
    types = LLM_TYPES

    def __init__(self, cfg: LLMConfig, categories: dict[int, str], seed: int = 0, connect: bool = True):
        self.cfg = cfg
        self.categories = categories
        self.seed = seed
        # connect=False (merge only): payloads / keys without needing an API key
        self.client: ChatClient | None = ChatClient(cfg) if connect else None

    def messages(self, image: CocoImage, kind: str) -> list[dict]:
        return build_messages(kind, symbolic_context(image, self.categories))

    def payload(self, image: CocoImage, kind: str, variant: int) -> dict:
        payload = {"teacher": "openai", "model": self.cfg.model, "temperature": self.cfg.temperature,
                   "max_tokens": self.cfg.max_tokens, "variant": variant, "messages": self.messages(image, kind)}
        if kind == "detail":  # the record's instruction is drawn with the seed: part of what is cached
            payload["instruction_seed"] = self.seed
        return payload

    def outcome(self, job: Job, result) -> Outcome:
        if isinstance(result, LLMError):
            return Outcome("failed", reason=result.kind, detail=str(result))
        parsed = parse_output(job.kind, result.text, result.finish_reason)
        base = {"raw": result.text, "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens}
        if not parsed.ok:
            return Outcome("rejected", reason=parsed.reason, detail=parsed.detail, **base)
        if job.kind == "detail":
            pairs = [(detail_instruction(self.seed, job.image.id, job.variant), parsed.text)]
        else:
            pairs = parsed.pairs
        return Outcome("ok", pairs, **base)

    async def _run(self, jobs: Sequence[Job], emit: Emit) -> None:
        it = iter(jobs)  # shared by the workers: bounded memory for any number of jobs

        async def worker() -> None:
            for job in it:
                try:
                    result = await self.client.chat(self.messages(job.image, job.kind))
                except LLMError as exc:
                    result = exc
                emit(job, self.outcome(job, result))

        try:
            await asyncio.gather(*(worker() for _ in range(self.cfg.concurrency)))
        finally:
            await self.client.aclose()

    def run(self, jobs: Sequence[Job], emit: Emit) -> None:
        if jobs:
            if self.client is None:
                raise ConfigError("the openai teacher was created without a client (merge only)")
            asyncio.run(self._run(jobs, emit))


TEACHERS = ("template", "openai")

