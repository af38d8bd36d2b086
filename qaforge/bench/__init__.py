"""Benchmarks, in one package:

- `qaforge.bench.load`: load generator for any OpenAI-compatible or grader `/predict` endpoint
  (`run_bench`, re-exported here: `from qaforge.bench import run_bench`);
- `qaforge.bench.report`: its comparison table, bench.json and bench.png;
- `qaforge.bench.command`: the `qaforge bench` command;
- `qaforge.bench.engine`: the offline native-engine benchmark (token ids in and out) that the root
  `bench.py` and `scripts/bench_engine_gpu.py` run.

Nothing is imported until it is used, so `qaforge --help` stays fast.
"""

_LOAD_NAMES = ("run_bench", "bench_target", "summarize", "random_prompts", "dataset_prompts", "percentiles",
               "Target", "RequestResult", "APIS")

__all__ = list(_LOAD_NAMES)


def __getattr__(name):
    if name in _LOAD_NAMES:
        from qaforge.bench import load

        return getattr(load, name)
    raise AttributeError(f"module 'qaforge.bench' has no attribute {name!r}")
