"""Shared helpers for the native engine's CPU tests (tests/test_engine_*.py, tests/test_bench_engine.py):
random Qwen3 / Qwen2 checkpoints shaped for the engine, transformers' fp32 greedy reference, random prompts.

The models are built by conftest.py's session fixtures `qwen3_dir` / `hf_qwen3` and `qwen2_dir` /
`hf_qwen2` (seeded, so every module sees the same weights it used to build for itself)."""
from __future__ import annotations

import random
import weakref

import torch

from qaforge.engine import SamplingParams

N_NEW = 64
GREEDY = SamplingParams(temperature=0.0, max_tokens=N_NEW, ignore_eos=True)
# references per HF model object (weakly held: an id() key could be reused by a later module's model)
_REF: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def build_random_qwen3(path) -> str:
    """A random Qwen3ForCausalLM (hidden 128, 4 layers, 4 q / 2 kv heads, head_dim 64, vocab 1000)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                      tie_word_embeddings=True, eos_token_id=2, bos_token_id=1, initializer_range=0.1)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(str(path))
    return str(path)


def build_random_qwen2(path) -> str:
    """A random Qwen2ForCausalLM shaped like Qwen2.5-0.5B in miniature: q/k/v biases, GQA (4 q / 2 kv heads),
    head_dim 64, tied embeddings, rope_theta 1e6. transformers initializes biases to zero and norms to one,
    which would let a dropped bias or a stray q/k norm pass unnoticed: both are randomized.
    (tests/qwen2_helpers.py builds the training tests' Qwen2: smaller, with a real tokenizer.)"""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=1000, hidden_size=256, intermediate_size=384, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=1e6,
                      max_position_embeddings=4096, tie_word_embeddings=True, use_sliding_window=False,
                      eos_token_id=2, bos_token_id=1, initializer_range=0.1)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.normal_(0.0, 0.5)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model.save_pretrained(str(path))
    return str(path)


def hf_reference(model_dir):
    """transformers' fp32 model of a directory, with EOS off so `generate` runs the full length."""
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    m.generation_config.eos_token_id = None
    return m


def hf_greedy(hf, prompt: list[int], n: int = N_NEW, **generate_kwargs) -> list[int]:
    """transformers' greedy `generate` continuation of `prompt` (cached per model, prompt and kwargs)."""
    refs = _REF.setdefault(hf, {})
    key = (tuple(prompt), n, tuple(sorted(generate_kwargs.items())))
    if key not in refs:
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=n, do_sample=False, pad_token_id=0, **generate_kwargs)
        refs[key] = out[0, len(prompt):].tolist()
    return refs[key]


def hf_argmax_check(hf, prompt: list[int], tokens: list[int], margin: float = 1.0) -> list[tuple[int, int, bool]]:
    """Teacher forcing on the engine's own sequence: per generated position (HF's fp32 argmax, the engine's
    token, whether HF's top two logits are more than `margin` apart, i.e. whether a miss there is a real one)."""
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + tokens], device=hf.device)).logits[0, len(prompt) - 1: -1].float()
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1] > margin).tolist()
    return list(zip(logits.argmax(-1).tolist(), tokens, clear))


def prompts_of(lengths, seed=0, vocab=1000, low=3):
    """Random prompts of the given lengths, ids in [low, vocab) (below `low`: the special ids)."""
    r = random.Random(seed)
    return [[r.randint(low, vocab - 1) for _ in range(n)] for n in lengths]


def random_block_table(ctx: list[int], bs: int, nb: int, dev, g, width: int | None = None) -> torch.Tensor:
    """A paged batch's block table: each sequence gets ceil(ctx / bs) distinct blocks drawn from a random
    permutation of `nb` (one `randperm` from `g`), rows padded with block 0 to `width` (default: the longest)."""
    nblk = [-(-c // bs) for c in ctx]
    perm = torch.randperm(nb, device=dev, generator=g)
    bt = torch.zeros(len(ctx), width or max(nblk), dtype=torch.int64, device=dev)
    off = 0
    for i, n in enumerate(nblk):
        bt[i, :n] = perm[off:off + n]
        off += n
    return bt


def mixed_meta(ctx, ql, bs, nb, dev, g):
    """A paged batch (decode rows first) and its metas: full (torch) and split into parts (Triton)."""
    from qaforge.engine.layers.attn_meta import AttnMeta
    max_blocks = -(-max(ctx) // bs)
    bt = random_block_table(ctx, bs, nb, dev, g, width=16 * (-(-max_blocks // 16)))
    cu = torch.tensor([0] + torch.tensor(ql).cumsum(0).tolist(), device=dev)
    ctx_t = torch.tensor(ctx, device=dev)
    nd = sum(1 for q in ql if q == 1)
    parts = (AttnMeta(False, None, ctx_t[:nd].clone(), bt[:nd].clone(), cu[:nd + 1].clone(), 1, max(ctx)),
             AttnMeta(True, None, ctx_t[nd:].clone(), bt[nd:].clone(), cu[nd:].clone(), max(ql[nd:]), max(ctx)))
    full = AttnMeta(True, None, ctx_t, bt, cu, max(ql), max(ctx))
    return full, AttnMeta(True, None, ctx_t, bt, cu, max(ql), max(ctx), parts)
