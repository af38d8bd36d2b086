"""Sampling parameters of one request (vLLM-compatible names)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class SamplingParams:
    temperature: float = 1.0      # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0                # 0 (or -1) means no top-k
    max_tokens: int = 384
    seed: int | None = None       # per-request generator: same seed, same tokens, whatever the batch
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    repetition_penalty: float = 1.0  # vLLM/HF: logits of prompt and output tokens / p (> 0) or * p (<= 0); 1 = off
    grammar: Any = None           # structured output: an engine.structured.Grammar the tokens must follow

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k == -1:
            self.top_k = 0
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 or -1: disabled)")
        if not (isinstance(self.repetition_penalty, (int, float)) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be > 0 (1.0: off), got {self.repetition_penalty!r}")
        self.repetition_penalty = float(self.repetition_penalty)
        if int(self.max_tokens) < 1:
            raise ValueError("max_tokens must be >= 1")
        self.max_tokens = int(self.max_tokens)
        self.stop_token_ids = tuple(int(t) for t in (self.stop_token_ids or ()))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
