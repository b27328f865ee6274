"""The shared-generate core: batched rows behave like separate calls, each with its own params."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from llavakit.conversation.templates import Message
from llavakit.serve.batch import Cohort, generate_rows
from llavakit.serve.prompts import PromptEncoder
from llavakit.serve.rows import GenParams, Row, RowState, held_tail, stop_strings_for


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return PromptEncoder(tiny_model)


def make_row(model, encoder, text, image=None, system=None, **params):
    from llavakit.serve.prompts import DEFAULT

    pieces: list[str] = []
    finished = []
    ids = encoder.encode([Message("user", text)], DEFAULT if system is None else system)
    pixels = model.preprocess([image]) if image is not None else None
    row = Row(ids, pixels, GenParams(**params), on_text=pieces.append, on_finish=finished.append)
    return row, pieces, finished


def test_batched_rows_match_single_calls_and_stream_their_text(tiny_model, encoder):
    img = Image.new("RGB", (50, 40), (10, 200, 30))
    specs = [
        ("<image>\nDescribe the picture.", img, dict(max_new_tokens=12)),
        ("hello", None, dict(max_new_tokens=5)),
        ("a much longer question so that the prompts have different lengths", None, dict(max_new_tokens=9)),
        ("What?", None, dict(max_new_tokens=15, temperature=0.9, top_p=0.8, seed=7)),
    ]
    made = [make_row(tiny_model, encoder, t, i, **p) for t, i, p in specs]
    batched = generate_rows(tiny_model, [m[0] for m in made])
    single = [generate_rows(tiny_model, [make_row(tiny_model, encoder, t, i, **p)[0]])[0] for t, i, p in specs]
    for (row, pieces, finished), b, s, (_, _, p) in zip(made, batched, single, specs):
        assert b.text == s.text  # left padding and per-row sampling do not change a row's answer
        assert b.completion_tokens == p["max_new_tokens"] and b.finish_reason == "length"
        assert "".join(pieces) == b.text  # the stream adds up to the answer
        assert finished == [b]  # on_finish exactly once
        assert b.prompt_tokens == len(row.prompt_ids)


def test_a_cohort_paused_every_few_steps_gives_the_same_tokens_and_streams(tiny_model, encoder):
    img = Image.new("RGB", (50, 40), (200, 30, 10))
    specs = [
        ("<image>\nDescribe the picture.", img, dict(max_new_tokens=14)),
        ("hello", None, dict(max_new_tokens=6)),
        ("What?", None, dict(max_new_tokens=11, temperature=0.9, top_p=0.8, seed=3, repetition_penalty=1.3)),
    ]
    whole = generate_rows(tiny_model, [make_row(tiny_model, encoder, t, i, **p)[0] for t, i, p in specs])
    made = [make_row(tiny_model, encoder, t, i, **p) for t, i, p in specs]
    cohort = Cohort(tiny_model, [m[0] for m in made])
    steps = {"n": 0}

    def every_third_step() -> bool:
        steps["n"] += 1
        return steps["n"] % 3 == 0

    slices = 1
    while not cohort.advance(every_third_step):
        slices += 1
    assert slices >= 4  # it really paused and resumed from its KV cache
    for (row, pieces, finished), w in zip(made, whole):
        assert finished == [w]  # same text, finish reason and token counts as one uninterrupted call
        assert "".join(pieces) == w.text
    assert cohort.advance() is True and cohort.cache is None  # done: the cache is released


def test_a_cohort_absorbs_another_mid_generation_and_every_row_keeps_its_answer(tiny_model, encoder):
    img = Image.new("RGB", (50, 40), (200, 30, 10))
    specs = [
        ("<image>\nDescribe the picture.", img, dict(max_new_tokens=16)),
        ("hello", None, dict(max_new_tokens=3)),  # finished before the merge: it leaves the batch
        ("a much longer question so that the prompts differ in length", None,
         dict(max_new_tokens=12, temperature=0.9, seed=5)),
        ("<image>\nWhat?", img, dict(max_new_tokens=7)),
    ]
    alone = [generate_rows(tiny_model, [make_row(tiny_model, encoder, t, i, **p)[0]])[0] for t, i, p in specs]
    made = [make_row(tiny_model, encoder, t, i, **p) for t, i, p in specs]
    first = Cohort(tiny_model, [m[0] for m in made[:2]])
    steps = {"n": 0}

    def after(k):
        def pause() -> bool:
            steps["n"] += 1
            return steps["n"] % k == 0
        return pause

    assert first.advance(after(5)) is False and made[1][2]  # "hello" (3 tokens) is done, the other is not
    second = Cohort(tiny_model, [m[0] for m in made[2:]])
    assert second.advance(lambda: True) is False  # its prefill and first token
    assert first.mergeable() and second.mergeable()
    first.absorb(second)
    assert len(first.live) == 3 and first.embeds.shape[0] == 3  # the finished row left the batch
    assert len(first.states) == 3  # ... and the cohort: a busy server's cohort does not grow with every answer
    assert any(p.requires_grad for p in tiny_model.parameters())  # as loaded: trainable weights ...
    assert first.embeds.grad_fn is None and not first.embeds.requires_grad  # ... but no graph grows with the cohort
    while not first.advance(after(4)):
        pass
    for (_, pieces, finished), want in zip(made, alone):
        assert finished == [want]  # text, finish reason and token counts as when generated alone
        assert "".join(pieces) == want.text


def test_per_row_stop_strings_cut_the_answer(tiny_model, encoder):
    full = generate_rows(tiny_model, [make_row(tiny_model, encoder, "hello there", max_new_tokens=30)[0]])[0]
    stop = full.text[6:8]  # a piece of what greedy decoding produces
    assert stop and stop in full.text
    cut = full.text[: full.text.find(stop)]
    row, pieces, _ = make_row(tiny_model, encoder, "hello there", max_new_tokens=30, stop=(stop,))
    other, other_pieces, _ = make_row(tiny_model, encoder, "hello there", max_new_tokens=30)
    res, res_other = generate_rows(tiny_model, [row, other])
    assert res.text == cut and res.finish_reason == "stop" and stop not in "".join(pieces)
    assert "".join(pieces) == cut
    assert res_other.text == full.text  # the other row does not share the stop


def test_seeded_sampling_is_reproducible(tiny_model, encoder):
    def sample(seed):
        return generate_rows(tiny_model, [make_row(tiny_model, encoder, "hi", max_new_tokens=20,
                                                   temperature=1.0, seed=seed)[0]])[0].text

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(4)}) > 1


def test_cancel_stops_one_row_and_lets_the_others_finish(tiny_model, encoder):
    row, pieces, _ = make_row(tiny_model, encoder, "hello", max_new_tokens=200)
    row.on_text = lambda piece: (pieces.append(piece), row.cancel.set())
    other, _, _ = make_row(tiny_model, encoder, "hello", max_new_tokens=40)
    queued, _, _ = make_row(tiny_model, encoder, "hello", max_new_tokens=40)
    queued.cancel.set()
    res, res_other, res_queued = generate_rows(tiny_model, [row, other, queued])
    assert res.finish_reason == "cancelled" and res.completion_tokens < 200
    assert res_other.finish_reason == "length" and res_other.completion_tokens == 40
    assert res_queued.finish_reason == "cancelled" and res_queued.completion_tokens == 0
    assert row.finished.is_set() and queued.finished.is_set()


def test_held_tail():
    assert held_tail("abc<|im", ["<|im_end|>"]) == 4
    assert held_tail("abc", ["<|im_end|>"]) == 0
    assert held_tail("ab#", ["###", "\n"]) == 1
    assert held_tail("", ["x"]) == 0


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(min_value=0, max_value=259), min_size=1, max_size=40),
       stop=st.text(alphabet="ab\n#", min_size=1, max_size=3))
def test_streamed_pieces_always_add_up_to_the_answer(tiny_model, tokens, stop):
    """Whatever the tokens (invalid UTF-8, specials, stops split across tokens), the pieces sent
    equal the final text, which never contains a stop string."""
    pieces: list[str] = []
    row = Row([1], params=GenParams(max_new_tokens=len(tokens), stop=(stop,)), on_text=pieces.append)
    stops = stop_strings_for(tiny_model, (stop,))
    state = RowState(row, tiny_model.tokenizer, stops, set(tiny_model.eos_ids()))
    for tok in tokens:
        if state.done:
            break
        state.step(tok)
    state.finish("length")
    assert "".join(pieces) == state.result.text
    assert not any(s in state.result.text for s in stops)
