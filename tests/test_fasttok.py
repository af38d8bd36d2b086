"""qaforge.fasttok gives what transformers gives: the same tokenizer pipeline, ids, decoded text, vocabulary
size, special tokens and rendered chat templates, on the tiny Qwen3 and (when present) a real Qwen tokenizer.

The real tokenizer is read from $QAFORGE_TEST_TOKENIZER or the checkout's .tok/ (a Qwen tokenizer
directory, never committed); without one, those cases skip.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from qaforge.chat import DEFAULT_SYSTEM_PROMPT, build_messages, prompts_token_ids, render_prompt
from qaforge.fasttok import FastTokenizer, compiled_template, load_serving_tokenizer

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("QAFORGE_TEST_TOKENIZER") or REPO / ".tok")

TEXTS = [
    "什么是 CUDA 的 warp？请解释 SIMT 执行模型。",
    "Explain shared-memory bank conflicts in Triton kernels, with an example.",
    "  leading spaces, trailing spaces  \n\n\ttabs and\r\nCRLF lines\n",
    "e\u0301 vs \u00e9 (NFC matters), ﬁ ligature, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, emoji 🚀🔥",
    "special tokens inline: <|im_start|>user\nhi<|im_end|> and <think>a</think> and <|endoftext|>",
    "numbers 1234567890 3.14159 and code `x[i] += y[j] * 2;`",
    "",
]


@pytest.fixture(scope="module", params=["tiny", "real"])
def pair(request):
    """(FastTokenizer, transformers tokenizer) for one directory."""
    if request.param == "tiny":
        path = Path(request.getfixturevalue("tiny_model_dir"))
    else:
        if not (REAL / "tokenizer.json").is_file():
            pytest.skip(f"no real Qwen tokenizer at {REAL} (set QAFORGE_TEST_TOKENIZER)")
        path = REAL
    from transformers import AutoTokenizer

    fast = FastTokenizer.from_dir(path)
    assert fast is not None, f"{path} should be covered by the light tokenizer"
    return fast, AutoTokenizer.from_pretrained(path)


def test_same_pipeline_vocabulary_and_special_tokens(pair):
    fast, hf = pair
    # The whole backend (model, added tokens, normalizer, pre-tokenizer, decoder) is the same object graph.
    assert json.loads(fast.backend_tokenizer.to_str()) == json.loads(hf.backend_tokenizer.to_str())
    assert len(fast) == len(hf)
    assert fast.special_tokens_map == hf.special_tokens_map
    assert (fast.eos_token, fast.eos_token_id, fast.pad_token_id) == (hf.eos_token, hf.eos_token_id,
                                                                      hf.pad_token_id)


def test_same_ids_and_decoded_text(pair):
    fast, hf = pair
    for special in (False, True):
        assert fast(TEXTS, add_special_tokens=special)["input_ids"] == hf(TEXTS, add_special_tokens=special)["input_ids"]
        for text in TEXTS:
            assert fast(text, add_special_tokens=special)["input_ids"] == hf(text, add_special_tokens=special)["input_ids"]
    ids = hf(TEXTS, add_special_tokens=False)["input_ids"]
    cut = [seq[: max(1, len(seq) // 3)] for seq in ids if seq]  # cut mid-character: U+FFFD as in transformers
    for skip in (False, True):
        assert fast.batch_decode(ids + cut, skip_special_tokens=skip) == hf.batch_decode(ids + cut,
                                                                                         skip_special_tokens=skip)
        for seq in ids + cut:
            assert fast.decode(seq, skip_special_tokens=skip) == hf.decode(seq, skip_special_tokens=skip)
    assert fast.decode(ids[0][0]) == hf.decode(ids[0][0])  # a single id


CONVERSATIONS = [
    build_messages("什么是 warp divergence？"),
    build_messages("no system prompt", None),
    build_messages("q1", DEFAULT_SYSTEM_PROMPT, "a1") + [{"role": "user", "content": "q2"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "because"},
     {"role": "user", "content": "again", "name": None}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nA"},
     {"role": "user", "content": "<|im_start|> inline specials"}],
]


def test_same_rendered_chat_template(pair):
    fast, hf = pair
    for messages in CONVERSATIONS:
        for kwargs in ({}, {"enable_thinking": True}, {"enable_thinking": False}, {"custom_var": 3}):
            for gen in (True, False):
                want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kwargs)
                assert fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                **kwargs) == want
        assert fast.apply_chat_template(messages, add_generation_prompt=True) == hf.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=False)
    tools = [{"type": "function", "function": {"name": "f", "description": "d <b>&</b>",
                                               "parameters": {"type": "object", "properties": {}}}}]
    assert fast.apply_chat_template(CONVERSATIONS[0], tools=tools, tokenize=False) == \
        hf.apply_chat_template(CONVERSATIONS[0], tools=tools, tokenize=False)


def test_predict_prompts_are_the_same(pair):
    fast, hf = pair
    questions = [t or "?" for t in TEXTS] * 3
    for thinking in (False, True):
        assert prompts_token_ids(fast, questions, DEFAULT_SYSTEM_PROMPT, thinking) == \
            prompts_token_ids(hf, questions, DEFAULT_SYSTEM_PROMPT, thinking)
        assert render_prompt(fast, CONVERSATIONS[0], thinking) == render_prompt(hf, CONVERSATIONS[0], thinking)


def test_template_sandbox_rules_are_transformers():
    import jinja2

    assert compiled_template("{{ x | tojson }}") is compiled_template("{{ x | tojson }}")  # compiled once
    assert compiled_template("{{ x | tojson }}").render(x={"k": "<é>"}) == '{"k": "<é>"}'  # no HTML escaping
    with pytest.raises(jinja2.exceptions.TemplateError, match="nope"):
        compiled_template("{{ raise_exception('nope') }}").render()
    with pytest.raises(jinja2.exceptions.SecurityError):
        compiled_template("{% set ns = namespace(_x=1) %}").render()
    with pytest.raises(jinja2.exceptions.SecurityError):  # the immutable sandbox
        compiled_template("{% set l = [] %}{{ l.append(1) }}").render()
    assert compiled_template("{% generation %}A{% endgeneration %}{{ dict(a=1)['a'] }}").render() == "A1"
    assert compiled_template("{% for i in [1,2,3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"
                             ).render() == "1"


def test_unknown_tokenizer_class_falls_back_to_transformers(tiny_model_dir, tmp_path):
    copy = tmp_path / "tok"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (Path(tiny_model_dir) / name).exists():
            shutil.copy(Path(tiny_model_dir) / name, copy / name)
    assert isinstance(load_serving_tokenizer(copy), FastTokenizer)
    config = json.loads((copy / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "LlamaTokenizer"  # rebuilds its pipeline differently: not copied here
    (copy / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert FastTokenizer.from_dir(copy) is None
    hf = load_serving_tokenizer(copy)
    assert not isinstance(hf, FastTokenizer) and hasattr(hf, "apply_chat_template")


def test_encode_many_with_a_shared_head_gives_the_same_ids(pair):
    fast, _ = pair
    questions = ["什么是 warp？", "<|im_end|> starts this one", "im_start|> half a token", " x", "\n\n", "é"]
    for system in (DEFAULT_SYSTEM_PROMPT, None, "<|im_start|>"):
        for thinking in (False, True):
            texts = [render_prompt(fast, build_messages(q, system), thinking) for q in questions]
            assert fast._safe_cut(texts) is not None  # the system turn is shared: the short way is taken
            assert fast.encode_many(texts) == fast(texts, add_special_tokens=False)["input_ids"]
    # Heads that share the first bytes of a special token, or nothing special at all: encoded whole.
    for texts in (["<|im_st", "<|im_sx"], ["plain a", "plain b"], ["<|im_start|>", "<|im_start|>"]):
        assert fast.encode_many(texts) == fast(texts, add_special_tokens=False)["input_ids"]
    assert fast._safe_cut(["plain a", "plain b"]) is None


def test_encode_many_refuses_a_cut_an_added_token_could_run_past(tiny_model_dir):
    from tokenizers import AddedToken

    fast = FastTokenizer.from_dir(tiny_model_dir)
    texts = [render_prompt(fast, build_messages(q)) for q in ("user one", "user two")]
    cut = fast._safe_cut(texts)
    assert texts[0][:cut].endswith("<|im_start|>")
    # An added token that begins with the head's last token and continues into the tails: no safe cut
    # there, yet the ids must still be the whole-text ones (which use the new token).
    fast.backend_tokenizer.add_special_tokens([AddedToken("<|im_start|>user", special=True)])
    assert fast._safe_cut(texts) != cut  # not after "<|im_start|>" any more (after the new token, or none)
    assert fast.encode_many(texts) == fast(texts, add_special_tokens=False)["input_ids"]
    assert fast.convert_tokens_to_ids("<|im_start|>user") in fast.encode_many(texts)[0]
    fast.backend_tokenizer.add_special_tokens([AddedToken("\n", special=True, rstrip=True)])
    assert fast._safe_cut(texts) is None  # stripping tokens reach across any cut
