"""Templates + processor: exact ids/labels per template, and the masking property over all of them."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llavakit.conversation.processor import IGNORE_INDEX, Processor, place_image, to_messages
from llavakit.conversation.templates import TEMPLATES, Message, get_template
from llavakit.errors import ConfigError, DataError
from llavakit.model.lm import build_byte_tokenizer

U, A = "user", "assistant"
IMG = 261  # the byte tokenizer: ids 0-255 are bytes; <s> 256, <|im_end|> 257, <pad> 258, <|im_start|> 259, </s> 260
N = 2  # image tokens per image in these tests


def b(text: str) -> list[int]:
    """The byte tokenizer's ids of plain text are its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def masked(ids):
    return [IGNORE_INDEX] * len(ids)


@pytest.fixture(scope="module")
def byte_tok():
    return build_byte_tokenizer()


def proc(tok, template, system=None):
    return Processor(tok, template, num_image_tokens=N, system_prompt=system)


CONV = [Message(U, "<image>\nhi"), Message(A, "yo"), Message(U, "ok?"), Message(A, "é!")]


def test_byte_tokenizer_ids_are_fixed(byte_tok):
    p = proc(byte_tok, "plain")
    assert p.image_token_id == IMG
    assert byte_tok("Az\n", add_special_tokens=False).input_ids == [65, 122, 10]
    assert [byte_tok.convert_tokens_to_ids(t) for t in ["<s>", "<|im_end|>", "<pad>", "<|im_start|>", "</s>"]] == [
        256, 257, 258, 259, 260]


def test_plain_exact(byte_tok):
    enc = proc(byte_tok, "plain").encode([Message(U, "Describe.\n<image>"), Message(A, "A dog.")])
    assert enc.input_ids == [256, IMG, IMG, 65, 32, 100, 111, 103, 46, 10]  # <s> first, as LLaVA's Llama has
    assert enc.labels == [-100, -100, -100, 65, 32, 100, 111, 103, 46, 10]
    assert enc.num_images == 1


def test_v0_exact(byte_tok):
    enc = proc(byte_tok, "v0", system="S").encode(CONV)
    ctx1 = b("S###Human: ") + [IMG, IMG] + b("\nhi###Assistant: ")
    ans1 = b("yo###")
    ctx2 = b("Human: ok?###Assistant: ")
    ans2 = [195, 169, 33, 35, 35, 35]  # "é!###"
    assert enc.input_ids == ctx1 + ans1 + ctx2 + ans2
    assert enc.labels == masked(ctx1) + ans1 + masked(ctx2) + ans2


def test_v0_default_system_is_the_papers(byte_tok):
    enc = proc(byte_tok, "v0").encode(CONV[:2])
    text = byte_tok.decode(enc.input_ids)
    assert text.startswith("A chat between a curious human and an artificial intelligence assistant.")


def test_vicuna_v1_exact(byte_tok):
    enc = proc(byte_tok, "vicuna_v1", system="S").encode(CONV)
    ctx1 = b("S USER: ") + [IMG, IMG] + b("\nhi ASSISTANT: ")
    ans1 = b("yo") + [260]  # </s> is one special token
    ctx2 = b("USER: ok? ASSISTANT: ")
    ans2 = b("é!") + [260]
    assert enc.input_ids == ctx1 + ans1 + ctx2 + ans2
    assert enc.labels == masked(ctx1) + ans1 + masked(ctx2) + ans2


def test_chat_template_exact(byte_tok):
    enc = proc(byte_tok, "chat_template").encode(CONV)
    ctx1 = [259] + b("user\n") + [IMG, IMG] + b("\nhi") + [257] + b("\n") + [259] + b("assistant\n")
    ans1 = b("yo") + [257]
    ctx2 = b("\n") + [259] + b("user\nok?") + [257] + b("\n") + [259] + b("assistant\n")
    ans2 = b("é!") + [257]
    tail = b("\n")
    assert enc.input_ids == ctx1 + ans1 + ctx2 + ans2 + tail
    assert enc.labels == masked(ctx1) + ans1 + masked(ctx2) + ans2 + masked(tail)


