"""Offline benchmark of the native engine (nano-vllm style) on the anchor workloads W1, W1f, W2, W3, W4.

Token ids in, token ids out, `ignore_eos` (every request generates exactly its budget), greedy. The
workload generators and the vLLM figures every run is compared with are the anchors' own; the figures,
the machine they were measured on and the native engine's results are in docs/benchmarks.md.
Run it through the root `bench.py` (`python bench.py --help`) or `scripts/bench_engine_gpu.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

# vLLM 0.24, bf16, the anchors' H200 run (docs/benchmarks.md): tok/s for W1, W1f, W4; ms/token for W2;
# seconds for W3 and startup.
VLLM_BF16 = {"W1": 19136, "W1f": 24863, "W2": 1.95, "W3": 1.04, "W4": 27355, "startup": 77.5}


def make_random_qwen3_06b(path: str) -> str:
    """The Qwen3-0.6B architecture with random bf16 weights, exactly as the anchors build it."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=151645,
                      bos_token_id=151643, pad_token_id=151643, torch_dtype="bfloat16")
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        m = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(path)
    del m
    return path


def nano_workload(n=256, seed=0):
    r = random.Random(seed)
    prompts = [[r.randint(1000, 150000) for _ in range(r.randint(100, 1024))] for _ in range(n)]
    outs = [r.randint(100, 1024) for _ in range(n)]
    return prompts, outs


def workloads(vocab_size: int, scale: float = 1.0) -> dict:
    """The anchor workloads, built by the same generators as the anchors' vLLM script, so the prompts
    are token for token the same. scale < 1 shrinks counts and lengths for smoke runs."""
    s = lambda x: max(1, int(round(x * scale)))
    fit = (lambda ps: ps) if vocab_size > 150000 else (lambda ps: [[t % vocab_size for t in p] for p in ps])
    p1, o1 = nano_workload(256, 0)
    p1 = fit(p1)
    n1 = s(256)
    p1, o1 = p1[:n1], [s(o) if scale < 1 else o for o in o1[:n1]]
    r = random.Random(1)
    one = fit([[r.randint(1000, 150000) for _ in range(128)]])
    ten = fit([[r.randint(1000, 150000) for _ in range(r.randint(60, 200))] for _ in range(10)])
    big = fit([[r.randint(1000, 150000) for _ in range(r.randint(60, 200))] for _ in range(1024)])
    return {
        "W1": (p1, o1),
        "W1f": (p1, [s(512)] * len(p1)),
        "W2": (one, [s(256)]),
        "W3": (ten, [s(384)] * 10),
        "W4": (big[: s(1024)], [s(384)] * s(1024)),
    }


def _sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def greedy_budget(n: int):
    """The benchmarks' sampling: greedy, exactly n tokens (`ignore_eos`)."""
    from qaforge.engine import SamplingParams
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def time_workloads(llm, wl: dict, names: list[str], label: str, rerun: tuple[str, ...] = ("W2",)) -> dict:
    """Warm the engine up, then time each named workload of `wl` once (the device synced around it). A
    workload in `rerun` runs once untimed first: W2 to time a warm engine, G193 so that its shared prefix
    is cached, as a grader's second batch finds it."""
    llm.generate(wl["W3"][0][:8], greedy_budget(16))  # warm-up (prefill kernels at several shapes)
    res = {}
    for name in names:
        prompts, outs = wl[name]
        if name in rerun:
            llm.generate(prompts, [greedy_budget(o) for o in outs])
        _sync()
        steps0 = llm.num_steps
        t = time.perf_counter()
        o = llm.generate(prompts, [greedy_budget(n) for n in outs])
        _sync()
        dt = time.perf_counter() - t
        ntok = sum(len(x.token_ids) for x in o)
        assert ntok == sum(outs), (ntok, sum(outs))
        r = {"requests": len(prompts), "prompt_tokens": sum(map(len, prompts)), "gen_tokens": ntok,
             "s": round(dt, 3), "out_tok_s": round(ntok / dt), "steps": llm.num_steps - steps0}
        if name == "W2":
            r["ms_per_tok"] = round(dt / ntok * 1000, 3)
        res[name] = r
        print(f"[{label}] {name}: {r}", flush=True)
    return res


def run_native(model: str, names: list[str], scale: float = 1.0, **engine_kw) -> dict:
    from qaforge.engine import LLM
    t0 = time.perf_counter()
    llm = LLM(model, **engine_kw)
    res = {"startup_s": round(time.perf_counter() - t0, 2), "load_s": round(llm.runner.load_s, 2),
           "graph_capture_s": round(llm.runner.graph_s, 2), "kv_blocks": llm.runner.num_blocks,
           "kv_tokens": llm.runner.num_blocks * llm.config.block_size, "backend": llm.runner.backend,
           "graph_sizes": len(llm.runner.graph_sizes)}
    res.update(time_workloads(llm, workloads(llm.vocab_size, scale), names, "native"))
    res["stats"] = llm.stats()
    return res


def hf_w2(model: str, new_tokens: int = 32) -> dict:
    """HF transformers generate, dynamic cache, one 128-token prompt: ms per output token (same run)."""
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda().eval()
    r = random.Random(1)
    ids = torch.tensor([[r.randint(1000, 150000) for _ in range(128)]], device="cuda")
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        m.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = m.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    n = out.shape[1] - 128
    del m
    torch.cuda.empty_cache()
    return {"gen_tokens": n, "s": round(dt, 3), "ms_per_tok": round(dt / n * 1000, 2)}


def table(res: dict) -> str:
    rows = [("workload", "native", "vLLM 0.24 bf16 (ANCHORS)", "native / vLLM")]
    for name, key, unit, higher in (("W1", "out_tok_s", "tok/s", True), ("W1f", "out_tok_s", "tok/s", True),
                                    ("W2", "ms_per_tok", "ms/tok", False), ("W3", "s", "s", False),
                                    ("W4", "out_tok_s", "tok/s", True)):
        if name in res:
            v, a = res[name][key], VLLM_BF16[name]
            ratio = v / a if higher else a / v
            rows.append((name, f"{v:,} {unit}", f"{a:,} {unit}", f"{ratio:.2f}x {'faster' if ratio >= 1 else 'slower'}"))
    rows.append(("startup", f"{res['startup_s']} s", f"{VLLM_BF16['startup']} s", f"{VLLM_BF16['startup'] / res['startup_s']:.1f}x faster"))
    if "hf_W2" in res and "W2" in res:
        h = res["hf_W2"]["ms_per_tok"]
        rows.append(("W2 HF generate (same run)", f"{res['W2']['ms_per_tok']} ms/tok", f"HF {h} ms/tok",
                     f"{h / res['W2']['ms_per_tok']:.1f}x faster than HF"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(" | ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)
