"""One device call: check the Triton kernels against the torch reference, check the engine against HF,
then run the engine benchmark's workloads (qaforge.bench.engine, with HF generate on W2 in the same run).
Writes JSON under $OUT. From the repository root:

    PYTHONUNBUFFERED=1 python -m scripts.bench_engine_gpu [--skip-checks] [--workloads W2,W3,W1,W1f,W4]
        [--kv-cache-dtype fp8] [--quantization fp8]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time
import traceback

import torch

from qaforge.bench import engine as bench
from qaforge.engine.layers import torch_ops
from qaforge.engine.layers.attn_meta import AttnMeta

OUT = os.environ.get("OUT", "/tmp")
MODEL = "/tmp/qwen3rand"
res: dict = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}


def section(name):
    def deco(fn):
        t0 = time.time()
        try:
            res[name] = fn()
            print(f"[{name}] {res[name]}  ({time.time() - t0:.1f}s)", flush=True)
        except Exception as e:
            traceback.print_exc()
            res[name] = f"FAILED: {type(e).__name__}: {e}"[:400]
            print(f"[{name}] FAILED {e}", flush=True)
        return fn
    return deco


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def kernel_checks():
    from qaforge.engine.layers import triton_ops as T
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    out = {}
    x = torch.randn(77, 1024, device=dev, dtype=dt, generator=g)
    r = torch.randn(77, 1024, device=dev, dtype=dt, generator=g)
    w = torch.randn(1024, device=dev, dtype=dt, generator=g)
    out["rms_norm"] = rel(T.rms_norm(x, w, 1e-6), torch_ops.rms_norm(x, w, 1e-6))
    y_ref, r_ref = torch_ops.add_rms_norm(x, r.clone(), w, 1e-6)
    r2 = r.clone()
    y, r2 = T.rms_norm(x, w, 1e-6, residual=r2)
    out["add_rms_norm"] = max(rel(y, y_ref), rel(r2, r_ref))
    gu = torch.randn(77, 6144, device=dev, dtype=dt, generator=g)
    out["silu_mul"] = rel(T.silu_mul(gu), torch_ops.silu_mul(gu))
    # fused q/k norm + rope + store
    H, KVH, D, BS, NB = 16, 8, 128, 16, 400
    Tn = 300
    qkv = torch.randn(Tn, (H + 2 * KVH) * D, device=dev, dtype=dt, generator=g)
    pos = torch.randint(0, 4000, (Tn,), device=dev, generator=g)
    slots = torch.randperm(NB * BS, device=dev, generator=g)[:Tn]
    qw = torch.randn(D, device=dev, dtype=dt, generator=g)
    kw = torch.randn(D, device=dev, dtype=dt, generator=g)
    inv = 1.0 / (1e6 ** (torch.arange(0, D, 2, dtype=torch.float) / D))
    fr = torch.arange(4096, dtype=torch.float)[:, None] * inv[None]
    emb = torch.cat((fr, fr), -1)
    cos, sin = emb.cos().to(dev), emb.sin().to(dev)
    kc1 = torch.randn(NB, BS, KVH, D, device=dev, dtype=dt, generator=g)
    vc1 = torch.randn(NB, BS, KVH, D, device=dev, dtype=dt, generator=g)
    kc2, vc2 = kc1.clone(), vc1.clone()
    q1 = torch_ops.qk_norm_rope_store(qkv, pos, slots, kc1, vc1, qw, kw, cos, sin, H, KVH, D, 1e-6)
    q2 = T.qk_norm_rope_store(qkv, pos, slots, kc2, vc2, qw, kw, cos, sin, H, KVH, D, 1e-6)
    out["qk_norm_rope_store"] = max(rel(q2, q1), rel(kc2, kc1), rel(vc2, vc1))
    # attention: prefill with prefix hits, and decode
    ctx = [37, 300, 1, 129, 1024, 700]
    ql = [37, 100, 1, 64, 1024, 3]
    nblk = [-(-c // BS) for c in ctx]
    perm = torch.randperm(NB, device=dev, generator=g)
    bt = torch.zeros(len(ctx), max(nblk), dtype=torch.int64, device=dev)
    off = 0
    for i, n in enumerate(nblk):
        bt[i, :n] = perm[off:off + n]
        off += n
    kc = torch.randn(NB + 1, BS, KVH, D, device=dev, dtype=dt, generator=g)
    vc = torch.randn(NB + 1, BS, KVH, D, device=dev, dtype=dt, generator=g)
    cu = torch.tensor([0] + list(torch.tensor(ql).cumsum(0)), device=dev)
    q = torch.randn(sum(ql), H, D, device=dev, dtype=dt, generator=g)
    ctx_t = torch.tensor(ctx, device=dev)
    meta = AttnMeta(True, None, ctx_t, bt, cu, max(ql), max(ctx))
    out["prefill_attention"] = rel(T.paged_attention(q, kc, vc, meta, D ** -0.5),
                                   torch_ops.paged_attention(q, kc, vc, meta, D ** -0.5))
    qd = torch.randn(len(ctx), H, D, device=dev, dtype=dt, generator=g)
    cud = torch.arange(len(ctx) + 1, device=dev)
    meta = AttnMeta(False, None, ctx_t, bt, cud, 1, max(ctx))
    out["decode_attention_splitk"] = rel(T.paged_attention(qd, kc, vc, meta, D ** -0.5),
                                         torch_ops.paged_attention(qd, kc, vc, meta, D ** -0.5))
    for B in (1, 40):  # one sequence (16 splits) and a batch that needs no split
        idx = torch.arange(B, device=dev) % len(ctx)
        qb = torch.randn(B, H, D, device=dev, dtype=dt, generator=g)
        mb = AttnMeta(False, None, ctx_t[idx], bt[idx], torch.arange(B + 1, device=dev), 1, max(ctx))
        if B == 1:
            mb = AttnMeta(False, None, ctx_t[4:5], bt[4:5], torch.arange(2, device=dev), 1, ctx[4])
        out[f"decode_attention_B{B}"] = rel(T.paged_attention(qb, kc, vc, mb, D ** -0.5),
                                            torch_ops.paged_attention(qb, kc, vc, mb, D ** -0.5))
    ok = all(v < 2e-2 for v in out.values())
    out["ok"] = ok
    return out


def engine_vs_hf():
    """Teacher-forced agreement: the engine's greedy tokens vs HF's argmax on the same sequence."""
    from transformers import AutoModelForCausalLM
    from qaforge.engine import LLM, SamplingParams
    r = random.Random(3)
    prompts = [[r.randint(1000, 150000) for _ in range(n)] for n in (7, 60, 130, 250)]
    n_new = 48
    out = {}
    for dtype, kw in (("float32", {}), ("bfloat16", {})):
        llm = LLM(MODEL, device="cuda", dtype=dtype, max_model_len=512, max_num_seqs=16, num_kvcache_blocks=512,
                  cuda_graph_max_bs=8, **kw)
        # run twice: the second run hits the prefix cache
        o1 = llm.generate(prompts, bench_sp(n_new))
        o2 = llm.generate(prompts, bench_sp(n_new))
        backend = llm.runner.backend
        hits = llm.stats()["prefix_cache_hit_tokens"]
        del llm
        gc.collect(); torch.cuda.empty_cache()
        hf = AutoModelForCausalLM.from_pretrained(MODEL, dtype=getattr(torch, dtype)).cuda().eval()
        agree = total = same_runs = 0
        exact = 0
        for p, a, b in zip(prompts, o1, o2):
            same_runs += int(a.token_ids == b.token_ids)
            seq = torch.tensor([p + a.token_ids], device="cuda")
            with torch.no_grad():
                pred = hf(seq).logits[0, len(p) - 1:-1].argmax(-1).tolist()
            agree += sum(int(x == y) for x, y in zip(pred, a.token_ids))
            total += len(pred)
            with torch.no_grad():
                g = hf.generate(torch.tensor([p], device="cuda"), max_new_tokens=n_new, min_new_tokens=n_new,
                                do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
            exact += next((i for i, (x, y) in enumerate(zip(g, a.token_ids)) if x != y), len(g))
        del hf
        gc.collect(); torch.cuda.empty_cache()
        out[dtype] = {"backend": backend, "teacher_forced_agreement": round(agree / total, 4),
                      "mean_equal_prefix_vs_hf_generate": exact / len(prompts), "of": n_new,
                      "rerun_identical": f"{same_runs}/{len(prompts)}", "prefix_hit_tokens": hits}
    return out


def sampling_and_async():
    """GPU sampling (seeded determinism across batches, cost vs greedy) and AsyncLLM streaming on CUDA."""
    import asyncio
    from qaforge.engine import LLM, SamplingParams
    from qaforge.engine.async_engine import AsyncLLM
    r = random.Random(5)
    ten = [[r.randint(1000, 150000) for _ in range(r.randint(60, 200))] for _ in range(10)]
    out = {}
    llm = LLM(MODEL, device="cuda", max_model_len=1024, max_num_seqs=64, num_kvcache_blocks=4096)
    sp = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, max_tokens=384, seed=11, ignore_eos=True)
    alone = llm.generate([ten[0]], SamplingParams(temperature=0.7, top_p=0.8, top_k=20, max_tokens=32, seed=11,
                                                  ignore_eos=True))[0].token_ids
    for name, params in (("greedy", bench_sp(384)), ("sampled_t0.7_p0.8_k20", sp)):
        llm.generate(ten, params)
        torch.cuda.synchronize(); t = time.perf_counter()
        o = llm.generate(ten, params)
        torch.cuda.synchronize()
        out[f"W3_{name}_s"] = round(time.perf_counter() - t, 3)
    out["seeded_same_in_batch"] = o[0].token_ids[:32] == alone
    out["distinct_sampled_outputs"] = len({tuple(x.token_ids) for x in o})
    del llm
    gc.collect(); torch.cuda.empty_cache()

    async def go():
        eng = AsyncLLM(MODEL, device="cuda", max_model_len=1024, max_num_seqs=128, num_kvcache_blocks=8192)
        await eng.start()
        prompts = [[r.randint(1000, 150000) for _ in range(r.randint(60, 200))] for _ in range(100)]

        async def one(p):
            n = 0
            async for o in eng.generate(p, bench_sp(128)):
                n += len(o.new_token_ids)
            return n
        t = time.perf_counter()
        counts = await asyncio.gather(*(one(p) for p in prompts))
        dt = time.perf_counter() - t
        st = eng.stats()
        await eng.shutdown()
        return {"requests": len(prompts), "all_complete": all(c == 128 for c in counts), "s": round(dt, 3),
                "out_tok_s": round(sum(counts) / dt), "steps": st["num_steps"]}
    out["async_100x128"] = asyncio.run(go())
    gc.collect(); torch.cuda.empty_cache()
    return out


def bench_sp(n):
    from qaforge.engine import SamplingParams
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--workloads", default="W2,W3,W1,W1f,W4")
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--cuda-graph-max-bs", type=int, default=512)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--kv-cache-dtype", default="auto", help="auto | fp8 (the native engine's KV cache)")
    ap.add_argument("--quantization", default=None, help="fp8: fp8 weights in the native engine")
    a = ap.parse_args()
    res["engine_options"] = {"kv_cache_dtype": a.kv_cache_dtype, "quantization": a.quantization}
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    t = time.time()
    bench.make_random_qwen3_06b(MODEL)
    res["make_model_s"] = round(time.time() - t, 1)
    if not a.skip_checks:
        section("kernels")(kernel_checks)
        section("engine_vs_hf")(engine_vs_hf)
        section("sampling_and_async")(sampling_and_async)
    if not a.no_hf:
        section("hf_W2")(lambda: bench.hf_w2(MODEL))
    gc.collect(); torch.cuda.empty_cache()

    @section("native")
    def _():
        return bench.run_native(MODEL, a.workloads.split(","), 1.0, device="cuda", dtype="bfloat16",
                                max_model_len=4096, max_num_seqs=a.max_num_seqs, max_num_batched_tokens=16384,
                                gpu_memory_utilization=0.85, cuda_graph_max_bs=a.cuda_graph_max_bs,
                                kv_cache_dtype=a.kv_cache_dtype, quantization=a.quantization)
    if isinstance(res.get("native"), dict):
        flat = dict(res["native"])
        if isinstance(res.get("hf_W2"), dict):
            flat["hf_W2"] = res["hf_W2"]
        print(bench.table(flat))
    with open(os.path.join(OUT, "engine_gpu.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
