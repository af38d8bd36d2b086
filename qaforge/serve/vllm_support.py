"""The vLLM backend's plain-data helpers (serve/backends.py's VllmEngine): its LoRA engine arguments and
request fields, and the first-token time of a final output. None of them imports vllm, so they are
tested without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def first_token_time(output: Any, submitted: float) -> float | None:
    """time.perf_counter() of a final vLLM RequestOutput's first token, from the request statistics vLLM
    attaches only when its stats are on (disable_log_stats=False through QAFORGE_ENGINE_ARGS); None
    otherwise: a non-streaming request then has no time to first token (docs/serving.md, Metrics)."""
    latency = getattr(getattr(output, "metrics", None), "first_token_latency", 0.0) or 0.0
    return submitted + latency if latency > 0 else None


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def lora_ranks(model_path: str, modules: dict[str, str]) -> dict[str, int]:
    """Each adapter's rank, after the native engine's checks against the model (vLLM's own errors for an
    adapter that does not fit come per request, deep in a worker)."""
    from qaforge.engine.layers.lora import load_adapter

    hf_config = json.loads((Path(model_path) / "config.json").read_text())
    return {name: load_adapter(name, path, hf_config).rank for name, path in modules.items()}


def vllm_lora_args(ranks: dict[str, int]) -> dict[str, Any]:
    """vLLM engine arguments that serve these adapters (name -> rank), all of them in one batch."""
    top = max(ranks.values())
    fits = [r for r in VLLM_LORA_RANKS if r >= top]
    if not fits:
        worst = max(ranks, key=ranks.get)
        raise ValueError(f"LoRA adapter {worst!r} has rank {top}; vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}")
    return {"enable_lora": True, "max_loras": len(ranks), "max_lora_rank": fits[0]}


def lora_request_fields(modules: dict[str, str]) -> dict[str, dict[str, Any]]:
    """name -> vllm.lora.request.LoRARequest's fields; vLLM wants ids unique and >= 1."""
    return {name: {"lora_name": name, "lora_int_id": i + 1, "lora_path": path}
            for i, (name, path) in enumerate(modules.items())}
