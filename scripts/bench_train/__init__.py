"""GPU training benchmark, one call: fast_v7 end to end on the seed's length distribution with plain HF + PEFT,
HF + PEFT + torch.compile and qaforge (cold compile cache, then a warm second run), each variant a process with
its own timeout inside a total budget; plus the T1 micro-benchmarks (docs/benchmarks.md).

    PYTHONUNBUFFERED=1 python3 -m scripts.bench_train --out $OUT                      # ~8 min on an H200
    python3 -m scripts.bench_train --model DIR --data train.jsonl --out $OUT         # any HF model, any data
    python3 -m scripts.bench_train --variants baseline_synthetic,qaforge_synthetic   # T1 micro variants
    python3 -m scripts.bench_train --device cpu --model runs/test_tiny_model --max-steps 2   # CPU smoke run

Modules: `workload` (lengths, batches, data files, the random model), `e2e` (the end-to-end variants),
`micro` (T1), `worker` (one variant in one process), `runner` (the call: timeouts, table, bench_train.json).
"""
