"""Warm-up: the original course project's 15 representative questions (easy, medium, hard, combined;
qaforge/data/warmup_questions.json), all at once.

Run before GET / reports ready, so the first graded request does not pay for lazy allocations,
kernel compilation or CUDA-graph capture.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from qaforge.chat import prompt_token_ids
from qaforge.paths import WARMUP_QUESTIONS

log = logging.getLogger("qaforge.serve")


def load_warmup_questions(path: str | Path | None = None) -> list[str]:
    path = Path(path) if path else WARMUP_QUESTIONS
    records = json.loads(path.read_text(encoding="utf-8"))
    questions = [r["question"] if isinstance(r, dict) else str(r) for r in records]
    questions = [q for q in questions if q.strip()]
    if not questions:
        raise ValueError(f"{path} has no questions")
    return questions


async def warm_up(service: Any, system_prompt: str | None, max_tokens: int,
                  path: str | Path | None = None) -> dict[str, Any]:
    """Generate answers to every warm-up question concurrently, plus one sampled answer."""
    questions = load_warmup_questions(path)
    tokenizer = service.tokenizer
    started = time.perf_counter()
    jobs = []
    for q in questions:
        ids = prompt_token_ids(tokenizer, q, system_prompt)
        jobs.append(service.complete(ids, service.sampling(ids, max_tokens, temperature=0.0)))
    # One sampled request too: temperature/top-p/top-k take another path through the sampler.
    ids = prompt_token_ids(tokenizer, questions[0], system_prompt)
    sampled = service.sampling(ids, max_tokens, temperature=0.7, top_p=0.8, top_k=20, seed=0)
    jobs.append(service.complete(ids, sampled))
    results = await asyncio.gather(*jobs)
    seconds = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    log.info("warm-up: %d requests, %d tokens in %.2f s", len(results), tokens, seconds)
    return {"requests": len(results), "tokens": tokens, "seconds": seconds}
