"""Benchmark and profiling scripts, run from the repository root as modules (`python -m scripts.NAME`),
so that they import qaforge (and each other) without touching sys.path."""
