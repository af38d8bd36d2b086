"""Native engine (qaforge.engine) on CPU: greedy equality with transformers, prefix cache, preemption,
sampling, stop conditions, validation, block manager and the vectorized paged attention."""
from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # runnable before the project's pytest config exists
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch

from engine_helpers import GREEDY, N_NEW, hf_greedy, prompts_of
from qaforge.engine import LLM, SamplingParams
from qaforge.engine.block_manager import BlockManager
from qaforge.engine.config import EngineConfig
from qaforge.engine.layers import torch_ops
from qaforge.engine.layers.attn_meta import AttnMeta
from qaforge.engine.sequence import Sequence

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py says why


def test_greedy_matches_transformers_batch(qwen3_dir, hf_qwen3):
    prompts = prompts_of([5, 17, 33, 50, 1])
    llm = LLM(qwen3_dir, device="cpu", dtype="float32", max_model_len=512, max_num_seqs=8)
    outs = llm.generate(prompts, GREEDY)
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(hf_qwen3, p)
        assert o.finish_reason == "length" and len(o.token_ids) == N_NEW
        assert o.prompt_token_ids == p
    st = llm.stats()
    assert st["running"] == st["waiting"] == 0 and st["kv_blocks_free"] == st["kv_blocks_total"]


def test_prefix_cache_hits_match_transformers(qwen3_dir, hf_qwen3):
    shared = prompts_of([40], seed=1)[0]
    tails = prompts_of([3, 9, 16, 1], seed=2)
    prompts = [shared + t for t in tails] + [shared[:32]]  # the last one is exactly two blocks long
    llm = LLM(qwen3_dir, device="cpu", dtype="float32", max_model_len=512, max_num_seqs=8, block_size=16)
    first = llm.generate(prompts, GREEDY)          # hits inside one prefill batch
    hits1 = llm.stats()["prefix_cache_hit_tokens"]
    second = llm.generate(prompts, GREEDY)         # hits on freed, still-cached blocks
    hits2 = llm.stats()["prefix_cache_hit_tokens"] - hits1
    assert hits1 >= 2 * 16 * 3                       # 4 sequences share 2 full blocks; the first computes them
    assert hits2 > hits1
    assert max(o.num_cached_tokens for o in second) >= 48  # whole prompt blocks hit
    for p, a, b in zip(prompts, first, second):
        ref = hf_greedy(hf_qwen3, p)
        assert a.token_ids == ref
        assert b.token_ids == ref


def test_preemption_with_tiny_kv_cache_matches_transformers(qwen3_dir, hf_qwen3):
    prompts = prompts_of([20, 35, 28, 41], seed=3)
    llm = LLM(qwen3_dir, device="cpu", dtype="float32", max_model_len=128, max_num_seqs=4, block_size=16,
              num_kvcache_blocks=10)
    outs = llm.generate(prompts, GREEDY)
    assert llm.stats()["num_preemptions"] > 0
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(hf_qwen3, p)
    assert llm.stats()["kv_blocks_free"] == 10


def test_prefix_cache_off_and_block_size_8(qwen3_dir, hf_qwen3):
    prompts = prompts_of([12, 30], seed=4)
    llm = LLM(qwen3_dir, device="cpu", max_model_len=256, max_num_seqs=2, block_size=8, enable_prefix_caching=False)
    for p, o in zip(prompts, llm.generate(prompts + prompts, GREEDY)):
        assert o.token_ids == hf_greedy(hf_qwen3, p)
    assert llm.stats()["prefix_cache_hit_tokens"] == 0


def test_sampling_seeded_top_k_top_p(qwen3_dir):
    llm = LLM(qwen3_dir, device="cpu", max_model_len=256, max_num_seqs=8)
    p = prompts_of([10, 20, 7], seed=5)
    greedy = [o.token_ids for o in llm.generate(p, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))]
    sp = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_tokens=16, seed=7, ignore_eos=True)
    alone = llm.generate([p[0]], sp)[0].token_ids
    mixed = llm.generate(p, [sp, SamplingParams(temperature=0.8, max_tokens=5, ignore_eos=True),
                             SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)])
    assert mixed[0].token_ids == alone                  # a seed gives the same tokens whatever the batch
    assert mixed[2].token_ids == greedy[2]              # greedy rows stay greedy in a sampled batch
    other = llm.generate([p[0]], SamplingParams(temperature=1.0, max_tokens=16, seed=8, ignore_eos=True))[0]
    assert other.token_ids != alone
    top1 = llm.generate(p, SamplingParams(temperature=1.0, top_k=1, max_tokens=16, ignore_eos=True))
    assert [o.token_ids for o in top1] == greedy
    tiny_p = llm.generate(p, SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=16, ignore_eos=True))
    assert [o.token_ids for o in tiny_p] == greedy
    hot = llm.generate([p[1]] * 4, SamplingParams(temperature=2.0, max_tokens=16, ignore_eos=True))
    assert all(0 <= t < 1000 for o in hot for t in o.token_ids)
    assert len({tuple(o.token_ids) for o in hot}) > 1


