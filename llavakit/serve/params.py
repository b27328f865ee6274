"""Which request parameters the API honours, accepts and ignores, or refuses — one table for
``/v1/chat/completions`` and ``/v1/completions``, following what vLLM's OpenAI server does.

- **honoured**: changes the reply (sampling settings are applied per request by
  :mod:`llavakit.serve.batch`);
- **ignored**: accepted because common clients send it, with no meaning here; the response lists
  the ones a request sent in the ``X-Llavakit-Ignored-Params`` header;
- **neutral only**: accepted with the value that describes what this server does anyway
  (``n: 1``, ``logprobs: false``, ...), refused (400, ``unsupported_parameter``) otherwise, so
  nothing a client asks for is silently dropped;
- anything else: 400 ``unknown_parameter``.

docs/serving.md shows this table; a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from llavakit.serve.errors import bad
from llavakit.serve.rows import GenParams

HONOURED = {
    "model": "the served model's id (404 otherwise)",
    "messages": "chat: text and image_url parts (data:, file or http(s) URLs)",
    "prompt": "completions: a string, a list of one string, or a list of token ids",
    "stream": "server-sent events",
    "stream_options": "include_usage",
    "max_tokens": "capped by the server (--max-tokens-cap)",
    "max_completion_tokens": "as max_tokens",
    "temperature": "0 is greedy",
    "top_p": "nucleus sampling",
    "top_k": "vLLM extra; 0 or -1: off",
    "min_p": "vLLM extra; 0: off",
    "repetition_penalty": "vLLM extra; 1: off; over the prompt and the reply",
    "frequency_penalty": "OpenAI's definition, over the reply so far",
    "presence_penalty": "OpenAI's definition, over the reply so far",
    "logit_bias": "token id → bias in [-100, 100]",
    "stop": "up to 4 strings",
    "seed": "reproducible sampling per request",
    "echo": "completions: the prompt before the completion (chat: false only)",
}
IGNORED = {
    "user": "a label", "metadata": "a label", "store": "nothing is stored",
    "service_tier": "one tier", "reasoning_effort": "no reasoning mode", "verbosity": "no verbosity control",
    "parallel_tool_calls": "no tools", "prediction": "no speculative decoding",
    "modalities": "text out only ([\"text\"]; audio is refused)",
    "skip_special_tokens": "special tokens are never in reply text (false is refused)",
    "spaces_between_special_tokens": "special tokens are never in reply text",
}
NEUTRAL = {  # parameter: (accepted values, what this server does)
    "n": ((None, 1), "one choice per request"),
    "best_of": ((None, 1), "one candidate"),
    "use_beam_search": ((None, False), "no beam search"),
    "logprobs": ((None, False, 0), "no log-probabilities"),
    "top_logprobs": ((None, 0), "no log-probabilities"),
    "tools": ((None, []), "no tool calling"),
    "tool_choice": ((None, "none", "auto"), "no tool calling"),
    "functions": ((None, []), "no tool calling"),
    "function_call": ((None, "none", "auto"), "no tool calling"),
    "response_format": ((None, {"type": "text"}), "text replies only"),
    "audio": ((None,), "text out only"),
    "suffix": ((None, ""), "no insertion"),
    "include_stop_str_in_output": ((None, False), "the stop string is cut"),
}


def check_names(body: dict, endpoint_keys: set[str]) -> list[str]:
    """Refuse unknown and non-neutral parameters; return the ignored ones the request sent."""
    ignored = []
    for key, value in body.items():
        if key in NEUTRAL and not any(type(value) is type(ok) and value == ok for ok in NEUTRAL[key][0]):
            raise bad(f"parameter {key}={value!r} is not supported by this server ({NEUTRAL[key][1]})", key,
                       "unsupported_parameter")
        if key in IGNORED:
            if key == "modalities" and value not in (None, ["text"]):
                raise bad(f"modalities={value!r}: this server answers in text only", key, "unsupported_parameter")
            if key == "skip_special_tokens" and value is False:
                raise bad("skip_special_tokens=false: special tokens are never returned", key,
                           "unsupported_parameter")
            ignored.append(key)
        elif key not in NEUTRAL and key not in endpoint_keys:
            raise bad(f"unknown parameter {key!r}", key, "unknown_parameter")
    return ignored


@dataclass
class Limits:
    max_tokens_cap: int = 1024  # a request asking for more gets 400
    default_max_tokens: int = 512  # when the request does not say (capped too)
    max_images: int = 4  # image parts per request (whole conversation)
    max_stop: int = 4


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise bad(f"{key} must be a number between {lo} and {hi}, got {value!r}", key)
    return float(value)


def _int(body: dict, key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad(f"{key} must be an integer between {lo} and {hi}, got {str(value)[:40]}", key)
    return value


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    value = body.get("logit_bias") or {}
    if not isinstance(value, dict) or len(value) > 300:
        raise bad("logit_bias must be an object of at most 300 token ids → biases", "logit_bias")
    out = []
    for token, bias in value.items():
        if not (str(token).isascii() and str(token).isdigit()) or len(str(token)) > 9:
            raise bad(f"logit_bias: key {str(token)[:20]!r} is not a token id", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad(f"logit_bias[{token}] must be a number in [-100, 100], got {bias!r}", "logit_bias")
        out.append((int(token), float(bias)))
    return tuple(out)


def parse_params(body: dict, limits: Limits, default_max_tokens: int | None = None) -> GenParams:
    """The request's sampling settings, every value checked (400 naming the field)."""
    temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0:
        raise bad("top_p must be greater than 0", "top_p")
    asked = {}
    for key in ("max_tokens", "max_completion_tokens"):  # both checked; max_completion_tokens wins when both sent
        value = _int(body, key, -2**31, 2**31)
        if value is None:
            continue
        if value < 1:
            raise bad(f"{key} must be at least 1, got {value}", key)
        if value > limits.max_tokens_cap:
            raise bad(f"{key} is {value} but this server allows at most {limits.max_tokens_cap}", key,
                      "max_tokens_too_large")
        asked[key] = value
    max_tokens = asked.get("max_completion_tokens", asked.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(default_max_tokens or limits.default_max_tokens, limits.max_tokens_cap)
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of non-empty strings", "stop")
    if len(stops) > limits.max_stop:
        raise bad(f"stop has {len(stops)} strings; at most {limits.max_stop} are allowed", "stop")
    seed = _int(body, "seed", 0, 2**63 - 1)
    top_k = _int(body, "top_k", -1, 2**31) or 0
    return GenParams(
        max_tokens, temperature, top_p, tuple(stops), seed,
        top_k=max(top_k, 0),
        min_p=_number(body, "min_p", 0.0, 1.0, 0.0),
        repetition_penalty=_number(body, "repetition_penalty", 0.01, 10.0, 1.0),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, 0.0),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, 0.0),
        logit_bias=_logit_bias(body),
    )
