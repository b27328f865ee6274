"""Conversations → token ids, depending on nothing but :mod:`llavakit.errors` (model and data use it).

- :mod:`~llavakit.conversation.templates`: conversation templates (``plain``, ``v0``, ``vicuna_v1``,
  ``chat_template``) as segments, each marked supervised or not,
- :mod:`~llavakit.conversation.processor`: conversation → ids + labels, ``<image>`` expansion, image placement.
"""
