"""LLaVA-format data: records, datasets, batching (conversations are :mod:`llavakit.conversation`,
images :mod:`llavakit.imaging`).

- :mod:`~llavakit.data.records`: reading JSON / JSONL / parquet / arrow / saved datasets, validating records,
- :mod:`~llavakit.data.dataset`: :class:`LlavaDataset` (validated, tokenized examples + a report),
- :mod:`~llavakit.data.batching`: collator, bad-image accounting, length-grouped sampler,
- :mod:`~llavakit.data.inspect`: the ``llavakit data inspect`` verb.
"""
