"""llavakit.llm_client against a real local OpenAI-compatible HTTP server (tests/openai_stub.py):
success + usage + cost, 429 then success, timeouts, garbage, non-retryable errors, the concurrency
limit, Retry-After, and that the API key never shows up."""

from __future__ import annotations

import asyncio

import pytest

from llavakit.errors import ConfigError
from llavakit.llm_client import ChatClient, ChatResult, LLMConfig, LLMError
from openai_stub import OpenAIStub

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


class Sleeps:
    """Records backoff delays instead of sleeping."""

    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


def client(stub, sleeps=None, **kw) -> ChatClient:
    return ChatClient(LLMConfig(model="stub-model", base_url=stub.base_url, **kw), sleep=sleeps)


def test_success_usage_and_cost():
    with OpenAIStub(reply=lambda m: "one two three") as stub:
        c = client(stub, price_in=1.0, price_out=2.0)
        seen = []
        results = c.run_batch([MSGS, MSGS], on_result=lambda i, r: seen.append(i))
        assert [r.text for r in results] == ["one two three"] * 2 and sorted(seen) == [0, 1]
        assert all(isinstance(r, ChatResult) and r.finish_reason == "stop" and r.attempts == 1 for r in results)
        body = stub.chat_requests()[0]["body"]
        assert body["model"] == "stub-model" and body["messages"] == MSGS and body["max_tokens"] == 1024
        assert c.usage.requests == 2 and c.usage.prompt_tokens == 8 and c.usage.completion_tokens == 6
        assert c.usage.cost == pytest.approx((8 * 1.0 + 6 * 2.0) / 1e6)
        assert client(stub).usage.cost is None  # no prices, no cost


def test_429_then_success_with_backoff():
    sleeps = Sleeps()
    with OpenAIStub(fail_first=3, fail_status=429) as stub:
        c = client(stub, sleeps, backoff_base=0.5, backoff_max=10)
        [r] = c.run_batch([MSGS])
        assert isinstance(r, ChatResult) and r.attempts == 4
        assert [e["status"] for e in stub.chat_requests()] == [429, 429, 429, 200]
        assert c.usage.retries == 3 and c.usage.failures == 0 and c.usage.retry_reasons == {"http_429": 3}
        # exponential backoff with jitter: each delay within [cap/2, cap], cap = 0.5 * 2**k
        for k, d in enumerate(sleeps.delays):
            assert 0.25 * 2**k <= d <= 0.5 * 2**k


def test_5xx_gives_up_after_max_retries_and_retry_after_is_honoured():
    sleeps = Sleeps()
    with OpenAIStub(fail_first=10, fail_status=503, retry_after=3) as stub:
        c = client(stub, sleeps, max_retries=2, backoff_base=0.01)
        [r] = c.run_batch([MSGS])
        assert isinstance(r, LLMError) and r.kind == "http_503" and r.attempts == 3
        assert len(stub.chat_requests()) == 3 and c.usage.failures == 1
        assert sleeps.delays == [3.0, 3.0]  # Retry-After beats the tiny backoff


def test_timeout_then_success_and_all_timeouts():
    sleeps = Sleeps()
    with OpenAIStub(hang_first=1, hang_seconds=3.0) as stub:
        c = client(stub, sleeps, timeout=0.4)
        [r] = c.run_batch([MSGS])
        assert isinstance(r, ChatResult) and r.attempts == 2 and r.seconds < 2.5
    with OpenAIStub(hang_first=5, hang_seconds=3.0) as stub:
        c = client(stub, sleeps, timeout=0.3, max_retries=1)
        [r] = c.run_batch([MSGS])
        assert isinstance(r, LLMError) and r.kind == "timeout" and r.attempts == 2
        assert c.usage.as_dict()["retry_reasons"] == {"timeout": 1} and c.usage.failures == 1


@pytest.mark.parametrize("mode, kind, text", [("garbage", "bad_response", None), ("wrong_shape", "bad_response", None),
                                              ("empty", None, ""), ("no_choices", None, "")])
def test_bad_replies(mode, kind, text):
    with OpenAIStub(mode=mode) as stub:
        [r] = client(stub, Sleeps()).run_batch([MSGS])
        if kind:
            assert isinstance(r, LLMError) and r.kind == kind
            assert len(stub.chat_requests()) == 1  # not retried
        else:
            assert isinstance(r, ChatResult) and r.text == text


def test_non_retryable_status_fails_at_once_and_key_never_leaks(monkeypatch):
    monkeypatch.setenv("MY_SECRET_KEY", "sk-very-secret-123")
    with OpenAIStub(fail_first=5, fail_status=401) as stub:
        c = ChatClient(LLMConfig(model="m", base_url=stub.base_url, api_key_env="MY_SECRET_KEY"), sleep=Sleeps())
        [r] = c.run_batch([MSGS])
        assert isinstance(r, LLMError) and r.kind == "http_401" and len(stub.chat_requests()) == 1
        assert "MY_SECRET_KEY" in str(r) and "sk-very-secret" not in str(r)
        assert "sk-very-secret" not in repr(c) and "sk-very-secret" not in repr(c.cfg)
        # the key is sent as the bearer token
        assert stub.chat_requests()[0]["headers"]["authorization"] == "Bearer sk-very-secret-123"
    with OpenAIStub(fail_first=5, fail_status=401) as stub:  # a server that quotes the key back
        stub.echo_key = True
        c = ChatClient(LLMConfig(model="m", base_url=stub.base_url, api_key_env="MY_SECRET_KEY"), sleep=Sleeps())
        [r] = c.run_batch([MSGS])
        assert "stub failure 1; key provided: [redacted]" in str(r)
        assert "sk-very-secret" not in str(r) and "sk-ver" not in str(r)


def test_missing_key_for_openai_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        ChatClient(LLMConfig(model="gpt-x", api_key_env="NO_SUCH_KEY_VAR"))
    with pytest.raises(ConfigError, match="concurrency"):
        LLMConfig(model="m", concurrency=0)


def test_concurrency_limit_is_respected():
    with OpenAIStub(latency=0.15) as stub:
        c = client(stub, concurrency=3)
        results = c.run_batch([MSGS] * 9)
        assert all(isinstance(r, ChatResult) for r in results)
        assert stub.max_in_flight == 3
    with OpenAIStub(latency=0.15) as stub:
        client(stub, concurrency=1).run_batch([MSGS] * 3)
        assert stub.max_in_flight == 1


def test_run_batch_inside_a_running_loop_and_async_api():
    with OpenAIStub(reply=lambda m: "ok.") as stub:
        c = client(stub)

        async def inside():
            direct = await c.chat(MSGS)
            batch = c.run_batch([MSGS])  # runs in its own thread + loop
            return direct, batch

        direct, batch = asyncio.run(inside())
        assert direct.text == "ok." and batch[0].text == "ok."
