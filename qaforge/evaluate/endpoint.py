"""Collecting answers from a running server: OpenAI-compatible chat completions or the grader's /predict.

`api="auto"` reads the URL: a path ending in `/predict` is the grader API, anything else is an
OpenAI-compatible base URL (`/v1` is appended when missing). Requests run concurrently with a
progress bar; each answer keeps its latency and, when known, its output token count (from `usage`
for OpenAI, or counted with `tokenizer` for /predict, which reports no usage).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from qaforge.chat import DEFAULT_SYSTEM_PROMPT, build_messages, clean_answer
from qaforge.evaluate.collect import Answer, Collection

Api = Literal["auto", "openai", "predict"]


def detect_api(url: str, api: Api = "auto") -> tuple[str, str]:
    """(api, url): the grader /predict URL, or an OpenAI base URL ending in /v1."""
    if api not in ("auto", "openai", "predict"):
        raise ValueError(f"api must be auto, openai or predict, got {api!r}")
    if not urlsplit(url).scheme.startswith("http"):
        raise ValueError(f"endpoint must be an http(s) URL, got {url!r}")
    url = url.rstrip("/")
    if api == "predict" or (api == "auto" and url.endswith("/predict")):
        return "predict", url if url.endswith("/predict") else url + "/predict"
    return "openai", url if url.endswith("/v1") else url + "/v1"


class TokenCounter:
    """Counts output tokens with a tokenizer, the way the course counts throughput; None without one."""

    def __init__(self, tokenizer_path: str | None):
        self._tokenizer = None
        if tokenizer_path:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def __call__(self, text: str) -> int | None:
        if self._tokenizer is None:
            return None
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])


async def _collect_openai(base_url: str, questions: list[str], max_tokens: int, concurrency: int,
                          model_name: str | None, system_prompt: str | None, timeout_s: float,
                          progress: bool) -> tuple[list[Answer], str]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                         timeout=timeout_s, max_retries=1)
    if model_name is None:
        models = await client.models.list()
        if not models.data:
            raise RuntimeError(f"{base_url}/models lists no model; pass the model name")
        model_name = models.data[0].id
    limit = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(questions), desc=f"ask {base_url}", disable=not progress)

    async def ask(question: str) -> Answer:
        async with limit:
            started = time.perf_counter()
            reply = await client.chat.completions.create(
                model=model_name, messages=build_messages(question, system_prompt),  # type: ignore[arg-type]
                max_tokens=max_tokens, temperature=0.0,
                # Qwen3 servers (vLLM, qaforge) read this; it selects the non-thinking template.
                extra_body={"chat_template_kwargs": {"enable_thinking": False}},
            )
            latency = time.perf_counter() - started
        bar.update(1)
        choice = reply.choices[0]
        tokens = reply.usage.completion_tokens if reply.usage else None
        return Answer(clean_answer(choice.message.content or ""), tokens, latency, choice.finish_reason)

    try:
        answers = await asyncio.gather(*(ask(q) for q in questions))
    finally:
        bar.close()
        await client.close()
    return list(answers), model_name


async def _collect_predict(url: str, questions: list[str], chunk_size: int, concurrency: int,
                           count_tokens: TokenCounter, timeout_s: float, progress: bool) -> list[Answer]:
    limit = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(questions), desc=f"ask {url}", disable=not progress)

    async def ask(client: httpx.AsyncClient, chunk: list[str]) -> list[Answer]:
        async with limit:
            started = time.perf_counter()
            reply = await client.post(url, json={"prompt": chunk})
            latency = time.perf_counter() - started
        reply.raise_for_status()
        texts = reply.json().get("response")
        if not isinstance(texts, list) or len(texts) != len(chunk) or not all(isinstance(t, str) for t in texts):
            raise RuntimeError(f"{url}: expected a list of {len(chunk)} strings in 'response', got {str(texts)[:200]}")
        bar.update(len(chunk))
        return [Answer(clean_answer(t), count_tokens(clean_answer(t)), latency) for t in texts]

    chunks = [questions[i:i + chunk_size] for i in range(0, len(questions), chunk_size)]
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            parts = await asyncio.gather(*(ask(client, c) for c in chunks))
    finally:
        bar.close()
    return [answer for part in parts for answer in part]


def collect_from_endpoint(url: str, questions: list[str], label: str, max_tokens: int = 384,
                          api: Api = "auto", concurrency: int = 8, model_name: str | None = None,
                          tokenizer: str | None = None, chunk_size: int = 16,
                          system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, timeout_s: float = 600.0,
                          progress: bool = True) -> Collection:
    """Answers from a server, in question order. /predict ignores max_tokens and system_prompt (the server owns them)."""
    kind, resolved = detect_api(url, api)
    started = time.perf_counter()
    details: dict[str, Any] = {"api": kind, "concurrency": concurrency}
    if kind == "openai":
        answers, served_model = asyncio.run(_collect_openai(resolved, questions, max_tokens, concurrency,
                                                            model_name, system_prompt, timeout_s, progress))
        details |= {"model": served_model, "max_tokens": max_tokens}
    else:
        answers = asyncio.run(_collect_predict(resolved, questions, chunk_size, concurrency,
                                               TokenCounter(tokenizer), timeout_s, progress))
        details |= {"chunk_size": chunk_size, "tokenizer": tokenizer}
    return Collection(label, resolved, answers, time.perf_counter() - started, details)
