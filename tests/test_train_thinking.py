"""Thinking samples in SFT data (tiny Qwen3): a record with a thought (the `reasoning` field, or an
answer that opens with `<think>…</think>`) is rendered as Qwen3's template renders thinking mode,
with the loss on the thought; records without one stay the non-thinking samples they always were,
and both kinds mix in one dataset. The dataset files carry the thought (qa.json: `reasoning`;
train lines: inside the answer, as LLaMA-Factory reads it; exam lines: never)."""

from __future__ import annotations

import json

import pytest
import torch

from qaforge.chat import prompt_token_ids, render_prompt, build_messages
from qaforge.dataset import DatasetFormatError, QARecord, read_records, write_dataset
from qaforge.train.data import IGNORE_INDEX, ChatEncoder, SFTCollator

Q, A, R = "什么是warp？", "warp是32个线程（thread）。", "先回忆 SIMT：一条指令驱动一组线程。\n这组线程就是 warp。"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _labelled_text(tokenizer, sample) -> str:
    return tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX])


def test_thinking_sample_has_loss_on_the_thought(tokenizer):
    sample = ChatEncoder(tokenizer).encode(Q, A, reasoning=R)
    assert sample.thinking and not sample.truncated
    assert _labelled_text(tokenizer, sample) == f"<think>\n{R}\n</think>\n\n{A}<|im_end|>"
    # The prompt is thinking mode's generation prompt, exactly what serve sends with the switch on.
    prompt = tokenizer(render_prompt(tokenizer, build_messages(Q), enable_thinking=True),
                       add_special_tokens=False)["input_ids"]
    assert sample.input_ids[:len(prompt)] == prompt
    assert all(l == IGNORE_INDEX for l in sample.labels[:len(prompt)])
    assert all(l != IGNORE_INDEX for l in sample.labels[len(prompt):-1]) and sample.labels[-1] == IGNORE_INDEX
    for marker in ("<think>", "</think>"):
        i = sample.input_ids.index(tokenizer.convert_tokens_to_ids(marker))
        assert sample.labels[i] == sample.input_ids[i], marker


def test_a_thought_inside_the_answer_is_the_same_sample(tokenizer):
    encoder = ChatEncoder(tokenizer)
    by_field = encoder.encode(Q, A, reasoning=R)
    inline = encoder.encode(Q, f"<think>\n{R}\n</think>\n\n{A}")
    assert (inline.input_ids, inline.labels, inline.thinking) == (by_field.input_ids, by_field.labels, True)


def test_non_thinking_samples_are_unchanged(tokenizer):
    encoder = ChatEncoder(tokenizer)
    plain = encoder.encode(Q, A)
    assert not plain.thinking and _labelled_text(tokenizer, plain) == A + "<|im_end|>"
    # The template's empty think block sits in the prompt (no loss), as non-thinking serving sends it.
    assert plain.input_ids[:len(prompt_token_ids(tokenizer, Q))] == prompt_token_ids(tokenizer, Q)
    for empty in (encoder.encode(Q, A, reasoning="  \n"), encoder.encode(Q, f"<think>\n\n</think>\n\n{A}")):
        assert (empty.input_ids, empty.labels, empty.thinking) == (plain.input_ids, plain.labels, False)


def test_mixed_records_pack_and_the_thought_carries_loss(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    records = [QARecord(Q, A, reasoning=R), QARecord("为什么要合并访存？", "合并访存减少 DRAM 事务。")]
    samples, stats = ChatEncoder(tokenizer, max_seq_len=256).encode_records(records)
    assert stats["thinking_samples"] == 1 and stats["samples"] == 2
    assert [s.thinking for s in samples] == [True, False]
    batch = SFTCollator(tokenizer.pad_token_id, packing=False)(
        [{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        full = model(**batch).loss
        # The same batch with the thought's labels masked: a different loss, so the thought counts.
        masked = batch["labels"].clone()
        think_end = samples[0].input_ids.index(tokenizer.convert_tokens_to_ids("</think>"))
        masked[0, :think_end + 1] = IGNORE_INDEX
        without = model(**{**batch, "labels": masked}).loss
    assert torch.isfinite(full) and torch.isfinite(without) and abs(full.item() - without.item()) > 1e-4


def test_dataset_files_carry_the_thought(tmp_path):
    thinking, plain = QARecord(Q, A, chapter=4, reasoning=R), QARecord("为什么要合并访存？", "减少事务。", chapter=5)
    write_dataset(tmp_path, [thinking, plain], train=[thinking, plain], exam=[thinking])
    qa = json.loads((tmp_path / "qa.json").read_text(encoding="utf-8"))
    assert qa[0]["reasoning"] == R and "reasoning" not in qa[1]
    train_lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert train_lines[0]["output"] == f"<think>\n{R}\n</think>\n\n{A}" and train_lines[1]["output"] == "减少事务。"
    exam_line = json.loads((tmp_path / "exam.jsonl").read_text(encoding="utf-8"))
    assert exam_line["output"] == A
    for name in ("qa.json", "train.jsonl", "train_chatml.jsonl", "train_sharegpt.jsonl"):
        back = read_records(tmp_path / name)
        assert [(r.answer, r.reasoning) for r in back] == [(A, R), ("减少事务。", "")], name
    assert read_records(tmp_path / "exam.jsonl")[0].reasoning == ""


def test_bad_reasoning_field_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n"
                    + json.dumps({"instruction": "q2", "output": "a", "reasoning": 3}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"bad.jsonl:2: field 'reasoning' must be a string"):
        read_records(path)
    path.write_text(json.dumps({"instruction": "q", "output": "<think>only a thought</think>"}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"bad.jsonl:1: empty answer"):
        read_records(path)
