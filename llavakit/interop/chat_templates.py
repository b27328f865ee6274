"""Jinja chat templates for an exported processor that render what llavakit's templates render.

``processor.apply_chat_template`` in transformers takes the standard multimodal messages
(``content: [{"type": "image"}, {"type": "text", "text": ...}]``); the tokenizer templates of
chat-template LMs (SmolLM2's ChatML) expect a string content and fail on a list, and ``v0`` /
``vicuna_v1`` / ``plain`` have no Jinja template at all. The export writes one template per
llavakit template, so that ``apply_chat_template`` → ``processor(text=..., images=...)`` gives the
ids llavakit trained on (``tests/test_interop_templates.py`` checks it id for id):

- every message's content is flattened as the server flattens it (``llavakit/serve/schema.py``):
  parts joined by a newline, each image part one image token;
- a first user turn holding one image gets the image first, ``<image>\\n`` + the question, as
  training and ``llavakit serve`` place it (``conversation.processor.place_image``);
- ``chat_template``: then the tokenizer's own template, unchanged (a model's system prompt is
  inserted as a system message when the conversation has none);
- ``v0`` / ``vicuna_v1`` / ``plain``: the separators of :mod:`llavakit.conversation.templates`, with
  ``bos_token`` first only where llavakit puts a BOS the tokenizer does not add itself.

Written here because the templates are llavakit's own conventions: nothing in transformers
generates them.
"""

from __future__ import annotations

import json

from llavakit.conversation.processor import Processor
from llavakit.conversation.templates import PlainTemplate, SeparatorTemplate


def _literal(text: str) -> str:
    """A Jinja string literal (JSON's escaping is Jinja's)."""
    return json.dumps(text)


def _flatten(image_token: str, system: str | None) -> str:
    """Jinja that sets ``messages`` to string-content messages placed as llavakit places them."""
    tok = _literal(image_token)
    insert_system = (
        f"{{%- if not messages or messages[0]['role'] != 'system' %}}"
        f"{{%- set ns.msgs = [{{'role': 'system', 'content': {_literal(system)}}}] %}}{{%- endif %}}"
        if system is not None else "")
    return (
        "{%- set ns = namespace(msgs=[], first=true) %}" + insert_system +
        "{%- for message in messages %}"
        "{%- if message['content'] is string %}{%- set content = message['content'] %}"
        "{%- else %}{%- set parts = namespace(items=[]) %}"
        "{%- for part in message['content'] %}"
        "{%- if part['type'] in ['image', 'image_url'] %}"
        f"{{%- set parts.items = parts.items + [{tok}] %}}"
        "{%- elif part['type'] == 'text' %}{%- set parts.items = parts.items + [part['text']] %}{%- endif %}"
        "{%- endfor %}{%- set content = parts.items | join('\\n') %}{%- endif %}"
        "{%- if message['role'] == 'user' and ns.first %}{%- set ns.first = false %}"
        f"{{%- if content.split({tok}) | length == 2 %}}"
        f"{{%- set question = content | replace({tok}, '') | trim %}}"
        f"{{%- set content = {tok} + ('\\n' + question if question else '') %}}"
        "{%- endif %}{%- endif %}"
        "{%- set ns.msgs = ns.msgs + [{'role': message['role'], 'content': content}] %}"
        "{%- endfor %}"
        "{%- set messages = ns.msgs %}"
    )


def _bos(processor: Processor) -> str:
    """``{{ bos_token }}`` where llavakit starts with a BOS that the tokenizer does not add itself."""
    tokenizer = processor.tokenizer
    adds = bool(processor.bos_ids)
    return "{{- bos_token }}" if not adds and processor.template.bos_first and tokenizer.bos_token_id is not None else ""


def _separator(t: SeparatorTemplate, system: str | None) -> str:
    default = t.default_system if system is None else system
    user, assistant = (_literal(r + ": ") for r in t.roles)
    return (
        f"{{%- set sys = {_literal(default or '')} %}}"
        "{%- if messages and messages[0]['role'] == 'system' %}{%- set sys = messages[0]['content'] %}"
        "{%- set messages = messages[1:] %}{%- endif %}"
        f"{{%- if sys %}}{{{{- sys + {_literal(t.sep_system)} }}}}{{%- endif %}}"
        "{%- for message in messages %}"
        f"{{%- if message['role'] == 'user' %}}{{{{- {user} + message['content'] + {_literal(t.sep_user)} + {assistant} }}}}"
        f"{{%- else %}}{{{{- message['content'] + {_literal(t.stop_str)} }}}}{{%- endif %}}"
        "{%- endfor %}"
    )


def _plain(t: PlainTemplate) -> str:
    """The image only; a caption after it (supervised in training) with its newline."""
    return (
        "{%- for message in messages %}"
        f"{{%- if message['role'] == 'user' %}}{{{{- {_literal(t.image_token)} }}}}"
        f"{{%- elif message['role'] == 'assistant' %}}{{{{- message['content'] + {_literal(t.stop_str)} }}}}{{%- endif %}}"
        "{%- endfor %}"
    )


def export_chat_template(processor: Processor) -> str:
    """The Jinja chat template of an exported processor for ``processor``'s llavakit template."""
    t = processor.template
    if isinstance(t, PlainTemplate):
        return _bos(processor) + _plain(t)
    if isinstance(t, SeparatorTemplate):
        return _flatten(processor.image_token, None) + _bos(processor) + _separator(t, processor.system_prompt)
    return _flatten(processor.image_token, processor.system_prompt) + processor.tokenizer.chat_template
