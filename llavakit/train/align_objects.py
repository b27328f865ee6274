"""The word tables of ``projector.objects`` (:class:`~llavakit.model.objects.SnapToObjects`), made by
``llavakit align`` from the same annotations and LM embeddings as the snap table."""

from __future__ import annotations

from statistics import median

import torch

from llavakit.errors import DataError
from llavakit.model.objects import HORIZONTAL, VERTICAL


def _word_vector(word: str, tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    ids = tokenizer(word if word == "," else " " + word, add_special_tokens=False)["input_ids"]
    return embeddings[ids].float().mean(0)


def size_cell_counts(images, by_image, size_field: str, centres_of) -> dict[str, float]:
    """Per size word (the annotations' ``size_field``) the median count of grid cells whose centre
    falls inside an object's box (at least 1). ``centres_of(image)`` gives the cell centres."""
    from llavakit.train.align_boxes import inside

    counts: dict[str, list[int]] = {}
    for im in images:
        centres = centres_of(im)
        for a in by_image[int(im["id"])]:
            word = a.get(size_field)
            if word in (None, ""):
                continue
            counts.setdefault(str(word), []).append(max(1, sum(inside(p, a["bbox"]) for p in centres)))
    return {word: float(median(v)) for word, v in sorted(counts.items())}


def object_buffers(keys: list[tuple[str, ...]], background: str, sizes: dict[str, float], tokenizer,
                   embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """``words``, ``key_words``, ``size_words``, ``size_cells``, ``special`` for ``keys`` (the snap
    table's keys, in its order). Every word is one row of ``words``: the mean embedding of its tokens."""
    vocab: list[str] = []

    def row(word: str) -> int:
        if word not in vocab:
            vocab.append(word)
        return vocab.index(word)

    width = max(len(k) for k in keys)
    key_words = torch.tensor([[row(w) for w in k] + [-1] * (width - len(k)) for k in keys], dtype=torch.long)
    special = torch.tensor([row(background), row(","), *(row(w) for w in (*VERTICAL, *HORIZONTAL))])
    if any(k[0] == background and len(k) > 1 for k in keys):
        raise DataError(f"align: a key starts with the background word {background!r}: {keys}")
    size_words = torch.tensor([row(w) for w in sizes], dtype=torch.long)
    size_cells = torch.tensor(list(sizes.values()), dtype=torch.float32)
    words = torch.stack([_word_vector(w, tokenizer, embeddings) for w in vocab])
    return {"words": words, "key_words": key_words, "size_words": size_words, "size_cells": size_cells,
            "special": special}
