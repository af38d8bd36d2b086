"""Shared helpers for tests/test_train_*.py: a throwaway random Qwen3 and a small QA dataset.

The random model (hidden 64, 2 layers, 2 query heads / 1 KV head of dim 64: GQA like Qwen3) is
for exactness tests, where the weights' values do not matter and speed does. End-to-end tests use
the project's tiny model (session fixture `tiny_model_dir`) when tests/conftest.py provides it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from qaforge.paths import DEFAULT_CORPUS_DIR

QUESTIONS = [
    ("什么是CUDA中的warp？", "warp是GPU上一起调度的32个线程（thread），它们以SIMT方式执行同一条指令。"),
    ("What is shared memory?", "Shared memory is an on-chip scratchpad shared by the threads of a block."),
    ("解释全局内存合并访问。", "当一个warp的线程访问连续地址时，硬件把请求合并（coalescing）成少量事务。"),
    ("什么是线程块？", "线程块（block）是一组可以同步并共享shared memory的线程。"),
    ("为什么要避免分支发散？", "同一warp内的分支发散（divergence）会让不同路径串行执行，降低吞吐。"),
    ("What does __syncthreads do?", "__syncthreads is a barrier: every thread of the block waits there."),
    ("什么是占用率？", "占用率（occupancy）是SM上活跃warp数与最大warp数之比。"),
    ("What is a kernel launch?", "A kernel launch runs a grid of thread blocks on the GPU."),
]


def write_qa_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """n alpaca lines built from QUESTIONS with a numbered suffix, so questions are distinct."""
    rng = random.Random(seed)
    difficulties = ["easy", "medium", "hard"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            q, a = QUESTIONS[i % len(QUESTIONS)]
            repeat = 1 + rng.randrange(3)
            f.write(json.dumps({"instruction": f"{q} ({i})", "input": "", "output": " ".join([a] * repeat),
                                "difficulty": difficulties[i % 3], "topic": "cuda", "chapter": 1 + i % 5},
                               ensure_ascii=False) + "\n")
    return path


def special_ids(tokenizer) -> tuple[int, int]:
    """(eos, pad): Qwen3's <|im_end|> and <|endoftext|>, as the random models' configs use them."""
    return tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")


def save_checkpoint(model, tokenizer, out_dir: Path) -> Path:
    """A random model as a checkpoint: weights, tokenizer, and a greedy generation config that stops at
    either special end token."""
    from transformers import GenerationConfig

    eos, pad = special_ids(tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, do_sample=False).save_pretrained(out_dir)
    return out_dir


def build_random_qwen3(out_dir: Path, seed: int = 0) -> Path:
    """A random-weight Qwen3 (fp32) with a small byte-level BPE tokenizer and Qwen3's chat template."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from qaforge.tiny import read_corpus_text, train_tokenizer

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists():
        return out_dir
    texts = read_corpus_text(DEFAULT_CORPUS_DIR)[:3] + [q + a for q, a in QUESTIONS]
    tokenizer = train_tokenizer(texts, vocab_size=1024)
    eos, pad = special_ids(tokenizer)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                         max_position_embeddings=1024, rope_theta=1_000_000.0, tie_word_embeddings=True,
                         bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(seed)
    return save_checkpoint(Qwen3ForCausalLM(config), tokenizer, out_dir)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    """Session-wide random Qwen3 (built once per session: the directory is reused across modules)."""
    return build_random_qwen3(tmp_path_factory.getbasetemp() / "train_random_qwen3")


@pytest.fixture(scope="session")
def qa_files(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.getbasetemp() / "train_qa"
    base.mkdir(exist_ok=True)
    return write_qa_jsonl(base / "train.jsonl", 48, seed=0), write_qa_jsonl(base / "exam.jsonl", 9, seed=1)
