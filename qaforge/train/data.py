"""SFT data: QA records (read by `qaforge.dataset`) -> Qwen3 chat tokens with assistant-only labels ->
padded or packed batches.

Tokenisation (what the model sees, exactly what `qaforge.chat.render_prompt` feeds it at serve time):

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n
    <|im_start|>assistant\n<think>\n\n</think>\n\n          <- prompt: label -100
    {answer}<|im_end|>                                      <- labels (the model learns to stop)
    \n                                                      <- template's trailing newline: -100

The empty think block is part of the prompt (non-thinking mode), so no loss is spent on it and
the model never learns to emit think tags itself.

A record with a thought (`QARecord.reasoning`, or an answer that opens with `<think>…</think>`) is
a thinking sample, rendered as Qwen3's template renders it in thinking mode, with the loss on the
thought too:

    ...<|im_start|>assistant\n                               <- prompt (thinking generation prompt): -100
    <think>\n{reasoning}\n</think>\n\n{answer}<|im_end|>      <- labels

Both kinds mix in one dataset, as in Qwen3's own hybrid training: the empty think block of a
non-thinking sample is what the thinking switch off puts in the prompt at serve time, and a
thinking sample's prompt is what the switch on sends.

Packing is padding-free: a micro-batch of N samples becomes ONE row of sum(len_i) tokens with
`position_ids` restarting at 0 for every sample and `cu_seq_lens_*` marking the boundaries, the
format transformers' flash-attention path and qaforge's varlen attention (`qaforge.train.fast`)
consume. Samples never attend to each other, so every sample's loss equals its unpacked loss
(proved in tests/test_train_data.py), while no FLOP is spent on padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from qaforge.chat import (DEFAULT_SYSTEM_PROMPT, THINK_TAGS, build_messages, join_reasoning,
                          render_prompt, split_reasoning)
from qaforge.dataset import QARecord

IGNORE_INDEX = -100


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]  # same length as input_ids; IGNORE_INDEX where no loss is taken
    truncated: bool = False
    thinking: bool = False  # carries a thought (loss on it), rendered in thinking mode

    def __len__(self) -> int:
        return len(self.input_ids)


class ChatEncoder:
    """Turns (question, answer) pairs into Qwen3 non-thinking chat tokens with assistant-only labels."""

    def __init__(self, tokenizer: Any, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                 max_seq_len: int = 512):
        if max_seq_len < 32:
            raise ValueError(f"max_seq_len must be >= 32, got {max_seq_len}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("tokenizer has no chat template; Qwen3 chat format is required")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_seq_len = max_seq_len
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if im_end is None or im_end == tokenizer.unk_token_id:
            raise ValueError("tokenizer has no <|im_end|> token; not a Qwen-style chat tokenizer")
        self.im_end_id = im_end

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, question: str, answer: str, reasoning: str = "") -> EncodedSample | None:
        """Encode one pair (with its thought, if any: then a thinking sample); None when even the
        prompt does not fit (the caller counts drops)."""
        if not reasoning.strip() and THINK_TAGS[1] in answer:
            reasoning, answer = split_reasoning(answer)
        thinking = bool(reasoning.strip())
        if thinking:
            answer = join_reasoning(reasoning, answer)
        messages = build_messages(question, self.system_prompt)
        prompt_text = render_prompt(self.tokenizer, messages, enable_thinking=thinking)
        full_text = self.tokenizer.apply_chat_template(
            build_messages(question, self.system_prompt, answer=answer), tokenize=False,
            enable_thinking=thinking)
        if not full_text.startswith(prompt_text):
            # The template must render the training conversation as prompt + completion, else
            # training and serving would see different token sequences.
            raise ValueError("chat template renders the answer turn differently from the generation "
                             "prompt; cannot split prompt and completion")
        completion_text = full_text[len(prompt_text):]
        prompt_ids = self._ids(prompt_text)
        completion_ids = self._ids(completion_text)
        # Loss on the answer and its <|im_end|>; whatever the template puts after it gets none.
        try:
            last_end = len(completion_ids) - 1 - completion_ids[::-1].index(self.im_end_id)
        except ValueError:
            raise ValueError("rendered completion has no <|im_end|>; unexpected chat template") from None
        completion_labels = completion_ids[:last_end + 1] + [IGNORE_INDEX] * (len(completion_ids) - last_end - 1)

        room = self.max_seq_len - len(prompt_ids)
        if room < 8:  # not even a few answer tokens fit: the sample teaches nothing
            return None
        truncated = len(completion_ids) > room
        completion_ids, completion_labels = completion_ids[:room], completion_labels[:room]
        return EncodedSample(prompt_ids + completion_ids,
                             [IGNORE_INDEX] * len(prompt_ids) + completion_labels, truncated, thinking)

    def encode_records(self, records: list[QARecord]) -> tuple[list[EncodedSample], dict[str, int]]:
        samples, dropped, truncated = [], 0, 0
        for record in records:
            sample = self.encode(record.question, record.answer, getattr(record, "reasoning", ""))
            if sample is None:
                dropped += 1
                continue
            truncated += sample.truncated
            samples.append(sample)
        if not samples:
            raise ValueError(f"no sample fits max_seq_len={self.max_seq_len} (all {dropped} dropped)")
        stats = {"samples": len(samples), "dropped_prompt_too_long": dropped, "truncated": truncated,
                 "thinking_samples": sum(s.thinking for s in samples),
                 "tokens": sum(len(s) for s in samples),
                 "label_tokens": sum(sum(1 for t in s.labels if t != IGNORE_INDEX) for s in samples)}
        return samples, stats


def split_validation(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out slice for eval_loss when no exam split is given."""
    if fraction <= 0 or len(records) < 20:
        return list(records), []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(records) * fraction))
    val_idx = set(order[:n_val])
    return ([r for i, r in enumerate(records) if i not in val_idx],
            [r for i, r in enumerate(records) if i in val_idx])


