"""AsyncLLM: concurrent streams batched together, equality with the sync engine, abort, stats, shutdown."""
from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # runnable before the project's pytest config exists
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncio
import random

import pytest
import torch

from qaforge.engine import LLM, SamplingParams
from qaforge.engine.async_engine import AsyncLLM, RequestOutput


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py says why


def _prompts(n, seed=0):
    r = random.Random(seed)
    return [[r.randint(3, 999) for _ in range(r.randint(4, 40))] for _ in range(n)]


async def _collect(eng, p, sp, rid=None):
    toks, outs = [], []
    async for out in eng.generate(p, sp, rid):
        assert isinstance(out, RequestOutput)
        toks.extend(out.new_token_ids)
        outs.append(out)
    return toks, outs


@pytest.mark.asyncio
async def test_concurrent_streams_match_sync_engine(qwen3_dir):
    prompts = _prompts(8)
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    ref = [o.token_ids for o in LLM(qwen3_dir, device="cpu", max_model_len=256, max_num_seqs=8).generate(prompts, sp)]
    eng = AsyncLLM(qwen3_dir, device="cpu", max_model_len=256, max_num_seqs=8)
    await eng.start()
    try:
        async def staggered(i, p):
            await asyncio.sleep(0.01 * i)
            return await _collect(eng, p, sp, f"r{i}")
        results = await asyncio.gather(*(staggered(i, p) for i, p in enumerate(prompts)))
        for (toks, outs), r in zip(results, ref):
            assert toks == r
            assert all(len(o.new_token_ids) == 1 for o in outs)          # streamed token by token
            assert outs[-1].finished and outs[-1].finish_reason == "length"
            assert not any(o.finished for o in outs[:-1])
            assert outs[-1].num_output_tokens == 24
        st = eng.stats()
        assert {"waiting", "running", "kv_usage", "num_requests", "num_preemptions"} <= set(st)
        assert st["generated_tokens"] == 8 * 24 and st["num_steps"] < 8 * 24   # requests shared steps
        assert st["running"] == 0 and st["kv_usage"] == 0.0
    finally:
        await eng.shutdown()


@pytest.mark.asyncio
async def test_abort_and_disconnect_free_the_kv_cache(qwen3_dir):
    eng = AsyncLLM(qwen3_dir, device="cpu", max_model_len=256, max_num_seqs=4)
    await eng.start()
    try:
        long = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
        p = _prompts(2, seed=1)

        async def abort_after(n):
            got = []
            async for out in eng.generate(p[0], long, "victim"):
                got.append(out)
                if len(got) == n:
                    await eng.abort("victim")
            return got

        got = await abort_after(3)
        assert got[-1].finished and got[-1].finish_reason == "abort" and len(got) < 200
        # a client that stops reading (closes the stream) aborts its request too
        agen = eng.generate(p[1], long, "gone")
        await agen.__anext__()
        await agen.aclose()
        for _ in range(200):
            st = eng.stats()
            if st["running"] == 0 and st["waiting"] == 0:
                break
            await asyncio.sleep(0.01)
        assert st["running"] == 0 and st["kv_usage"] == 0.0
        with pytest.raises(ValueError):
            async for _ in eng.generate([], long):
                pass
        # still serving after all that
        toks, _ = await _collect(eng, p[0], SamplingParams(temperature=0.0, max_tokens=5))
        assert len(toks) == 5
    finally:
        await eng.shutdown()


@pytest.mark.asyncio
async def test_many_concurrent_requests_and_drain(qwen3_dir):
    eng = AsyncLLM(qwen3_dir, device="cpu", max_model_len=128, max_num_seqs=16, num_kvcache_blocks=24)
    await eng.start()
    prompts = _prompts(40, seed=2)
    sp = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, ignore_eos=True, seed=1)
    tasks = [asyncio.create_task(_collect(eng, p, sp)) for p in prompts]
    await asyncio.sleep(0.05)
    await eng.shutdown(drain=True)
    results = await asyncio.gather(*tasks)
    assert all(len(t) == 16 and o[-1].finish_reason == "length" for t, o in results)
    assert eng.stats()["num_preemptions"] >= 0


@pytest.mark.asyncio
async def test_errors_before_start_and_duplicate_ids(qwen3_dir):
    eng = AsyncLLM(qwen3_dir, device="cpu", max_model_len=64, max_num_seqs=2)
    with pytest.raises(RuntimeError):
        async for _ in eng.generate([1, 2, 3]):
            pass
    with pytest.raises(ValueError):
        AsyncLLM(qwen3_dir, device="cpu", dtype="int4")
    await eng.start()
    try:
        sp = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
        first = eng.generate([5, 6, 7], sp, "same")
        await first.__anext__()
        with pytest.raises(ValueError):
            async for _ in eng.generate([5, 6, 7], sp, "same"):
                pass
        rest = [o async for o in first]
        assert rest[-1].finished and sum(len(o.new_token_ids) for o in rest) == 29
        with pytest.raises(ValueError):  # prompt too long for max_model_len
            async for _ in eng.generate([1] * 64, sp):
                pass
    finally:
        await eng.shutdown()