def test_stop_conditions(qwen3_dir, hf_qwen3):
    p = prompts_of([15], seed=6)[0]
    ref = hf_greedy(hf_qwen3, p)
    stop = ref[5]
    first = ref.index(stop)
    llm = LLM(qwen3_dir, device="cpu", max_model_len=256, max_num_seqs=4)
    o = llm.generate([p], SamplingParams(temperature=0, max_tokens=64, stop_token_ids=[stop]))[0]
    assert o.finish_reason == "stop" and o.token_ids == ref[: first + 1]
    o = llm.generate([p], SamplingParams(temperature=0, max_tokens=7))[0]
    assert o.finish_reason == "length" and o.token_ids == ref[:7]
    # the model's EOS (config eos_token_id=2) stops a request unless ignore_eos
    assert llm.eos_token_ids == (2,)
    llm.scheduler.eos_token_ids = frozenset([stop])
    o = llm.generate([p], SamplingParams(temperature=0, max_tokens=64))[0]
    assert o.finish_reason == "stop" and o.token_ids[-1] == stop
    o = llm.generate([p], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
    assert o.finish_reason == "length" and len(o.token_ids) == 12
    # max_model_len caps prompt + output
    short = LLM(qwen3_dir, device="cpu", max_model_len=32, max_num_seqs=2)
    o = short.generate([p], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))[0]
    assert o.finish_reason == "length" and len(p) + len(o.token_ids) == 32


def test_validation(qwen3_dir):
    llm = LLM(qwen3_dir, device="cpu", max_model_len=64, max_num_seqs=2)
    for bad in ([], [1] * 64, [1, 1000], [1, -1], [1, 2.0]):
        with pytest.raises(ValueError):
            llm.generate([bad], SamplingParams(max_tokens=4))
    for kw in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**kw)
    assert SamplingParams(top_k=-1).top_k == 0
    with pytest.raises(ValueError):
        EngineConfig(model=qwen3_dir, dtype="int8")
    with pytest.raises(ValueError):
        EngineConfig(model=qwen3_dir, device="tpu")
    with pytest.raises(ValueError):
        EngineConfig(model=qwen3_dir, max_model_len=10**6)
    with pytest.raises(ValueError):
        EngineConfig(model=qwen3_dir, max_model_len=256, num_kvcache_blocks=3)
    with pytest.raises(ValueError):
        EngineConfig(model="/nonexistent")
    cfg = EngineConfig(model=qwen3_dir, device="cpu", max_model_len=4096, max_num_batched_tokens=100,
                       enable_chunked_prefill=False)
    assert cfg.max_num_batched_tokens == 4096 and cfg.dtype == "float32"  # whole prompts must fit one step
    cfg = EngineConfig(model=qwen3_dir, device="cpu", max_model_len=4096, max_num_batched_tokens=100,
                       enable_chunked_prefill=True)
    assert cfg.max_num_batched_tokens == 100 and cfg.enable_chunked_prefill  # chunked: a budget, not a cap
    with pytest.raises(ValueError, match="enable_chunked_prefill"):
        EngineConfig(model=qwen3_dir, device="cpu", enable_chunked_prefill="yes")
    assert len(llm.generate([1, 2, 3], SamplingParams(max_tokens=3))) == 1  # a single prompt


