"""Ask an OpenAI-compatible model many questions, parse each reply, cache the results (resumable).

Used for the LLaVA-Bench judge and reference answers and for the ScienceQA judge ensemble.

For every item not yet in the cache the client (:mod:`llavakit.llm_client`: concurrency, HTTP
retries, timeouts) sends its messages. A reply the parser cannot read is asked again up to
``retries`` times, each time with the unreadable reply and a reminder of the required format
appended to the conversation. Then:

- parsed → cached with the value (``parsed``) and the number of attempts;
- still unparseable → cached with ``parsed: null`` and ``error: "unparseable"`` (excluded by the
  caller and counted; a rerun does not ask again — delete the cache to redo);
- the request itself failed for good (HTTP error after the client's retries) → *not* cached,
  returned in ``failed`` with its reason, so a rerun tries it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from llavakit.progress import bar as progress_bar

from llavakit.errors import ConfigError
from llavakit.eval.records import JsonlCache
from llavakit.llm_client import ChatClient, LLMConfig, LLMError


@dataclass
class Ask:
    key: Any  # cache key, e.g. (question_id, repeat)
    messages: list[dict]
    record: dict  # fields stored with the result (ids, category, ...)
    parse: Callable[[str], Any] | None = None  # this item's own parser (else ask_all's)
    reminder: str | None = None  # this item's own format reminder (else ask_all's)


@dataclass
class AskOutcome:
    asked: int = 0  # items sent in this run (the rest came from the cache)
    unparseable: list = field(default_factory=list)  # keys that stayed unparseable
    failed: list = field(default_factory=list)  # (key, reason) of requests that failed for good


def make_client(model: str, base_url: str | None, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                temperature: float = 0.2, max_tokens: int = 512, timeout: float = 120.0) -> ChatClient:
    if not model:
        raise ConfigError("a judge/teacher model name is required (e.g. --judge-model gpt-4o-mini)")
    return ChatClient(LLMConfig(model=model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                                temperature=temperature, max_tokens=max_tokens, timeout=timeout))


def ask_all(
    client: ChatClient,
    asks: Sequence[Ask],
    parse: Callable[[str], Any],
    cache: JsonlCache,
    reminder: str,
    retries: int = 2,
    desc: str = "judge",
    progress: bool = True,
    redo_unparseable: bool = False,
) -> AskOutcome:
    """Send every ask not in ``cache``; store ``{**record, "reply", "parsed", "attempts"}``.

    ``redo_unparseable``: also ask again the items whose cached reply could not be parsed (for
    items that cannot be left out, e.g. reference answers)."""
    if retries < 0:
        raise ConfigError(f"retries: {retries} must be >= 0")
    outcome = AskOutcome()
    pending = [a for a in asks if a.key not in cache
               or (redo_unparseable and cache.get(a.key).get("parsed") is None)]
    outcome.asked = len(pending)
    if not pending:
        return outcome
    convo = {id(a): list(a.messages) for a in pending}
    bar = progress_bar(total=len(pending), desc=desc, unit="req", show=progress)
    for attempt in range(1, retries + 2):
        results = client.run_batch([convo[id(a)] for a in pending])
        again = []
        for ask, res in zip(pending, results):
            if isinstance(res, LLMError):
                outcome.failed.append((ask.key, res.kind))
                bar.update()
                continue
            parsed = (ask.parse or parse)(res.text)
            if parsed is not None:
                cache.add({**ask.record, "reply": res.text, "parsed": parsed, "attempts": attempt})
                bar.update()
            elif attempt <= retries:
                convo[id(ask)] = convo[id(ask)] + [{"role": "assistant", "content": res.text},
                                                   {"role": "user", "content": ask.reminder or reminder}]
                again.append(ask)
            else:
                cache.add({**ask.record, "reply": res.text, "parsed": None, "attempts": attempt,
                           "error": "unparseable"})
                outcome.unparseable.append(ask.key)
                bar.update()
        pending = again
        if not pending:
            break
    bar.close()
    return outcome


def add_client_arguments(parser, role: str, default_temperature: float) -> None:
    """``--{role}-model``, ``--{role}-base-url``, ``--{role}-api-key-env``, ... for one client."""
    parser.add_argument(f"--{role}-model", help=f"{role} model name on the OpenAI-compatible endpoint")
    parser.add_argument(f"--{role}-base-url", default=None,
                        help=f"{role} endpoint, e.g. http://127.0.0.1:8000/v1 (default: api.openai.com)")
    parser.add_argument(f"--{role}-api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the API key (default OPENAI_API_KEY)")
    parser.add_argument(f"--{role}-temperature", type=float, default=default_temperature,
                        help=f"sampling temperature (default {default_temperature})")
    parser.add_argument(f"--{role}-max-tokens", type=int, default=1024, help="reply length limit (default 1024)")


def client_from_args(args, role: str, concurrency: int) -> ChatClient:
    attr = role.replace("-", "_")
    return make_client(
        getattr(args, f"{attr}_model"), getattr(args, f"{attr}_base_url"), getattr(args, f"{attr}_api_key_env"),
        concurrency=concurrency, temperature=getattr(args, f"{attr}_temperature"),
        max_tokens=getattr(args, f"{attr}_max_tokens"),
    )
