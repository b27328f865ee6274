"""A shared client for any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp
server, Ollama, ``llavakit serve``), on the official ``openai`` package.

- ``AsyncOpenAI(base_url=...)``; the API key is read from the environment variable named by
  ``api_key_env`` and never logged or stored (servers that need no key get a dummy one);
- at most ``concurrency`` requests in flight (a semaphore); ``timeout`` seconds per attempt;
- retries with exponential backoff and full jitter (``min(backoff_max, backoff_base * 2**k)``,
  scaled by a uniform draw, and never less than a server's ``Retry-After``) on 429, 5xx, 408,
  timeouts and connection errors; other errors (400, 401, 404, ...) fail at once;
- usage totals and, when prices per 1M tokens are given, the estimated cost.

Usage::

    client = ChatClient(LLMConfig(model="gpt-4o-mini", base_url=None, price_in=0.15, price_out=0.6))
    results = client.run_batch([messages1, messages2], on_result=lambda i, r: ...)  # sync
    reply = await client.chat(messages)          # async; raises LLMError after the last retry
    client.usage.prompt_tokens, client.usage.cost

``run_batch`` returns, per request in order, a :class:`ChatResult` or the :class:`LLMError` that
ended it (errors are returned, not raised, so one bad request does not sink a batch).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import openai

from llavakit.errors import ConfigError, LlavakitError

_KEYLIKE = re.compile(r"\b(?:sk|pk|key|api)[-_][A-Za-z0-9*_\-.]{6,}", re.I)


def _redact(text: str, key: str | None) -> str:
    """Server error text without the API key or anything shaped like one (servers echo masked keys)."""
    if key and len(key) >= 4:
        text = text.replace(key, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)

RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx


@dataclass
class LLMConfig:
    model: str
    base_url: str | None = None  # None = api.openai.com
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 60.0  # seconds per attempt
    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    temperature: float = 0.7
    max_tokens: int = 1024
    price_in: float | None = None  # USD per 1M prompt tokens
    price_out: float | None = None  # USD per 1M completion tokens

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("llm.model: a model name is required (e.g. --model gpt-4o-mini)")
        if self.concurrency < 1:
            raise ConfigError(f"llm.concurrency: {self.concurrency} must be >= 1")
        if self.timeout <= 0:
            raise ConfigError(f"llm.timeout: {self.timeout} must be > 0 seconds")
        if self.max_retries < 0:
            raise ConfigError(f"llm.max_retries: {self.max_retries} must be >= 0")

    def api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "")
        if key:
            return key
        if self.api_key_env != LLMConfig.api_key_env:  # named on purpose: an unset variable is a mistake
            raise ConfigError(f"--api-key-env {self.api_key_env}: that environment variable is not set")
        if self.base_url is None:
            raise ConfigError(f"the OpenAI API needs a key: set the environment variable {self.api_key_env} "
                              "(or pass --base-url for a server without keys)")
        return "not-needed"  # local servers (vLLM, llama.cpp, Ollama, llavakit serve) ignore it


class LLMError(LlavakitError):
    """A request failed for good; ``kind`` is a short reason for counting (e.g. ``http_401``)."""

    def __init__(self, kind: str, message: str, attempts: int = 1):
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts


@dataclass
class ChatResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    seconds: float


@dataclass
class Usage:
    requests: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price_in: float | None = None
    price_out: float | None = None
    retry_reasons: Counter = field(default_factory=Counter)  # e.g. {"http_429": 3, "timeout": 1}
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, result: ChatResult) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens

    def retry(self, reason: str) -> None:
        with self._lock:
            self.retries += 1
            self.retry_reasons[reason] += 1

    def fail(self) -> None:
        with self._lock:
            self.failures += 1

    @property
    def cost(self) -> float | None:
        """Estimated USD, or None when no prices were given."""
        if self.price_in is None and self.price_out is None:
            return None
        return (self.prompt_tokens * (self.price_in or 0.0) + self.completion_tokens * (self.price_out or 0.0)) / 1e6

    def as_dict(self) -> dict:
        return {"requests": self.requests, "failures": self.failures, "retries": self.retries,
                "retry_reasons": dict(self.retry_reasons),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": None if self.cost is None else round(self.cost, 6)}


def _retryable(exc: BaseException) -> tuple[bool, str, float | None]:
    """(retry?, reason, server's Retry-After seconds)."""
    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return True, "timeout", None
    if isinstance(exc, openai.APIConnectionError):
        return True, "connection", None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        after = None
        try:
            after = float(exc.response.headers.get("retry-after", ""))
        except (TypeError, ValueError):
            after = None
        return (status in RETRY_STATUS or status >= 500), f"http_{status}", after
    return False, type(exc).__name__, None


class ChatClient:
    """Async chat completions with a concurrency limit, retries and usage accounting."""

    def __init__(self, cfg: LLMConfig, sleep: Callable[[float], object] | None = None):
        self.cfg = cfg
        self.usage = Usage(price_in=cfg.price_in, price_out=cfg.price_out)
        self._key = cfg.api_key()  # read once; never printed
        self._sleep = sleep or asyncio.sleep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._sem: asyncio.Semaphore | None = None

    def __repr__(self) -> str:  # no key in reprs / logs
        return f"ChatClient(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    def _bind(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        """One AsyncOpenAI + semaphore per event loop (httpx pools cannot cross loops)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._sem is None:
            self._loop = loop
            self._client = openai.AsyncOpenAI(api_key=self._key, base_url=self.cfg.base_url,
                                              timeout=self.cfg.timeout, max_retries=0)
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
        return self._client, self._sem

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.cfg.backoff_max, self.cfg.backoff_base * (2 ** attempt))
        delay = random.uniform(cap / 2, cap)
        return max(delay, min(retry_after or 0.0, self.cfg.backoff_max))

    async def _once(self, client: openai.AsyncOpenAI, messages: Sequence[dict], params: dict):
        return await asyncio.wait_for(
            client.chat.completions.create(model=self.cfg.model, messages=list(messages), **params),
            timeout=self.cfg.timeout + 1.0,  # httpx enforces cfg.timeout per read; this bounds the whole call
        )

    async def chat(self, messages: Sequence[dict], **overrides) -> ChatResult:
        """One completion (retried as configured); raises :class:`LLMError` when it fails for good."""
        client, sem = self._bind()
        params = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens, **overrides}
        start = time.perf_counter()
        attempt = 0
        async with sem:
            while True:
                attempt += 1
                try:
                    resp = await self._once(client, messages, params)
                except json.JSONDecodeError as exc:  # a 200 whose body is not JSON
                    self.usage.fail()
                    raise LLMError("bad_response", f"{self.cfg.base_url or 'api.openai.com'}: the reply is not "
                                                   f"valid JSON ({exc})", attempt) from None
                except ValueError as exc:  # e.g. a reply the client cannot validate, or a bad argument
                    self.usage.fail()
                    raise LLMError("bad_response", f"{self.cfg.base_url or 'api.openai.com'}: the request or its "
                                                   f"reply was refused by the client ({type(exc).__name__}: "
                                                   f"{_redact(str(exc), self._key)[:300]})", attempt) from None
                except (asyncio.TimeoutError, openai.APIError) as exc:
                    retry, reason, after = _retryable(exc)
                    if not retry or attempt > self.cfg.max_retries:
                        self.usage.fail()
                        hint = " (check the key in $" + self.cfg.api_key_env + ")" if reason == "http_401" else ""
                        raise LLMError(reason, f"{self.cfg.base_url or 'api.openai.com'}: {reason} after "
                                               f"{attempt} attempt(s): {_redact(str(exc), self._key)[:200]}{hint}",
                                       attempt) from None
                    self.usage.retry(reason)
                    await self._sleep(self._delay(attempt - 1, after))
                    continue
                break
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):
            self.usage.fail()
            raise LLMError("bad_response", f"{self.cfg.base_url or 'api.openai.com'}: the reply is not a chat "
                                           f"completion ({str(resp)[:120]!r})", attempt)
        text, finish = "", None
        if choices:
            text = (choices[0].message.content if choices[0].message else "") or ""
            finish = choices[0].finish_reason
        usage = getattr(resp, "usage", None)
        result = ChatResult(text, finish, int(getattr(usage, "prompt_tokens", 0) or 0),
                            int(getattr(usage, "completion_tokens", 0) or 0), attempt, time.perf_counter() - start)
        self.usage.add(result)
        return result

    async def chat_many(self, requests: Sequence[Sequence[dict]],
                        on_result: Callable[[int, ChatResult | LLMError], None] | None = None,
                        ) -> list[ChatResult | LLMError]:
        """All ``requests`` concurrently (bounded by the semaphore); ``on_result(i, r)`` as each ends."""
        results: list[ChatResult | LLMError | None] = [None] * len(requests)

        async def one(i: int, messages) -> None:
            try:
                r: ChatResult | LLMError = await self.chat(messages)
            except LLMError as exc:
                r = exc
            results[i] = r
            if on_result is not None:
                on_result(i, r)

        await asyncio.gather(*(one(i, m) for i, m in enumerate(requests)))
        return results  # type: ignore[return-value]

    def run_batch(self, requests: Sequence[Sequence[dict]],
                  on_result: Callable[[int, ChatResult | LLMError], None] | None = None,
                  ) -> list[ChatResult | LLMError]:
        """Synchronous :meth:`chat_many` (runs its own event loop, in a thread if one is running)."""
        async def main():
            try:
                return await self.chat_many(requests, on_result)
            finally:
                await self.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        box: dict = {}

        def target() -> None:
            try:
                box["out"] = asyncio.run(main())
            except BaseException as exc:  # re-raised in the caller's thread below
                box["err"] = exc

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if "err" in box:
            raise box["err"]
        return box["out"]
