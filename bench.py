"""Native-engine benchmark over qaforge.bench.engine (workloads and the vLLM figures: docs/benchmarks.md).

    python bench.py --model DIR                          # an HF Qwen3 directory
    python bench.py --random-qwen3-0.6b /tmp/qwen3rand   # the Qwen3-0.6B architecture, random bf16 weights
    python bench.py --model DIR --workloads W2,W3 --device cpu --scale 0.05   # a quick CPU smoke run
"""
import argparse
import json
import time

from qaforge.bench.engine import hf_w2, make_random_qwen3_06b, run_native, table

ENGINE_FLAGS = {"device": "auto", "dtype": "auto", "max_model_len": 4096, "max_num_seqs": 1024,
                "max_num_batched_tokens": 16384, "gpu_memory_utilization": 0.85, "cuda_graph_max_bs": 512}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--random-qwen3-0.6b", dest="random_dir")
    ap.add_argument("--workloads", default="W2,W3,W1,W1f,W4")
    for name, default in ENGINE_FLAGS.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink request counts and lengths (smoke runs)")
    ap.add_argument("--hf-baseline", action="store_true", help="also time HF generate on W2 in this run (CUDA)")
    ap.add_argument("--json", help="write every number to this file")
    a = ap.parse_args()
    model = make_random_qwen3_06b(a.random_dir) if a.random_dir else a.model
    if not model:
        ap.error("--model or --random-qwen3-0.6b")
    res = {"date": time.strftime("%Y-%m-%d"), "model": model}
    if a.hf_baseline:
        res["hf_W2"] = hf_w2(model)
        print(f"[hf] W2: {res['hf_W2']}", flush=True)
    engine_kw = {name: getattr(a, name) for name in ENGINE_FLAGS}
    res.update(run_native(model, a.workloads.split(","), a.scale, enforce_eager=a.enforce_eager, **engine_kw))
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