def test_chat_template_with_system_and_prompt(byte_tok):
    p = proc(byte_tok, "chat_template", system="Be brief.")
    prompt = p.encode_prompt([Message(U, "hi")])
    assert prompt == [259] + b("system\nBe brief.") + [257, 10, 259] + b("user\nhi") + [257, 10, 259] + b("assistant\n")
    # a leading system message overrides the processor's system prompt
    over = p.encode_prompt([Message("system", ""), Message(U, "hi")])
    assert over == [259] + b("system\n") + [257, 10, 259] + b("user\nhi") + [257, 10, 259] + b("assistant\n")
    with pytest.raises(DataError, match="system message may only come first"):
        p.encode([Message(U, "a"), Message("system", "x"), Message(A, "b")])


def test_template_errors(byte_tok):
    with pytest.raises(ConfigError, match="unknown template"):
        get_template("vicuna")  # exact names only
    with pytest.raises(DataError, match="expected 'user'"):
        proc(byte_tok, "v0").encode([Message(A, "x"), Message(U, "y")])
    with pytest.raises(DataError, match="one \\(image, caption\\) pair"):
        proc(byte_tok, "plain").encode(CONV)
    with pytest.raises(DataError, match="needs <image>"):
        proc(byte_tok, "plain").encode([Message(U, "no image"), Message(A, "x")])
    with pytest.raises(DataError, match="assistant turn contains <image>"):
        proc(byte_tok, "v0").encode([Message(U, "<image>"), Message(A, "see <image>")])
    tok = build_byte_tokenizer()
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        proc(tok, "chat_template")


def test_chat_template_content_cannot_fake_a_sentinel(byte_tok):
    p = proc(byte_tok, "chat_template")
    tricky = [Message(U, "\x00A1\x00 \x00"), Message(A, "\x001\x00"), Message(U, "\x00\x011\x00\x01"), Message(A, "z")]
    enc = p.encode(tricky)
    sup = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert byte_tok.decode(sup) == "\x001\x00<|im_end|>z<|im_end|>"


def test_place_image():
    msgs = [Message(U, "What is it?\n<image>"), Message(A, "x")]
    assert place_image(msgs, "<image>", "first", None)[0].content == "<image>\nWhat is it?"
    assert place_image(msgs, "<image>", "keep", None)[0].content == "What is it?\n<image>"
    seen = {place_image(msgs, "<image>", "random", random.Random(s))[0].content for s in range(40)}
    assert seen == {"<image>\nWhat is it?", "What is it?\n<image>"}
    a = [place_image(msgs, "<image>", "random", random.Random(f"0:{i}"))[0].content for i in range(20)]
    assert a == [place_image(msgs, "<image>", "random", random.Random(f"0:{i}"))[0].content for i in range(20)]
    two = [Message(U, "<image> and <image>"), Message(A, "x")]
    assert place_image(two, "<image>", "first", None) == two  # only a single first-turn image moves
    with pytest.raises(DataError, match="placement"):
        place_image(msgs, "<image>", "sometimes", None)


def test_to_messages_roles_and_errors():
    msgs = to_messages([{"from": "human", "value": "a"}, {"role": "assistant", "content": "b"}], "r1")
    assert msgs == [Message(U, "a"), Message(A, "b")]
    with pytest.raises(DataError, match=r"record r1: conversations\[0\].from is 'bot'"):
        to_messages([{"from": "bot", "value": "a"}], "r1")
    with pytest.raises(DataError, match=r"record r1: conversations\[1\].value is int"):
        to_messages([{"from": "human", "value": "a"}, {"from": "gpt", "value": 3}], "r1")
    with pytest.raises(DataError, match=r"conversations\[0\] is str"):
        to_messages(["hi"], "r1")


