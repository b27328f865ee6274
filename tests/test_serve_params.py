"""The API's parameter policy (honoured / accepted-and-ignored / refused), per-row sampling settings,
special tokens kept out of text, and /v1/completions — driven by the official `openai` client."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest
import torch

from llavakit.conversation.templates import Message
from llavakit.serve.batch import generate_rows
from llavakit.serve.params import HONOURED, IGNORED, NEUTRAL
from llavakit.serve.prompts import PromptEncoder
from llavakit.serve.rows import GenParams, Row
from llavakit.serve.sampling import adjust_logits, sample_probs
from tests.test_serve_api import MODEL, client, running

HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def server(tiny_model):
    with running(tiny_model) as srv:
        yield srv


def chat_ids(model) -> list[int]:
    return PromptEncoder(model).encode([Message("user", "Hello there")])


# --- the arithmetic, on logits ------------------------------------------------------------------

def test_penalties_and_bias_follow_their_definitions():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = adjust_logits(logits, GenParams(repetition_penalty=2.0), prompt=[0], reply=[1])
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]  # positive / penalty, negative x penalty, unseen unchanged
    out = adjust_logits(logits, GenParams(frequency_penalty=0.5, presence_penalty=1.0), prompt=[3], reply=[2, 2, 0])
    assert out.tolist() == pytest.approx([2.0 - 0.5 - 1.0, -2.0, 1.0 - 1.0 - 1.0, 0.5])  # prompt tokens not counted
    out = adjust_logits(logits, GenParams(logit_bias=((1, 100.0), (99, 5.0))), prompt=[], reply=[])
    assert out[1] == 98.0 and out.shape == logits.shape  # an id outside the vocabulary is ignored
    assert logits.tolist() == [2.0, -2.0, 1.0, 0.5]  # the input is not modified


def test_top_k_and_min_p_keep_only_the_likely_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert (sample_probs(logits, GenParams(temperature=1.0, top_k=2)) > 0).tolist() == [True, True, False, False]
    assert (sample_probs(logits, GenParams(temperature=1.0, min_p=0.5)) > 0).tolist() == [True, True, False, False]
    assert (sample_probs(logits, GenParams(temperature=1.0, top_k=3, top_p=0.6)) > 0).tolist() == [
        True, True, False, False]


def test_special_tokens_never_reach_the_text(tiny_model):
    im_start = tiny_model.tokenizer.convert_tokens_to_ids("<|im_start|>")
    row = Row(chat_ids(tiny_model), None, GenParams(6, logit_bias=((im_start, 100.0),)))
    result = generate_rows(tiny_model, [row])[0]
    assert result.text == "" and result.completion_tokens == 6 and result.finish_reason == "length"
    im_end = tiny_model.tokenizer.convert_tokens_to_ids("<|im_end|>")  # the template's stop: ends the row
    result = generate_rows(tiny_model, [Row(chat_ids(tiny_model), None, GenParams(6, logit_bias=((im_end, 100.0),)))])[0]
    assert result.text == "" and result.finish_reason == "stop" and result.completion_tokens == 1


# --- through the official client ----------------------------------------------------------------

def test_honoured_parameters_reach_the_sampler(server, tiny_model):
    c = client(server)
    h = tiny_model.tokenizer.convert_tokens_to_ids("h")
    forced = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0,
                                       logit_bias={str(h): 100})
    assert forced.choices[0].message.content == "hhhhh"
    greedy = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    for extra in ({"top_k": 1}, {"min_p": 1.0}):  # sampling that can only pick the top token = greedy
        resp = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=1.0, seed=3,
                                         extra_body=extra)
        assert resp.choices[0].message.content == greedy.choices[0].message.content, extra
    settings = dict(frequency_penalty=1.5, presence_penalty=0.5)
    resp = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0,
                                     extra_body={"repetition_penalty": 1.3}, **settings)
    want = generate_rows(tiny_model, [Row(chat_ids(tiny_model), None,
                                          GenParams(8, repetition_penalty=1.3, **settings))])[0]
    assert resp.choices[0].message.content == want.text


def test_ignored_parameters_are_accepted_and_named_in_a_header(server):
    raw = client(server).chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=2, user="u1", metadata={"k": "v"}, store=False,
        service_tier="auto", reasoning_effort="low", modalities=["text"],
        prediction={"type": "content", "content": "x"})
    named = set(raw.headers["x-llavakit-ignored-params"].split(","))
    assert named == {"user", "metadata", "store", "service_tier", "reasoning_effort", "modalities", "prediction"}
    answer = raw.parse()  # answered as usual (temperature 1, unseeded: it may stop early)
    assert answer.choices[0].finish_reason in ("length", "stop") and answer.usage.completion_tokens <= 2
    plain = client(server).chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert "x-llavakit-ignored-params" not in plain.headers


@pytest.mark.parametrize("kwargs, needle", [
    ({"n": 2}, "n=2 is not supported"),
    ({"modalities": ["text", "audio"]}, "text only"),
    ({"logprobs": True}, "logprobs=True"),
    ({"extra_body": {"best_of": 3}}, "best_of=3"),
    ({"extra_body": {"top_k": -5}}, "top_k must be an integer between -1"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty must be a number"),
    ({"logit_bias": {"x": 1}}, "not a token id"),
    ({"logit_bias": {"\u00b2": 1}}, "not a token id"),  # "²".isdigit() is True
    ({"extra_body": {"echo": True}}, "echo is a /v1/completions parameter"),
    ({"extra_body": {"no_such": 1}}, "unknown parameter 'no_such'"),
])
def test_refused_parameters_name_themselves(server, kwargs, needle):
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, **kwargs)
    assert needle in info.value.body["message"]


def test_completions_use_the_raw_prompt(server, tiny_model):
    c = client(server)
    resp = c.completions.create(model=MODEL, prompt="The cat", max_tokens=6, temperature=0)
    ids = tiny_model.tokenizer("The cat")["input_ids"]
    want = generate_rows(tiny_model, [Row(ids, None, GenParams(6))])[0]
    assert resp.object == "text_completion" and resp.choices[0].text == want.text
    assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens == 6
    assert c.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0).choices[0].text == want.text
    echoed = c.completions.create(model=MODEL, prompt="The cat", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "The cat" + want.text
    chunks = list(c.completions.create(model=MODEL, prompt="The cat", max_tokens=6, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want.text
    assert chunks[-1].usage.completion_tokens == 6
    assert c.completions.create(model=MODEL, prompt="x").usage.completion_tokens <= 16  # OpenAI's default


@pytest.mark.parametrize("kwargs, needle", [
    ({"prompt": ""}, "prompt must be a non-empty string"),
    ({"prompt": ["a", "b"]}, "one prompt per request"),
    ({"prompt": [10**6]}, "outside the vocabulary"),
    ({"prompt": "x", "suffix": "y"}, "suffix='y' is not supported"),
    ({"prompt": "x", "extra_body": {"messages": []}}, "unknown parameter 'messages'"),
    ({"prompt": "describe <image> please"}, "completions take no images"),
    ({"prompt": [104, 261, 105]}, "completions take no images"),  # 261: the tiny model's <image> id
])
def test_bad_completion_requests(server, kwargs, needle):
    with pytest.raises(openai.BadRequestError) as info:
        client(server).completions.create(model=MODEL, max_tokens=2, **kwargs)
    assert needle in info.value.body["message"]


def test_docs_table_is_the_policy():
    text = (Path(__file__).parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    section = text.split("### Request parameters", 1)[1].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (honoured|ignored|refused unless [^|]+?) \|", section, re.M))
    assert {k for k, v in rows.items() if v == "honoured"} == set(HONOURED)
    assert {k for k, v in rows.items() if v == "ignored"} == set(IGNORED)
    assert {k for k, v in rows.items() if v.startswith("refused")} == set(NEUTRAL)


IGNORED_SAMPLES = {"user": "u", "metadata": {"a": "b"}, "store": True, "service_tier": "auto",
                   "reasoning_effort": "low", "verbosity": "low", "parallel_tool_calls": False,
                   "prediction": {"type": "content", "content": "x"}, "modalities": ["text"],
                   "skip_special_tokens": True, "spaces_between_special_tokens": False}
NEUTRAL_REFUSED = {"n": 2, "best_of": 2, "use_beam_search": True, "logprobs": True, "top_logprobs": 2,
                   "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
                   "functions": [{"name": "f"}], "function_call": {"name": "f"},
                   "response_format": {"type": "json_object"}, "audio": {"voice": "x"}, "suffix": "tail",
                   "include_stop_str_in_output": True}
HONOURED_SAMPLES = {"stream_options": None, "max_completion_tokens": 3, "temperature": 0.5, "top_p": 0.9,
                    "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "frequency_penalty": 0.1,
                    "presence_penalty": 0.1, "logit_bias": {"104": 1}, "stop": ["zz"], "seed": 1}


def test_every_policy_row_is_exercised_through_the_client(server):
    """Each ignored parameter: accepted and named in the header; each neutral-only one: accepted with
    its neutral value, refused with another; each honoured sampling parameter: accepted."""
    assert set(IGNORED_SAMPLES) == set(IGNORED) and set(NEUTRAL_REFUSED) == set(NEUTRAL)
    c = client(server)
    for key, value in IGNORED_SAMPLES.items():
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=2,
                                                          extra_body={key: value})
        assert raw.headers["x-llavakit-ignored-params"] == key
    for key, refused in NEUTRAL_REFUSED.items():
        completions = key in ("suffix", "best_of", "use_beam_search")
        create = c.completions.create if completions else c.chat.completions.create
        where = {"prompt": "x"} if completions else {"messages": HELLO}
        for neutral in NEUTRAL[key][0]:
            create(model=MODEL, max_tokens=2, extra_body={key: neutral}, **where)
        with pytest.raises(openai.BadRequestError) as info:
            create(model=MODEL, max_tokens=2, extra_body={key: refused}, **where)
        assert info.value.body["param"] == key and info.value.body["code"] == "unsupported_parameter"
    for key, value in HONOURED_SAMPLES.items():
        resp = c.chat.completions.create(model=MODEL, messages=HELLO, extra_body={key: value},
                                         **({} if key == "max_completion_tokens" else {"max_tokens": 3}))
        assert resp.usage.completion_tokens <= 3, key


def test_a_tiny_temperature_samples_like_greedy_instead_of_failing(server, tiny_model):
    c = client(server)
    greedy = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
    tiny = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=1e-300, seed=1)
    assert tiny.choices[0].message.content == greedy.choices[0].message.content


@pytest.mark.parametrize("body, needle", [
    ({"n": True}, "n=True is not supported"),  # True == 1, but it is not the neutral value
    ({"logprobs": 0.0}, "logprobs=0.0"),
    ({"max_tokens": -5, "max_completion_tokens": 3}, "max_tokens must be at least 1"),
    ({"max_tokens": 3, "max_completion_tokens": 10**6}, "max_completion_tokens is 1000000"),
    ({"max_tokens": "many", "max_completion_tokens": 3}, "max_tokens must be an integer"),
])
def test_every_sent_value_is_checked_by_type_and_range(body, needle):
    from llavakit.serve.errors import ApiError
    from llavakit.serve.params import Limits, check_names, parse_params

    with pytest.raises(ApiError, match=re.escape(needle)):
        check_names(body, {"max_tokens", "max_completion_tokens"})
        parse_params(body, Limits())


def test_max_completion_tokens_wins_when_both_are_valid():
    from llavakit.serve.params import Limits, parse_params

    assert parse_params({"max_tokens": 9, "max_completion_tokens": 3}, Limits()).max_new_tokens == 3
