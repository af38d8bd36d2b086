"""Thinking mode in qaforge.chat: the chat-template switch and the one home of the think split,
whole and incremental (tags cut anywhere between pieces)."""

from __future__ import annotations

import random

import pytest

from qaforge.chat import (ReasoningSplitter, build_messages, join_reasoning, prompt_opens_think,
                          render_prompt, split_reasoning, template_opens_think)

CASES = [
    # (completion, opened, reasoning, content)
    ("<think>\nStep 1. Step 2.\n</think>\n\nThe answer.", False, "Step 1. Step 2.", "The answer."),
    ("  <think>a < b</think>x", False, "a < b", "x"),
    ("<think>\n\n</think>\n\nNo thought.", False, "", "No thought."),
    ("<think>\ncut off by max_tokens", False, "cut off by max_tokens", ""),
    ("Plain answer, no think block.", False, "", "Plain answer, no think block."),
    ("Answer <think>late</think> tail", False, "", "Answer <think>late</think> tail"),
    ("thought opened by the prompt\n</think>\n\nanswer", True, "thought opened by the prompt", "answer"),
    ("still thinking </thi", True, "still thinking </thi", ""),
    ("<thi", False, "", "<thi"),
    ("", False, "", ""),
    ("<think>x</think></think>y", False, "x", "</think>y"),
]


@pytest.mark.parametrize("text,opened,reasoning,content", CASES)
def test_split_reasoning(text, opened, reasoning, content):
    assert split_reasoning(text, opened) == (reasoning, content)


def _feed(pieces: list[str], opened: bool) -> tuple[str, str, list[tuple[str, str]]]:
    splitter = ReasoningSplitter(opened)
    outs = [splitter.feed(p) for p in pieces] + [splitter.finish()]
    return "".join(r for r, _ in outs), "".join(c for _, c in outs), outs


@pytest.mark.parametrize("text,opened,reasoning,content", CASES)
def test_every_single_cut_and_char_by_char_give_the_whole_split(text, opened, reasoning, content):
    for cut in range(len(text) + 1):
        got = _feed([text[:cut], text[cut:]], opened)[:2]
        assert got == (reasoning, content), (cut, text)
    assert _feed(list(text), opened)[:2] == (reasoning, content)


def test_random_pieces_give_the_whole_split():
    rng = random.Random(0)
    text = "<think>\n先看 warp：32 个线程。\n再看 </ 和 <think 这样的字符。\n</think>\n\n答案：warp 是 32 个线程。"
    want = split_reasoning(text)
    assert want[0].startswith("先看") and want[0].endswith("字符。") and want[1] == "答案：warp 是 32 个线程。"
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert _feed(pieces, False)[:2] == want, pieces


def test_a_cut_tag_is_held_back_not_sent_as_text():
    splitter = ReasoningSplitter()
    assert splitter.feed("<thi") == ("", "")                  # may still become <think>
    assert splitter.feed("nk>\nfirst") == ("first", "")
    assert splitter.feed(" idea</th") == (" idea", "")         # "</th" waits
    assert splitter.feed("ink>\n\nAns") == ("", "Ans")
    assert splitter.feed("wer  ") == ("", "wer")               # trailing spaces wait for more text
    assert splitter.feed("done") == ("", "  done")
    assert splitter.finish() == ("", "")


def test_content_never_gets_the_reasoning_even_when_the_close_tag_is_split_per_char():
    _, _, outs = _feed(list("<think>r</think>c"), False)
    assert [c for _, c in outs if c] == ["c"] and "".join(r for r, _ in outs) == "r"


def test_render_prompt_switch(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    messages = build_messages("什么是warp？")
    off, on = render_prompt(tok, messages), render_prompt(tok, messages, enable_thinking=True)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n") and "<think>" not in on
    assert not prompt_opens_think(on) and not prompt_opens_think(off)
    assert not template_opens_think(tok)
    assert prompt_opens_think("<|im_start|>assistant\n<think>\n")


def test_join_reasoning_renders_like_the_templates_reasoning_content(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    joined = join_reasoning("\nthink first\n", "answer")
    assert joined == "<think>\nthink first\n</think>\n\nanswer"
    assert split_reasoning(joined) == ("think first", "answer")
    by_content = tok.apply_chat_template(build_messages("q", None, answer=joined), tokenize=False)
    by_field = tok.apply_chat_template(
        [{"role": "user", "content": "q"},
         {"role": "assistant", "content": "answer", "reasoning_content": "think first"}], tokenize=False)
    assert by_content == by_field
    assert join_reasoning("  ", "answer") == "answer"