def test_sentencepiece_style_tokenizer_gets_no_extra_spaces():
    """Tokenizers that prefix every piece with a space (legacy Llama/Vicuna) are detected and guarded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:?!.,#\n"))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault("▁" + c, len(vocab))
    merges = [("▁", c) for c in chars]
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tok("a", add_special_tokens=False).input_ids == [vocab["▁a"]]  # it does prefix a space
    p = Processor(tok, "vicuna_v1", num_image_tokens=2, system_prompt="Hi.")
    assert p.guarded and p.bos_ids == [1]
    enc = p.encode([Message(U, "<image>\nWhat?"), Message(A, "A cat.")])
    assert enc.input_ids[0] == 1
    text = tok.decode(enc.input_ids[1:], skip_special_tokens=False)
    assert text.replace("<image>", "") == "Hi. USER: \nWhat? ASSISTANT: A cat.</s>"
    sup = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert tok.decode(sup, skip_special_tokens=False) == "A cat.</s>"
    plain_proc = Processor(build_byte_tokenizer(), "vicuna_v1", num_image_tokens=2)
    assert not plain_proc.guarded


# --- the property: exactly the answers (+ their stop markers) are supervised, for every template ----

TRICKY = ["###", "</s>", "<|im_end|>", "<|im_start|>", "USER:", "ASSISTANT: ", "Human: ", "\n", " ", "\x00", "<s>", "é", "🦙"]


def content_strategy(exclude_categories):
    piece = st.text(st.characters(exclude_categories=exclude_categories), max_size=12) | st.sampled_from(TRICKY)
    return st.lists(piece, max_size=4).map("".join).filter(lambda s: "<image>" not in s)


@st.composite
def conversations(draw, plain: bool, content):
    rounds = 1 if plain else draw(st.integers(1, 6))
    msgs = []
    for r in range(rounds):
        question = draw(content)
        if r == 0:
            question = draw(st.sampled_from([f"<image>\n{question}", f"{question}\n<image>", f"{question}<image>"]))
        msgs += [Message(U, question), Message(A, draw(content))]
    system = draw(st.none() | st.just("") | content)
    return msgs, system


OPENINGS = {"plain": "<image>", "v0": "Assistant: ", "vicuna_v1": "ASSISTANT: ", "chat_template": "assistant\n"}


def check_exact_masking(p: Processor, msgs, system) -> None:
    if system is not None:
        msgs = [Message("system", system), *msgs]
    enc = p.encode(msgs)
    tok, stop = p.tokenizer, p.stop_str
    assert len(enc.input_ids) == len(enc.labels)
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(enc.input_ids, enc.labels))
    runs, start = [], None
    for pos, lab in enumerate(enc.labels + [IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = pos
        elif lab == IGNORE_INDEX and start is not None:
            runs.append((start, pos))
            start = None
    answers = [m.content for m in msgs if m.role == A]
    assert len(runs) == len(answers)
    for (s, e), answer in zip(runs, answers):
        assert tok.decode(enc.input_ids[s:e], skip_special_tokens=False) == answer + stop
        assert tok.decode(enc.input_ids[:s], skip_special_tokens=False).endswith(OPENINGS[p.template.name])
        assert p.image_token_id not in enc.input_ids[s:e]
    assert enc.input_ids.count(p.image_token_id) == p.num_image_tokens * enc.num_images
    # generation prompts are exactly the training prefixes: what the model sees at inference is
    # what it was trained on, and the answer it must produce is the supervised run that follows
    n_answer = 0
    for k, msg in enumerate(msgs):
        if msg.role != A:
            continue
        prompt = p.encode_prompt(msgs[:k])
        s, e = runs[n_answer]
        assert prompt == enc.input_ids[:s]
        n_answer += 1


def _property(tok, template, exclude_categories, examples):
    p = Processor(tok, template, num_image_tokens=3)

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(conversations(template == "plain", content_strategy(exclude_categories)))
    def run(case):
        msgs, system = case
        check_exact_masking(p, msgs, system)

    run()


@pytest.mark.parametrize("template", TEMPLATES)
def test_masking_is_exact_byte_tokenizer(template):
    _property(build_byte_tokenizer(), template, ("Cs",), 150)


@pytest.mark.integration
@pytest.mark.parametrize("template", TEMPLATES)
def test_masking_is_exact_smollm2_tokenizer(template):
    from llavakit.model.tokenizer import load_processor

    # SmolLM2's vocabulary lacks 21 byte symbols: the control bytes 0x04 0x06 0x13 0x14 0x16 0x1d
    # and the UTF-8 lead bytes of the unassigned planes 4-13 (and never-valid bytes); its BPE drops
    # them. Text holding those characters cannot round-trip through this tokenizer at all, so the
    # property is stated for what it can represent: no control (Cc) or unassigned (Cn) characters.
    _property(load_processor("nano").tokenizer, template, ("Cs", "Cn", "Cc"), 60)
