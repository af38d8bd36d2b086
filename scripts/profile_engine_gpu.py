"""Where does a decode step's time go? (device call; writes $OUT/engine_profile.json)

    python -m scripts.profile_engine_gpu [--sweep]     # from the repository root

Times the paged-decode kernel over block sizes / warps / stages at several (batch, context) shapes with its
achieved KV bandwidth, the graph replay alone vs a whole engine step at several batch sizes, and W1's prefill.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time

import torch

from qaforge.bench import engine as bench

OUT = os.environ.get("OUT", "/tmp")
MODEL = "/tmp/qwen3rand"
res: dict = {}


def decode_kernel_sweep():
    import triton
    from triton.testing import do_bench
    from qaforge.engine.layers import triton_ops as T
    KVH, D, G, PAGE = 8, 128, 2, 16
    out = {}
    for B, ctx in ((1, 384), (16, 1500), (256, 1000), (1024, 320)):
        nb = -(-ctx // PAGE)
        NB = B * nb + 1
        kc = torch.randn(NB, PAGE, KVH, D, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        bt = torch.randperm(NB - 1, device="cuda")[: B * nb].view(B, nb)
        q = torch.randn(B, KVH * G, D, device="cuda", dtype=torch.bfloat16)
        o = torch.empty_like(q)
        cl = torch.full((B,), ctx, device="cuda", dtype=torch.int64)
        gb = B * ctx * KVH * D * 2 * 2 / 1e9
        rows = {}
        for bn in (32, 64, 128):
            for w in (4, 8):
                for st in (1, 2, 3):
                    fn = lambda: T._decode_kernel[(B, KVH)](q, kc, vc, bt, cl, o, D ** -0.5, bt.stride(0), KVH=KVH,
                                                           GROUP=G, GP=16, D=D, PAGE=PAGE, BLOCK_N=bn,
                                                           num_warps=w, num_stages=st)
                    try:
                        ms = do_bench(fn, warmup=10, rep=40, return_mode="median")
                        rows[f"n{bn}_w{w}_s{st}"] = (round(ms * 1000, 1), round(gb / ms, 0))  # us, GB/s
                    except Exception as e:
                        rows[f"n{bn}_w{w}_s{st}"] = str(e)[:80]
        best = min((v for v in rows.values() if isinstance(v, tuple)), key=lambda x: x[0])
        out[f"B{B}_ctx{ctx}"] = {"current_n64_w4_s2": rows.get("n64_w4_s2"), "best": best,
                                 "best_cfg": [k for k, v in rows.items() if v == best][0], "all": rows}
        print(f"[decode B{B} ctx{ctx}] current {rows.get('n64_w4_s2')} best {best} {out[f'B{B}_ctx{ctx}']['best_cfg']}", flush=True)
        del kc, vc
    return out


def step_breakdown(llm):
    from qaforge.engine import SamplingParams
    r = random.Random(7)
    out = {}
    for B, plen in ((1, 128), (16, 1000), (256, 800)):
        prompts = [[r.randint(1000, 150000) for _ in range(plen)] for _ in range(B)]
        seqs = [llm.add_request(p, SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)) for p in prompts]
        while llm.scheduler.waiting:
            llm.step()  # prefill
        for _ in range(5):
            llm.step()
        torch.cuda.synchronize()
        n = 30
        t = time.perf_counter()
        for _ in range(n):
            llm.step()
        step_ms = (time.perf_counter() - t) / n * 1000
        runner = llm.runner
        bs = next(s for s in runner.graph_sizes if s >= B)
        if bs not in runner.graphs:
            runner._capture(bs)  # sizes above the startup ones are captured on first use
        g = runner.graphs[bs]
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(n):
            g.replay()
        e1.record()
        torch.cuda.synchronize()
        replay_ms = e0.elapsed_time(e1) / n
        seqs_run = list(llm.scheduler.running)
        t = time.perf_counter()
        for _ in range(n):
            runner.prepare_decode(seqs_run)
        prep_ms = (time.perf_counter() - t) / n * 1000
        out[f"B{B}_ctx{plen}"] = {"step_ms": round(step_ms, 3), "graph_replay_ms": round(replay_ms, 3),
                                  "prepare_decode_ms": round(prep_ms, 3)}
        if B == 1:  # the host side of a one-stream step, function by function
            import cProfile, pstats
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(n):
                llm.step()
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        print(f"[step B{B}] {out[f'B{B}_ctx{plen}']}", flush=True)
        for s in seqs:
            llm.abort(s)
    return out


def graph_kernels(llm, sizes=(1, 16)):
    """The kernels inside one decode graph's replay (CUPTI sees them), by total time: what a one-stream step is
    made of. Also the sum of kernel times against the replay's wall time (the gaps are launch latency)."""
    from torch.profiler import ProfilerActivity, profile
    runner, out, n = llm.runner, {}, 20
    for B in sizes:
        bs = next(s for s in runner.graph_sizes if s >= B)
        if bs not in runner.graphs:
            runner._capture(bs)
        g = runner.graphs[bs]
        for _ in range(3):
            g.replay()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            for _ in range(n):
                g.replay()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t) / n * 1e3
        ev = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in ev) / 1e3 / n
        launches = sum(e.count for e in ev) / n
        top = sorted(ev, key=lambda e: e.self_device_time_total, reverse=True)[:14]
        out[f"B{bs}"] = {"replay_wall_ms": round(wall, 3), "kernel_sum_ms": round(busy, 3), "kernels": round(launches),
                         "top": {e.key[:90]: [round(e.self_device_time_total / n, 1), round(e.count / n, 1)]
                                 for e in top}}  # us per replay, launches per replay
        print(f"[graph B{bs}] wall {wall:.3f} ms, kernels {launches:.0f}, sum of kernel times {busy:.3f} ms", flush=True)
        for k, v in out[f"B{bs}"]["top"].items():
            print(f"    {v[0]:8.1f} us  x{v[1]:5.1f}  {k}", flush=True)
    return out


