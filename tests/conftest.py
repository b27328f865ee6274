"""Shared fixtures. Every test runs offline on the CPU."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny-random preset (random CLIP + random Llama + byte tokenizer). Do not mutate it."""
    from llavakit.model import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def nano_model():
    """The embedded default (EfficientNet-Lite0 + SmolLM2-135M-Instruct), real weights."""
    from llavakit.model import load_model

    return load_model("nano")


@pytest.fixture
def fresh_tiny_model():
    """A tiny-random model a test may change (train, save, ...)."""
    from llavakit.model import load_model

    return load_model("tiny-random")
