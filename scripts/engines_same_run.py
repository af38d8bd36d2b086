"""The anchor workloads on several engine configurations in one call: the native engine's switches and vLLM.

Each configuration runs in its own process, one after another on the same GPU and the same random-weight
model, with token ids in and out (`ignore_eos`, greedy), so every ratio in the table is a same-run ratio.
Workloads: W1, W1f, W2, W3, W4 as `qaforge.bench.engine.workloads` builds them, plus G193 (193 requests
sharing an 80-token prefix, questions of 15-60 tokens, 384 output tokens; the grader's batch shape, second
pass timed, so the shared prefix is cached as in a served grader).

    python -m scripts.engines_same_run --model /tmp/qwen3rand --out res.json \\
        --config 'native:{}' --config 'native_nochunk:{"enable_chunked_prefill": false}' \\
        --config 'vllm_bf16:{"max_num_seqs": 512}'
A label starting with "vllm" runs vLLM (its kwargs go to vllm.LLM); anything else runs the native engine.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

NATIVE = {"max_model_len": 4096, "max_num_seqs": 1024, "max_num_batched_tokens": 16384,
          "gpu_memory_utilization": 0.85, "cuda_graph_max_bs": 512}
VLLM = {"max_model_len": 4096, "max_num_seqs": 512, "gpu_memory_utilization": 0.85, "enable_prefix_caching": True,
        "dtype": "bfloat16", "skip_tokenizer_init": True}
ORDER = ("W2", "W3", "W1", "W1f", "W4", "G193")


def g193(seed: int = 7) -> tuple[list[list[int]], list[int]]:
    r = random.Random(seed)
    prefix = [r.randint(1000, 150000) for _ in range(80)]
    prompts = [prefix + [r.randint(1000, 150000) for _ in range(r.randint(15, 60))] for _ in range(193)]
    return prompts, [384] * 193


def _workloads(vocab: int) -> dict:
    from qaforge.bench.engine import workloads

    wl = workloads(vocab)
    prompts, outs = g193()
    wl["G193"] = ([[t % vocab for t in q] for q in prompts], outs)
    return wl


def _run_native(model: str, kw: dict) -> tuple[dict, callable]:
    from qaforge.engine import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model, **{**NATIVE, **kw})
    info = {"startup_s": round(time.perf_counter() - t0, 2), "kv_blocks": llm.runner.num_blocks}

    def gen(prompts, outs):
        o = llm.generate(prompts, [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in outs])
        return sum(len(x.token_ids) for x in o)
    return info, gen


def _run_vllm(model: str, kw: dict) -> tuple[dict, callable]:
    import os

    # CUDA is already initialised in this process (torch.cuda probes), so vLLM's engine core must be spawned,
    # not forked; a fork fails with "Cannot re-initialize CUDA in forked subprocess" (seen on the H200)
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=model, **{**VLLM, **kw})
    info = {"startup_s": round(time.perf_counter() - t0, 2)}

    def gen(prompts, outs):
        sp = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, detokenize=False) for n in outs]
        o = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
        return sum(len(x.outputs[0].token_ids) for x in o)
    return info, gen


def child(label: str, model: str, kw: dict, names: list[str], out: str) -> None:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    info, gen = (_run_vllm if label.startswith("vllm") else _run_native)(model, kw)
    res = {"label": label, "kwargs": kw, **info}
    wl = _workloads(json.loads((Path(model) / "config.json").read_text())["vocab_size"])
    gen(wl["W3"][0][:8], [16] * 8)                       # warm-up
    for name in names:
        prompts, outs = wl[name]
        if name in ("W2", "G193"):
            gen(prompts, outs)                           # W2: warm; G193: fill the prefix cache, as a grader does
        sync()
        t = time.perf_counter()
        n = gen(prompts, outs)
        sync()
        dt = time.perf_counter() - t
        r = {"gen_tokens": n, "s": round(dt, 3), "out_tok_s": round(n / dt)}
        if name == "W2":
            r["ms_per_tok"] = round(dt / n * 1000, 3)
        res[name] = r
        print(f"[{label}] {name}: {r}", flush=True)
    Path(out).write_text(json.dumps(res), encoding="utf-8")


def table(results: list[dict], base: str | None) -> str:
    ref = next((r for r in results if r["label"] == base), None)
    lines = ["| workload | " + " | ".join(r["label"] for r in results) + (f" | best native / {base} |" if ref else " |"),
             "|---" * (len(results) + 1 + bool(ref)) + "|"]
    for name in ORDER + ("startup",):
        cells, natives = [], []
        for r in results:
            if name == "startup":
                v = r.get("startup_s")
                cells.append(f"{v} s" if v is not None else "–")
            elif name in r:
                v = r[name]["ms_per_tok"] if name == "W2" else r[name]["out_tok_s"]
                cells.append(f"{v} ms/tok" if name == "W2" else f"{v:,} tok/s ({r[name]['s']} s)")
                if not r["label"].startswith("vllm"):
                    natives.append(v)
            else:
                cells.append("–")
        ratio = ""
        if ref and natives and name in ref and name != "startup":
            rv = ref[name]["ms_per_tok"] if name == "W2" else ref[name]["out_tok_s"]
            ratio = f"{(rv / min(natives)) if name == 'W2' else (max(natives) / rv):.2f}×"
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {ratio} |" if ref else " |"))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a model directory (e.g. /tmp/qwen3rand)")
    p.add_argument("--random-qwen3-0.6b", dest="random_qwen3", action="store_true", help="build the random-weight model at --model first")
    p.add_argument("--config", action="append", required=True, help="LABEL:JSON kwargs")
    p.add_argument("--workloads", default=",".join(ORDER))
    p.add_argument("--timeout", type=int, default=300, help="seconds per configuration")
    p.add_argument("--out", required=True)
    p.add_argument("--child", nargs=3, metavar=("LABEL", "KWARGS", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    names = a.workloads.split(",")
    if a.child:
        child(a.child[0], a.model, json.loads(a.child[1]), names, a.child[2])
        return
    if a.random_qwen3:
        from qaforge.bench.engine import make_random_qwen3_06b

        make_random_qwen3_06b(a.model)
    results = []
    for spec in a.config:
        label, kw = spec.split(":", 1)
        tmp = f"{a.out}.{label}.json"
        cmd = [sys.executable, "-m", "scripts.engines_same_run", "--model", a.model, "--workloads", a.workloads,
               "--config", spec, "--out", a.out, "--child", label, kw, tmp]
        try:
            subprocess.run(cmd, timeout=a.timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"[{label}] timed out after {a.timeout} s", flush=True)
        if Path(tmp).is_file():
            results.append(json.loads(Path(tmp).read_text()))
        else:
            results.append({"label": label, "kwargs": json.loads(kw), "failed": True})
        Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "model": a.model,
                                           "results": results}, indent=1), encoding="utf-8")
    base = next((r["label"] for r in results if r["label"].startswith("vllm") and not r.get("failed")), None)
    print(table([r for r in results if not r.get("failed")], base))


if __name__ == "__main__":
    main()
