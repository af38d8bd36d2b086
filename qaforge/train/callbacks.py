"""TrainerCallbacks of every run: where the wall time goes, and how many tokens this process trained."""

from __future__ import annotations

import statistics
import time
from typing import Any

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Where the wall time of trainer.train() goes: first step (compilation), steady steps, eval, saves."""

    def __init__(self) -> None:
        self.begin = self.epoch_end = self.evaluated = None
        self.step_ends: list[float] = []
        self.eval_s: list[float] = []
        self.save_s: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch_end = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluated = time.perf_counter()
        if self.epoch_end is not None:
            self.eval_s.append(round(self.evaluated - self.epoch_end, 2))

    def on_save(self, args, state, control, **kwargs):
        start = self.evaluated or self.epoch_end
        if start is not None:
            self.save_s.append(round(time.perf_counter() - start, 2))
        self.evaluated = None

    def summary(self) -> dict[str, Any]:
        if self.begin is None or not self.step_ends:
            return {}
        gaps = [b - a for a, b in zip(self.step_ends, self.step_ends[1:])]
        median = statistics.median(gaps) if gaps else 0.0
        return {"steps_timed": len(self.step_ends),
                "first_step_s (includes compilation)": round(self.step_ends[0] - self.begin, 2),
                "median_step_ms": round(median * 1e3, 1),
                "sum_of_steps_over_3x_median_s": round(sum(g for g in gaps if g > 3 * median), 2),
                "eval_s": self.eval_s, "eval_plus_save_s": self.save_s}


class TokenCounter(TrainerCallback):
    """Real (unpadded) input tokens already seen when this process's training began: non-zero on
    resume, where they were trained before this process's train_runtime started."""

    def __init__(self) -> None:
        self.tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):  # the state is restored by now on resume
        self.tokens_at_start = int(state.num_input_tokens_seen or 0)

    def trained_since_start(self, state) -> int:
        return int(state.num_input_tokens_seen or 0) - self.tokens_at_start


class StepProfiler(TrainerCallback):
    """torch.profiler over optimizer steps [first, last): where a step's time goes. Writes
    `step_profile.txt` (tables: host time by op, device time by kernel) and `step_profile.json` (wall ms per
    step, device busy ms per step: busy far below wall means the host, not the GPU, sets the pace)."""

    def __init__(self, first: int, last: int, out_dir) -> None:
        self.first, self.last, self.out_dir = first, last, out_dir
        self.prof = None
        self.t0 = 0.0
        self.result: dict[str, Any] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.first and self.prof is None:
            import torch
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.prof = profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.prof is None or self.result is not None or state.global_step < self.last:
            return
        import json
        from pathlib import Path

        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.t0
        self.prof.__exit__(None, None, None)
        steps = self.last - self.first
        events = self.prof.key_averages()
        device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_us = sum(e.self_device_time_total for e in device)
        host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        self.result = {
            "steps": [self.first, self.last], "wall_ms_per_step": round(wall * 1e3 / steps, 1),
            "device_busy_ms_per_step": round(busy_us / 1e3 / steps, 1) if device else None,
            "kernel_launches_per_step": round(sum(e.count for e in device) / steps) if device else None,
            "top_host_ms_per_step": {e.key: round(e.self_cpu_time_total / 1e3 / steps, 2) for e in host[:25]},
        }
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "step_profile.json").write_text(json.dumps(self.result, indent=1))
        tables = [events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=80)]
        if device:
            tables.append(events.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=80))
        (out / "step_profile.txt").write_text("\n\n".join(tables))
        print(f"step profile (steps {self.first}..{self.last - 1}): {self.result['wall_ms_per_step']} ms a step, "
              f"device busy {self.result['device_busy_ms_per_step']} ms -> {out / 'step_profile.txt'}", flush=True)
