"""One device call: check the Triton kernels against the torch reference (the mixed-step split included),
check the engine against HF (chunked and not), time startup cold and warm in fresh processes, then run the
workloads (qaforge.bench.engine's W1, W1f, W2, W3, W4 and G193: 193 questions behind an 80-token shared
prefix) once per engine configuration (chunked prefill on / off by default) and print one table.
Writes $OUT/engine_gpu.json. From the repository root:

    PYTHONUNBUFFERED=1 python -m scripts.bench_engine_gpu [--skip-checks] [--configs chunked,whole]
        [--kv-cache-dtype fp8] [--quantization fp8]      (applied to every configuration)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from qaforge.bench import engine as bench
from qaforge.engine.layers import torch_ops
from qaforge.engine.layers.attn_meta import AttnMeta

# the engine tests' helpers: their paged test batches and their HF teacher-forcing check
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from engine_helpers import hf_argmax_check, mixed_meta, random_block_table  # noqa: E402

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
    bt = random_block_table(ctx, BS, NB, dev, g)
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
    # a mixed step: decode rows first (decode kernel), then prompt chunks (varlen kernel), one call
    for name, (cx, qx) in {"mixed_small": ([300, 1, 129, 77, 1024], [1, 1, 1, 64, 200]),
                           "mixed_40_decodes": ([2000] * 40 + [700], [1] * 40 + [300])}.items():
        nbm = sum(-(-c // BS) for c in cx) + 10
        kcm = torch.randn(nbm + 1, BS, KVH, D, device=dev, dtype=dt, generator=g)
        vcm = torch.randn_like(kcm)
        full, mixed = mixed_meta(cx, qx, BS, nbm, dev, g)
        qm = torch.randn(sum(qx), H, D, device=dev, dtype=dt, generator=g)
        out[f"attention_{name}"] = rel(T.paged_attention(qm, kcm, vcm, mixed, D ** -0.5),
                                       torch_ops.paged_attention(qm, kcm, vcm, full, D ** -0.5))
    ok = all(v < 2e-2 for v in out.values())
    out["ok"] = ok
    return out


def engine_vs_hf():
    """Teacher-forced agreement: the engine's greedy tokens vs HF's argmax on the same sequence."""
    from transformers import AutoModelForCausalLM
    from qaforge.engine import LLM
    r = random.Random(3)
    prompts = [[r.randint(1000, 150000) for _ in range(n)] for n in (7, 60, 130, 250)]
    n_new = 48
    out, toks = {}, {}
    for dtype, kw in (("float32", {}), ("bfloat16", {}), ("bfloat16_chunk64", {"max_num_batched_tokens": 64}),
                      ("bfloat16_whole", {"enable_chunked_prefill": False})):
        dtype, label = dtype.split("_")[0], dtype
        llm = LLM(MODEL, device="cuda", dtype=dtype, max_model_len=512, max_num_seqs=16, num_kvcache_blocks=512,
                  cuda_graph_max_bs=8, **kw)
        # run twice: the second run hits the prefix cache
        o1 = llm.generate(prompts, bench.greedy_budget(n_new))
        o2 = llm.generate(prompts, bench.greedy_budget(n_new))
        backend = llm.runner.backend
        hits = llm.stats()["prefix_cache_hit_tokens"]
        del llm
        gc.collect(); torch.cuda.empty_cache()
        hf = AutoModelForCausalLM.from_pretrained(MODEL, dtype=getattr(torch, dtype)).cuda().eval()
        toks[label] = [o.token_ids for o in o1]
        agree = total = same_runs = 0
        exact = 0
        for p, a, b in zip(prompts, o1, o2):
            same_runs += int(a.token_ids == b.token_ids)
            agree += sum(int(want == got) for want, got, _ in hf_argmax_check(hf, p, a.token_ids))
            total += len(a.token_ids)
            with torch.no_grad():
                g = hf.generate(torch.tensor([p], device="cuda"), max_new_tokens=n_new, min_new_tokens=n_new,
                                do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
            exact += next((i for i, (x, y) in enumerate(zip(g, a.token_ids)) if x != y), len(g))
        del hf
        gc.collect(); torch.cuda.empty_cache()
        out[label] = {"backend": backend, "teacher_forced_agreement": round(agree / total, 4),
                      "mean_equal_prefix_vs_hf_generate": exact / len(prompts), "of": n_new,
                      "rerun_identical": f"{same_runs}/{len(prompts)}", "prefix_hit_tokens": hits}
    for label in ("bfloat16_chunk64", "bfloat16_whole"):  # greedy tokens equal to the default's, per prompt
        out[f"{label}_same_tokens_as_default"] = f"{sum(a == b for a, b in zip(toks[label], toks['bfloat16']))}/4"
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
    for name, params in (("greedy", bench.greedy_budget(384)), ("sampled_t0.7_p0.8_k20", sp)):
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
            async for o in eng.generate(p, bench.greedy_budget(128)):
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


STARTUP = """
import json, os, sys, time
t0 = time.perf_counter()
import torch
from qaforge.engine import LLM, SamplingParams
t1 = time.perf_counter()
llm = LLM(sys.argv[1], device="cuda", **json.loads(sys.argv[2]))
t2 = time.perf_counter()
llm.generate([[1000 + i for i in range(100)]] * 4, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
torch.cuda.synchronize()
t3 = time.perf_counter()
print("STARTUP " + json.dumps({"import_s": round(t1 - t0, 2), "engine_s": round(t2 - t1, 2),
      "first_generate_s": round(t3 - t2, 2), "ready_s": round(t3 - t0, 2), **{"engine": llm.startup}}))
"""


def startup_cold_warm(engine_kw: dict) -> dict:
    """Process start to a served request, in a fresh process: with an empty Triton cache (cold: what a
    fresh grading machine pays) and again with the cache it left (warm)."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        for name in ("cold", "warm"):
            p = subprocess.run([sys.executable, "-c", STARTUP, MODEL, json.dumps(engine_kw)], env=env,
                               capture_output=True, text=True, timeout=300)
            line = next((x for x in p.stdout.splitlines() if x.startswith("STARTUP ")), None)
            out[name] = json.loads(line[8:]) if line else f"FAILED rc={p.returncode}: {p.stderr[-400:]}"
    return out


def g193(vocab: int):
    """193 grader questions behind one 80-token system prompt, 15-60 tokens each, 384 tokens out."""
    r = random.Random(193)
    prefix = [r.randint(1000, 150000) % vocab for _ in range(80)]
    return [prefix + [r.randint(1000, 150000) % vocab for _ in range(r.randint(15, 60))] for _ in range(193)]


def run_config(name: str, names: list[str], engine_kw: dict) -> dict:
    from qaforge.engine import LLM
    t0 = time.perf_counter()
    llm = LLM(MODEL, **engine_kw)
    res = {"startup_s": round(time.perf_counter() - t0, 2), "startup": llm.startup,
           "kv_blocks": llm.runner.num_blocks, "backend": llm.runner.backend}
    res["graphs_rest_s"] = round(llm.runner.capture_remaining(), 2)  # steady state from the first step
    wl = bench.workloads(llm.vocab_size, 1.0)
    wl["G193"] = (g193(llm.vocab_size), [384] * 193)
    # G193: the second pass is timed (its prefix is cached), as the anchors do
    res.update(bench.time_workloads(llm, wl, names, name, rerun=("W2", "G193")))
    res["stats"] = llm.stats()
    del llm
    gc.collect(); torch.cuda.empty_cache()
    return res


CONFIGS = {"chunked": {"enable_chunked_prefill": True}, "whole": {"enable_chunked_prefill": False},
           "chunked8k": {"enable_chunked_prefill": True, "max_num_batched_tokens": 8192},
           "seqs512": {"enable_chunked_prefill": True, "max_num_seqs": 512},
           "whole_async": {"enable_chunked_prefill": False, "async_scheduling": True}}


def compare_table(runs: dict) -> str:
    names = list(runs)
    rows = [["workload"] + names + ([f"{names[0]} / {names[1]}"] if len(names) > 1 else [])]
    for w, key, unit, higher in (("W1", "out_tok_s", "tok/s", True), ("W1f", "out_tok_s", "tok/s", True),
                                 ("W2", "ms_per_tok", "ms/tok", False), ("W3", "s", "s", False),
                                 ("W4", "out_tok_s", "tok/s", True), ("G193", "s", "s", False)):
        vals = [runs[n].get(w, {}).get(key) if isinstance(runs[n], dict) else None for n in names]
        if all(v is None for v in vals):
            continue
        row = [w] + [f"{v:,} {unit}" if v is not None else "-" for v in vals]
        if len(names) > 1 and vals[0] and vals[1]:
            ratio = vals[0] / vals[1] if higher else vals[1] / vals[0]
            row.append(f"{ratio:.3f}x {'better' if ratio >= 1 else 'worse'}")
        rows.append(row)
    rows.append(["startup (in process)"] + [f"{runs[n].get('startup_s', '-')} s" if isinstance(runs[n], dict)
                                            else "-" for n in names])
    w = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(len(rows[0]))]
    return "\n".join(" | ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--workloads", default="W2,W3,W1,W1f,W4,G193")
    ap.add_argument("--configs", default="chunked,whole", help=f"from {','.join(CONFIGS)}; the first two are compared")
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--cuda-graph-max-bs", type=int, default=512)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--kv-cache-dtype", default="auto", help="auto | fp8 (the native engine's KV cache)")
    ap.add_argument("--quantization", default=None, help="fp8: fp8 weights in the native engine")
    a = ap.parse_args()
    res["engine_options"] = {"kv_cache_dtype": a.kv_cache_dtype, "quantization": a.quantization}
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    res["card"] = torch.cuda.get_device_name(0)
    t = time.time()
    bench.make_random_qwen3_06b(MODEL)
    res["make_model_s"] = round(time.time() - t, 1)
    base = dict(device="cuda", dtype="bfloat16", max_model_len=4096, max_num_seqs=a.max_num_seqs,
                max_num_batched_tokens=16384, gpu_memory_utilization=0.85, cuda_graph_max_bs=a.cuda_graph_max_bs,
                kv_cache_dtype=a.kv_cache_dtype, quantization=a.quantization)
    gc.collect(); torch.cuda.empty_cache()  # the fresh processes below get the card to themselves
    if not a.no_startup:
        kw = {k: v for k, v in base.items() if k != "device"}
        section("startup_fresh_process")(lambda: startup_cold_warm(kw))
    if not a.skip_checks:
        section("kernels")(kernel_checks)
        section("engine_vs_hf")(engine_vs_hf)
        section("sampling_and_async")(sampling_and_async)
    if not a.no_hf:
        section("hf_W2")(lambda: bench.hf_w2(MODEL))
    gc.collect(); torch.cuda.empty_cache()
    runs = {}
    for name in a.configs.split(","):
        kw = dict(base, **CONFIGS[name])
        section(f"native_{name}")(lambda: run_config(name, a.workloads.split(","), kw))
        runs[name] = res[f"native_{name}"]
    table = compare_table(runs)
    print(table)
    res["table"] = table
    with open(os.path.join(OUT, "engine_gpu.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
