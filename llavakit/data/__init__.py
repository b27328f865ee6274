"""LLaVA-format data: templates + exact masking, datasets, images, batching.

- :mod:`~llavakit.data.templates`: conversation templates (``plain``, ``v0``, ``vicuna_v1``, ``chat_template``) as segments,
- :mod:`~llavakit.data.processor`: conversation → ids + labels, ``<image>`` expansion, image placement,
- :mod:`~llavakit.data.tokenizer`: a model's processor without its weights,
- :mod:`~llavakit.data.records`: reading JSON / JSONL / parquet / arrow / saved datasets, validating records,
- :mod:`~llavakit.data.dataset`: :class:`LlavaDataset` (validated, tokenized examples + a report),
- :mod:`~llavakit.data.images`: decoding, colour modes, EXIF, ``square`` / ``pad`` / ``resize``,
- :mod:`~llavakit.data.batching`: collator, bad-image accounting, length-grouped sampler,
- :mod:`~llavakit.data.inspect`: the ``llavakit data inspect`` verb.
"""
