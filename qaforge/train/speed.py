"""Where a run's time went (compilation vs steady steps) and whether its fast path paid for itself.

A compiled run pays its compilation once and then saves on every step; on a short run the first can
exceed the second, and a run whose fused layers did not apply falls back to a slower path. Either case
is stated at the end of the run and in eval_results.json (`speed`), never left for the user to find.

The eager step is not measured inside a run (that would cost the run a second, slower model); it is
estimated as EAGER_OVER_COMPILED x the compiled median step. Figures behind the constant: docs/training.md.
"""

from __future__ import annotations

from typing import Any

# plain HF + PEFT step / qaforge compiled fused step, H200 2026-12-01/02: 258/157 ms (Qwen3-0.6B, T1 without
# CUDA graphs) and ~260/160 ms (Qwen2.5-0.5B, fast_v7 lengths); the eager fused step is taken to be as slow
FIRST = "first_step_s (includes compilation)"
EAGER_OVER_COMPILED = 1.6


def time_split(timing: dict[str, Any], train_runtime_s: float, compiled: bool) -> dict[str, Any]:
    """Seconds of compilation (the first step beyond a median step, plus the CUDA-graph recordings that
    show as steps over 3x the median), of steady steps, of evaluation/saving, and the rest."""
    if not timing or FIRST not in timing:
        return {}
    median_s = timing.get("median_step_ms", 0.0) / 1e3
    steps = int(timing.get("steps_timed", 0))
    recordings = timing.get("sum_of_steps_over_3x_median_s", 0.0) if compiled else 0.0
    compile_s = max(0.0, timing[FIRST] - median_s) + recordings
    evals = sum(timing.get("eval_s") or []) + sum(timing.get("eval_plus_save_s") or [])
    steady_s = max(0.0, train_runtime_s - compile_s - evals)
    return {"compile_s": round(compile_s, 2), "steady_s": round(steady_s, 2), "eval_and_save_s": round(evals, 2),
            "steps": steps, "median_step_ms": timing.get("median_step_ms"),
            "compile_share": round(compile_s / train_runtime_s, 3) if train_runtime_s > 0 else None}


def verdict(split: dict[str, Any], fast_info: dict[str, Any]) -> dict[str, Any]:
    """Whether compilation paid for itself in this run, what path ran, and the notices to print."""
    notices: list[str] = []
    out: dict[str, Any] = {"notices": notices}
    fallback = fast_info.get("fallback")
    if fallback:
        notices.append(f"SLOWER PATH: {fallback}. Plain HF + PEFT may be as fast; use --no-compile for short "
                       "runs, and see docs/training.md for the supported layers.")
    if not fast_info.get("compile") or not split:
        return out
    steps, median_s = split["steps"], (split.get("median_step_ms") or 0.0) / 1e3
    saved = steps * median_s * (EAGER_OVER_COMPILED - 1.0)
    out.update({"compile_s": split["compile_s"], "estimated_eager_step_ms": round(median_s * EAGER_OVER_COMPILED * 1e3, 1),
                "estimated_saving_s": round(saved, 2), "compile_paid_off": saved >= split["compile_s"]})
    if not out["compile_paid_off"]:
        cache = fast_info.get("compile_cache") or {}
        again = (f" A second run reuses the compile cache in {cache['dir']} and compiles far less."
                 if cache.get("dir") else "")
        notices.append(f"torch.compile did not pay for itself here: {split['compile_s']:.1f} s of compilation "
                       f"against an estimated {saved:.1f} s saved over {steps} steps (eager step ~"
                       f"{out['estimated_eager_step_ms']:.0f} ms vs {split['median_step_ms']} ms compiled). "
                       f"For a one-off run this short, --no-compile is faster.{again}")
    return out
