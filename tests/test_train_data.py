"""Chat-format encoding with assistant-only labels, and packed == unpacked per-sample loss."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import qa_files, random_model_dir  # noqa: F401 - fixtures

from qaforge.dataset import QARecord, read_records
from qaforge.train.data import IGNORE_INDEX, ChatEncoder, SFTCollator


@pytest.fixture(scope="module")
def tokenizer(random_model_dir):  # noqa: F811
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(random_model_dir)


def test_labels_only_on_answer_and_im_end(tokenizer):
    encoder = ChatEncoder(tokenizer, max_seq_len=512)
    answer = "warp是32个线程（thread）。"
    sample = encoder.encode("什么是warp？", answer)
    labelled = [t for t in sample.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == answer + "<|im_end|>"
    # Everything up to and including the empty think block is prompt: no loss on system, user, think.
    first_label = next(i for i, t in enumerate(sample.labels) if t != IGNORE_INDEX)
    prompt_text = tokenizer.decode(sample.input_ids[:first_label])
    assert prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "<|im_start|>system\n" in prompt_text and "<|im_start|>user\n什么是warp？" in prompt_text
    for marker in ("<think>", "</think>", "<|im_start|>"):
        marker_id = tokenizer.convert_tokens_to_ids(marker)
        positions = [i for i, t in enumerate(sample.input_ids) if t == marker_id]
        assert positions and all(sample.labels[i] == IGNORE_INDEX for i in positions), marker
    # The trailing newline after <|im_end|> gets no loss; labels line up with input ids.
    assert sample.labels[-1] == IGNORE_INDEX
    assert all(l == t for l, t in zip(sample.labels, sample.input_ids) if l != IGNORE_INDEX)


def test_prompt_matches_what_serving_feeds(tokenizer):
    from qaforge.chat import prompt_token_ids
    sample = ChatEncoder(tokenizer).encode("What is a warp?", "A group of 32 threads.")
    prompt = prompt_token_ids(tokenizer, "What is a warp?")
    assert sample.input_ids[:len(prompt)] == prompt
    assert all(l == IGNORE_INDEX for l in sample.labels[:len(prompt)])


def test_truncation_keeps_prompt_and_drops_hopeless_samples(tokenizer):
    from qaforge.chat import prompt_token_ids
    limit = len(prompt_token_ids(tokenizer, "short question")) + 24
    encoder = ChatEncoder(tokenizer, max_seq_len=limit)
    sample = encoder.encode("short question", "很长的回答。" * 200)
    assert len(sample) == limit and sample.truncated
    assert sum(1 for t in sample.labels if t != IGNORE_INDEX) == 24
    assert encoder.encode("问" * 400, "answer") is None
    samples, stats = encoder.encode_records(load_qa_records_like([("q", "a"), ("问" * 400, "a")]))
    assert stats["dropped_prompt_too_long"] == 1 and len(samples) == 1


def load_qa_records_like(pairs):
    return [QARecord(q, a) for q, a in pairs]


def test_bad_dataset_lines_fail_with_line_numbers(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_records(path)
    path.write_text(json.dumps({"instruction": "q"}) + "\n")
    with pytest.raises(ValueError, match="answer"):
        read_records(path)
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.jsonl")


def test_alpaca_input_joins_instruction_and_difficulty_is_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "Explain", "input": "warps", "output": "x", "difficulty": "hard"}) + "\n")
    (record,) = read_records(path)
    assert record.question == "Explain\nwarps" and record.difficulty == "hard"


def _per_sample_losses(logits_rows, label_rows):
    losses = []
    for logits, labels in zip(logits_rows, label_rows):
        losses.append(torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX))
    return torch.stack(losses)


def test_packed_and_unpacked_per_sample_losses_are_equal(random_model_dir, qa_files, tokenizer):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from qaforge.train.fast import register_varlen_attention

    encoder = ChatEncoder(tokenizer, max_seq_len=256)
    samples, _ = encoder.encode_records(read_records(qa_files[0])[:6])
    features = [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    assert len({len(f["input_ids"]) for f in features}) > 1, "need different lengths to exercise padding"
    padded = SFTCollator(tokenizer.pad_token_id, packing=False)(features)
    packed = SFTCollator(tokenizer.pad_token_id, packing=True)(features)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert packed["position_ids"][0, packed["cu_seq_lens_q"][1]].item() == 0  # positions restart

    model = AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    with torch.no_grad():
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        model.set_attn_implementation(register_varlen_attention())
        packed_logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
    bounds = packed["cu_seq_lens_q"].tolist()
    unpacked = _per_sample_losses(
        [padded_logits[i, :b - a] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))],
        [padded["labels"][i, :b - a] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))])
    packed_losses = _per_sample_losses([packed_logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                                       [packed["labels"][0, a:b] for a, b in zip(bounds[:-1], bounds[1:])])
    assert torch.allclose(packed_losses, unpacked, atol=1e-4, rtol=0), (packed_losses, unpacked)
    # And the whole-batch token-mean loss through the model's own loss path agrees too.
    with torch.no_grad():
        packed_loss = model(**packed).loss
        model.set_attn_implementation("sdpa")
        padded_loss = model(**padded).loss
    assert abs(packed_loss.item() - padded_loss.item()) < 1e-4


def test_collator_refuses_samples_that_would_leak_loss_across_boundaries():
    collator = SFTCollator(pad_token_id=0)
    with pytest.raises(ValueError, match="prompt token"):
        collator([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
