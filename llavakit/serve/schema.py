"""OpenAI requests → a validated :class:`ChatRequest` or :class:`CompletionRequest`.

Checked by hand (not by a pydantic model) so that every problem becomes a 4xx with OpenAI's error
shape ``{"error": {"message", "type", "param", "code"}}`` naming the exact field
(``messages[0].content[1].image_url.url``). Which parameters are honoured, accepted and ignored,
or refused is :mod:`llavakit.serve.params`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from llavakit.conversation.processor import place_image
from llavakit.conversation.templates import ASSISTANT, USER, Message
from llavakit.serve.errors import ApiError, bad  # noqa: F401  (re-exported: the API's error type)
from llavakit.serve.params import Limits, check_names, parse_params  # noqa: F401  (Limits re-exported)
from llavakit.serve.rows import GenParams


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
    ignored: list[str] = field(default_factory=list)  # parameters accepted and ignored (response header)


@dataclass
class CompletionRequest:
    model: str
    prompt: str | list[int]  # text, or token ids
    params: GenParams = field(default_factory=GenParams)
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    ignored: list[str] = field(default_factory=list)


_CHAT_KEYS = {"model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
              "max_completion_tokens", "stop", "seed", "top_k", "min_p", "repetition_penalty", "frequency_penalty",
              "presence_penalty", "logit_bias"}
_COMPLETION_KEYS = (_CHAT_KEYS - {"messages", "max_completion_tokens"}) | {"prompt", "echo"}


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


MAX_INT_DIGITS = 100  # far beyond any count or seed; Python itself refuses 4300+ digits, and slowly


class _LongInteger(ValueError):
    pass


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _LongInteger(f"the request body holds an integer of {len(text.lstrip('-'))} digits; at most "
                           f"{MAX_INT_DIGITS} are accepted")
    return int(text)


def _body(raw: bytes, keys: set[str]) -> tuple[dict, list[str]]:
    try:
        body = json.loads(raw, parse_int=_int)
    except _LongInteger as exc:
        raise bad(str(exc), code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError
        raise bad(f"the request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None
    except RecursionError:
        raise bad("the request body is nested too deeply", code="invalid_json") from None
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # a lone surrogate (\ud800) cannot be text
    except UnicodeError:
        raise bad("the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text",
                  code="invalid_json") from None
    except RecursionError:
        raise bad("the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    ignored = check_names(body, keys)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad("model must be a non-empty string", "model")
    return body, ignored


def _streaming(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options may only hold include_usage", "stream_options")
    return stream, bool(options.get("include_usage"))


def parse_completion_request(raw: bytes, limits: Limits) -> CompletionRequest:
    """Validate a ``POST /v1/completions`` body (a text prompt; no images); 400 on any problem."""
    body, ignored = _body(raw, _COMPLETION_KEYS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    ids = isinstance(prompt, list) and prompt and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in prompt)
    if not (isinstance(prompt, str) and prompt) and not ids:
        raise bad("prompt must be a non-empty string, a list of one string, or a list of token ids "
                  "(one prompt per request)", "prompt")
    echo = body.get("echo") or False
    if not isinstance(echo, bool):
        raise bad("echo must be true or false", "echo")
    stream, usage = _streaming(body)
    return CompletionRequest(body["model"], prompt, parse_params(body, limits, default_max_tokens=16), stream, usage,
                             echo, ignored)


def parse_chat_request(raw: bytes, limits: Limits, image_token: str = "<image>",
                       image_placement: str = "first") -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body; raise :class:`ApiError` (400) on any problem.

    ``image_placement`` ``first`` (the default, as training places it) moves a first user turn's
    single image before its text, whatever the order of the parts (clients such as lmms-eval send
    text, then image); ``keep`` keeps the client's order."""
    body, ignored = _body(raw, _CHAT_KEYS | {"echo"})
    if body.get("echo"):
        raise bad("echo is a /v1/completions parameter", "echo", "unsupported_parameter")
    model = body["model"]
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
    turns = place_image(turns, image_token, image_placement, None)
    stream, usage = _streaming(body)
    return ChatRequest(
        model=model, turns=turns, images=images, system="\n\n".join(systems) if systems else None,
        params=parse_params(body, limits), stream=stream, include_usage=usage, ignored=ignored,
    )