def main():
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    bench.make_random_qwen3_06b(MODEL)
    if "--sweep" in sys.argv:
        res["decode_kernel"] = decode_kernel_sweep()
    from qaforge.engine import LLM, SamplingParams
    llm = LLM(MODEL, device="cuda", max_model_len=4096, max_num_seqs=1024, gpu_memory_utilization=0.85)
    llm.generate([[5] * 100] * 4, SamplingParams(max_tokens=8, temperature=0))
    res["step"] = step_breakdown(llm)
    res["graph_kernels"] = graph_kernels(llm)
    if "--kernels-only" in sys.argv:
        with open(os.path.join(OUT, "engine_profile.json"), "w") as f:
            json.dump(res, f, indent=1)
        return
    import cProfile, pstats
    # prefill probe: two batches of fresh prompts of W1's lengths (is the first slower: compilation?)
    prompts, _ = bench.nano_workload(256, 0)
    rr = random.Random(12)
    for k in range(2):
        sub = [[rr.randint(1000, 150000) for _ in p] for p in prompts[k * 28:(k + 1) * 28]]
        torch.cuda.synchronize(); t = time.perf_counter()
        llm.generate(sub, SamplingParams(max_tokens=1, temperature=0))
        torch.cuda.synchronize()
        res[f"prefill_28seqs_run{k}_s"] = round(time.perf_counter() - t, 4)
        print(f"[prefill 28 seqs, {sum(map(len, sub))} tokens, run {k}]", res[f"prefill_28seqs_run{k}_s"], flush=True)
    # W1 prefill alone (fresh prompts of W1's lengths, no prefix hits)
    prompts, _ = bench.nano_workload(256, 0)
    r = random.Random(11)
    fresh = [[r.randint(1000, 150000) for _ in p] for p in prompts]
    torch.cuda.synchronize()
    t = time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    llm.generate(fresh, SamplingParams(max_tokens=1, temperature=0))
    torch.cuda.synchronize()
    prof.disable()
    res["W1_prefill_s"] = round(time.perf_counter() - t, 3)
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    print("[W1 prefill]", res["W1_prefill_s"], flush=True)
    with open(os.path.join(OUT, "engine_profile.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
