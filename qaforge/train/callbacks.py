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