def test_block_manager_prefix_hash_refcount_lru():
    bm = BlockManager(num_blocks=6, block_size=4, max_num_seqs=4, max_blocks_per_seq=4)
    sp = SamplingParams()
    a = Sequence(list(range(10)), sp)
    b = Sequence(list(range(8)) + [99], sp)
    bm.allocate(a)
    assert a.num_cached_tokens == 0 and len(a.block_table) == 3 and bm.num_free_blocks == 3
    bm.allocate(b)
    assert b.num_cached_tokens == 8 and b.block_table[:2] == a.block_table[:2]
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    assert list(bm.table[b.row, :3]) == b.block_table
    bm.deallocate(a)
    assert [bm.blocks[i].ref_count for i in b.block_table] == [1, 1, 1]
    bm.deallocate(b)
    assert bm.num_free_blocks == 6 and bm.usage == 0.0
    c = Sequence(list(range(8)), sp)  # exactly two blocks: only the first may hit (the last token is computed)
    bm.allocate(c)
    assert c.num_cached_tokens == 4
    # decode appends: a new block when the last one is full, a hash once a block fills up
    d = Sequence([7, 7, 7], sp)
    bm.allocate(d)
    for t in range(6):
        d.token_ids.append(t)
        assert bm.can_append(d)
        bm.may_append(d)
    assert len(d.block_table) == d.num_blocks(4) == 3
    assert bm.blocks[d.block_table[1]].hash != -1


def _naive_attention(q, kc, vc, ctx, qlens, bts, scale):
    outs, off = [], 0
    bs, kvh = kc.shape[1], kc.shape[2]
    H = q.shape[1]
    for c, ql, bt in zip(ctx, qlens, bts):
        pos = torch.arange(c)
        slots = torch.tensor(bt)[pos // bs] * bs + pos % bs
        k = kc.view(-1, kvh, kc.shape[-1])[slots].repeat_interleave(H // kvh, 1)
        v = vc.view(-1, kvh, kc.shape[-1])[slots].repeat_interleave(H // kvh, 1)
        qq = q[off: off + ql]
        s = torch.einsum("qhd,khd->hqk", qq.double(), k.double()) * scale
        qpos = torch.arange(c - ql, c)
        s = s.masked_fill(pos[None, None, :] > qpos[None, :, None], float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), v.double()))
        off += ql
    return torch.cat(outs)


def test_vectorized_paged_attention_matches_naive():
    g = torch.Generator().manual_seed(0)
    H, KVH, D, BS, NB = 4, 2, 64, 8, 40
    kc = torch.randn(NB, BS, KVH, D, generator=g)
    vc = torch.randn(NB, BS, KVH, D, generator=g)
    ctx, qlens = [5, 30, 17, 1, 64], [5, 11, 1, 1, 40]
    perm = torch.randperm(NB, generator=g).tolist()
    bts, i = [], 0
    for c in ctx:
        n = -(-c // BS)
        bts.append(perm[i:i + n])
        i += n
    width = max(map(len, bts))
    bt = torch.tensor([b + [0] * (width - len(b)) for b in bts])
    q = torch.randn(sum(qlens), H, D, generator=g)
    cu = torch.tensor([0] + torch.tensor(qlens).cumsum(0).tolist())
    meta = AttnMeta(True, None, torch.tensor(ctx), bt, cu, max(qlens), max(ctx))
    out = torch_ops.paged_attention(q, kc, vc, meta, D ** -0.5)
    ref = _naive_attention(q, kc, vc, ctx, qlens, bts, D ** -0.5)
    assert out.shape == ref.shape
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_tiny_model_greedy_matches_transformers(request):
    """On the project's embedded tiny model (when tests/conftest.py provides it)."""
    try:
        tiny = request.getfixturevalue("tiny_model_dir")
    except pytest.FixtureLookupError:
        pytest.skip("tiny_model_dir fixture not available")
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    vocab = hf.config.vocab_size
    prompts = prompts_of([9, 40, 23], seed=9, vocab=vocab)
    llm = LLM(str(tiny), device="cpu", dtype="float32", max_model_len=512, max_num_seqs=4)
    for p, o in zip(prompts, llm.generate(prompts, GREEDY)):
        assert o.token_ids == hf_greedy(hf, p)


def test_sampler_chunks_large_batches(qwen3_dir, monkeypatch):
    from qaforge.engine.sampler import Sampler
    monkeypatch.setattr(Sampler, "CHUNK", 2)
    llm = LLM(qwen3_dir, device="cpu", max_model_len=128, max_num_seqs=8)
    p = prompts_of([5, 6, 7, 8, 9], seed=10)
    sp = SamplingParams(temperature=0.9, top_k=20, max_tokens=6, seed=3, ignore_eos=True)
    batched = [o.token_ids for o in llm.generate(p, sp)]
    alone = [llm.generate([q], sp)[0].token_ids for q in p]
    assert batched == alone