class SampleDataset:
    """A list-backed map-style dataset (no `datasets` dependency: the GPU image lacks it)."""

    def __init__(self, samples: list[EncodedSample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        sample = self.samples[index]
        return {"input_ids": sample.input_ids, "labels": sample.labels}


class SFTCollator:
    """Batches encoded samples: padding-free packed rows (default) or right-padded rows.

    Packed output (batch size 1 row): input_ids, labels, position_ids [1, T] and the boundary
    metadata `cu_seq_lens_q/k` (int32, [N+1]) and `max_length_q/k` (int) that transformers'
    flash-attention kwargs use. Labels are NOT pre-shifted: the model shifts them by one, and the
    first token of every sample is a prompt token (-100), so no loss crosses a sample boundary.
    """

    def __init__(self, pad_token_id: int, packing: bool = True, pad_to_multiple_of: int | None = None,
                 label_positions: bool = False):
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of
        # also emit `label_positions` (for qaforge's fused loss only: plain HF models reject the key)
        self.label_positions = label_positions

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("empty batch")
        for feature in features:
            if feature["labels"][0] != IGNORE_INDEX:
                raise ValueError("first token of a sample must be a prompt token (label -100); "
                                 "packing relies on it to keep loss from crossing samples")
        if self.packing:
            batch = pack_features(features)
            if self.label_positions:
                batch["label_positions"] = next_token_label_positions(batch["labels"])
            return batch
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
            mask[row, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if self.label_positions:
            batch["label_positions"] = next_token_label_positions(labels)
        return batch


def next_token_label_positions(labels) -> Any:
    """Flat indices t of `labels` ([B, T]) whose next-token target labels[b, t + 1] is not -100."""
    import torch

    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return (shifted.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)  # on the host: no GPU sync


def pack_features(features: list[dict[str, list[int]]]) -> dict[str, Any]:
    import torch

    lengths = [len(f["input_ids"]) for f in features]
    input_ids = torch.tensor([t for f in features for t in f["input_ids"]], dtype=torch.long)
    labels = torch.tensor([t for f in features for t in f["labels"]], dtype=torch.long)
    position_ids = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths])
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return {"input_ids": input_ids[None], "labels": labels[None], "position_ids": position_ids[None],
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(),
            "max_length_q": max(lengths), "max_length_k": max(lengths)}
