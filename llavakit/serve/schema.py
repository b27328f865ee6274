"""OpenAI chat-completions requests → a validated :class:`ChatRequest`; OpenAI-style errors.

Checked by hand (not by a pydantic model) so that every problem becomes a 4xx with OpenAI's error
shape ``{"error": {"message", "type", "param", "code"}}`` naming the exact field
(``messages[0].content[1].image_url.url``). Parameters llavakit does not implement are refused
unless they carry their neutral value (``n: 1``, ``frequency_penalty: 0``, ...), so nothing a
client asks for is silently ignored; ``user``, ``metadata`` and ``store`` are accepted as labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from llavakit.data.templates import ASSISTANT, USER, Message
from llavakit.errors import LlavakitError
from llavakit.serve.batch import GenParams


class ApiError(LlavakitError):
    """A request the server refuses: HTTP ``status`` + OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class Limits:
    max_tokens_cap: int = 1024  # a request asking for more gets 400
    default_max_tokens: int = 512  # when the request does not say (capped too)
    max_images: int = 4  # image parts per request (whole conversation)
    max_stop: int = 4


@dataclass
class ImagePart:
    url: str  # data: URL, file path / file:// URL, or http(s) URL
    param: str  # where it was in the request, for error messages


@dataclass
class ChatRequest:
    model: str
    turns: list[Message]  # alternating user/assistant, ending with user; images as <image>
    images: list[ImagePart] = field(default_factory=list)  # in the order of the <image> placeholders
    system: str | None = None  # None: the model's configured system prompt
    params: GenParams = field(default_factory=GenParams)
    stream: bool = False
    include_usage: bool = False


_NEUTRAL = {  # accepted only with these values
    "n": lambda v: v in (None, 1),
    "frequency_penalty": lambda v: v in (None, 0),
    "presence_penalty": lambda v: v in (None, 0),
    "logit_bias": lambda v: v in (None, {}),
    "logprobs": lambda v: v in (None, False),
    "top_logprobs": lambda v: v in (None, 0),
    "tools": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: v in (None, []),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "parallel_tool_calls": lambda v: True,
}
_LABELS = {"user", "metadata", "store"}
_KNOWN = {"model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
          "max_completion_tokens", "stop", "seed"}


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise bad(f"{key} must be a number between {lo} and {hi}, got {value!r}", key)
    return float(value)


def _int(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{key} must be an integer, got {value!r}", key)
    return value


def _params(body: dict, limits: Limits) -> GenParams:
    temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0:
        raise bad("top_p must be greater than 0", "top_p")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, key)
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens_cap)
    elif max_tokens < 1:
        raise bad(f"{key} must be at least 1, got {max_tokens}", key)
    elif max_tokens > limits.max_tokens_cap:
        raise bad(f"{key} is {max_tokens} but this server allows at most {limits.max_tokens_cap}", key,
                  "max_tokens_too_large")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of non-empty strings", "stop")
    if len(stops) > limits.max_stop:
        raise bad(f"stop has {len(stops)} strings; at most {limits.max_stop} are allowed", "stop")
    seed = _int(body, "seed")
    if seed is not None and not 0 <= seed < 2**63:
        raise bad(f"seed must be an integer in [0, 2**63), got {seed}", "seed")
    return GenParams(max_tokens, temperature, top_p, tuple(stops), seed)


def _content(content, where: str, role: str, image_token: str, images: list[ImagePart]) -> str:
    if isinstance(content, str):
        pieces = [content]
    elif isinstance(content, list):
        pieces = []
        for j, part in enumerate(content):
            here = f"{where}[{j}]"
            if not isinstance(part, dict):
                raise bad(f"{here} must be an object with a 'type'", here)
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad(f"{here}.text must be a string", f"{here}.text")
                pieces.append(part["text"])
            elif kind == "image_url":
                if role != USER:
                    raise bad(f"{here}: images are only allowed in user messages, not {role}", here)
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                if not isinstance(url, str) or not url:
                    raise bad(f"{here}.image_url.url must be a non-empty string", f"{here}.image_url.url")
                images.append(ImagePart(url, f"{here}.image_url.url"))
                pieces.append(image_token)
            else:
                raise bad(f"{here}: unsupported content part type {kind!r} (supported: text, image_url)",
                          f"{here}.type", "unsupported_content_type")
    else:
        raise bad(f"{where} must be a string or a list of content parts", where)
    for piece in pieces:
        if piece != image_token and image_token in piece:
            raise bad(f"{where}: the text contains the reserved image placeholder {image_token}; "
                      "send images as image_url parts", where)
    return "\n".join(pieces)


def parse_chat_request(raw: bytes, limits: Limits, image_token: str = "<image>") -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body; raise :class:`ApiError` (400) on any problem."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    for key, value in body.items():
        if key in _NEUTRAL and not _NEUTRAL[key](value):
            raise bad(f"parameter {key}={value!r} is not supported by this server", key, "unsupported_parameter")
        if key not in _NEUTRAL and key not in _LABELS and key not in _KNOWN:
            raise bad(f"unknown parameter {key!r}", key, "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    images: list[ImagePart] = []
    systems: list[str] = []
    turns: list[Message] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"{where} must be an object with role and content", where)
        role = msg.get("role")
        if role not in ("system", "developer", USER, ASSISTANT):
            raise bad(f"{where}.role {role!r} is not supported (system, developer, user, assistant)", f"{where}.role")
        text = _content(msg.get("content"), f"{where}.content", role, image_token, images)
        if role in ("system", "developer"):
            if turns:
                raise bad(f"{where}: system messages must come before the conversation", f"{where}.role")
            systems.append(text)
        elif turns and turns[-1].role == role:  # consecutive messages of one role are one turn
            turns[-1] = Message(role, turns[-1].content + "\n" + text)
        else:
            turns.append(Message(role, text))
    if not turns or turns[0].role != USER:
        raise bad("the conversation must start with a user message (after any system messages)", "messages")
    if turns[-1].role != USER:
        raise bad("the last message must be from the user", "messages")
    if len(images) > limits.max_images:
        raise bad(f"too many images: {len(images)} (this server accepts at most {limits.max_images} per request)",
                  "messages", "too_many_images")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options may only hold include_usage", "stream_options")
    return ChatRequest(
        model=model, turns=turns, images=images, system="\n\n".join(systems) if systems else None,
        params=_params(body, limits), stream=stream, include_usage=bool(options.get("include_usage")),
    )
