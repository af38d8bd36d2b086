"""How many distinct batch shapes fast_v7 compiles for, with random batches and with length-grouped ones.

    python -m scripts.bench_train.shapes --tokenizer /work/main/.tok --data ../shared/seed_data/pmpp_qa_v2.jsonl

Tokenises the data as a run does (qaforge.train.data.ChatEncoder, max_seq_len 512), draws fast_v7's batches
(16 samples, 2 epochs; torch's RandomSampler as the Trainer, or transformers' LengthGroupedSampler, which keeps
every row once per epoch but puts rows of similar length together) and counts, per batching:
* packed rows (qaforge): distinct row lengths T, and distinct padded lengths at pad multiples 64 / 512 (each one
  a CUDA-graph recording when graphs are on);
* padded rows (plain HF + PEFT): distinct [16, longest] shapes (each a recompile for torch.compile without
  dynamic shapes) and the share of padding tokens.
CPU only, seconds; the tokenizer and the data are read, never copied.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

BATCH, EPOCHS, SEED = 16, 2, 42


def lengths_of(tokenizer_dir: str, data: str, max_seq_len: int = 512) -> list[int]:
    from transformers import AutoTokenizer

    from qaforge.dataset import read_records
    from qaforge.train.data import ChatEncoder

    samples, _ = ChatEncoder(AutoTokenizer.from_pretrained(tokenizer_dir), max_seq_len=max_seq_len).encode_records(
        read_records(data))
    return [len(s) for s in samples]


def batches(lengths: list[int], grouped: bool) -> list[list[int]]:
    """The index batches of EPOCHS epochs, as the Trainer's sampler would draw them."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    generator = torch.Generator().manual_seed(SEED)
    out = []
    for _ in range(EPOCHS):
        if grouped:
            order = list(LengthGroupedSampler(BATCH, lengths=lengths, generator=generator))
        else:
            order = torch.randperm(len(lengths), generator=generator).tolist()
        out += [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    return out


def count(lengths: list[int], grouped: bool) -> dict:
    rows = batches(lengths, grouped)
    packed = [sum(lengths[i] for i in b) for b in rows]
    padded = [(len(b), max(lengths[i] for i in b)) for b in rows]
    real = sum(packed)
    padded_tokens = sum(n * longest for n, longest in padded)
    seen = sorted(i for b in rows for i in b)
    return {"steps": len(rows), "every_row_once_per_epoch": seen == sorted(list(range(len(lengths))) * EPOCHS),
            "packed_distinct_T": len(set(packed)),
            "packed_distinct_pad64": len({-(-t // 64) for t in packed}),
            "packed_distinct_pad512": len({-(-t // 512) for t in packed}),
            "packed_T_median": statistics.median(packed), "packed_T_min_max": [min(packed), max(packed)],
            "padded_distinct_shapes": len(set(padded)),
            "padded_padding_share": round(1 - real / padded_tokens, 3)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_train.shapes", description=__doc__)
    parser.add_argument("--tokenizer", required=True, help="a Qwen tokenizer folder (with its chat template)")
    parser.add_argument("--data", required=True, help="alpaca jsonl (the seed data)")
    args = parser.parse_args(argv)
    lengths = lengths_of(args.tokenizer, args.data)
    result = {"rows": len(lengths), "length_median": statistics.median(lengths),
              "random": count(lengths, grouped=False), "length_grouped": count(lengths, grouped=True)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
