"""Load generator for any OpenAI-compatible (`/v1/chat/completions`, `/v1/completions`) or grader
(`/predict`) endpoint: TTFT, TPOT, ITL and end-to-end latency percentiles, requests/s, output tokens/s.

Arrivals: all at once (default), a Poisson request rate, and/or a concurrency cap, for a fixed
number of requests. Several targets run one after another on the same prompts, so their numbers
compare; `serve_model` + `engines` start the servers themselves (qaforge.serve.launcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx

from qaforge.evaluate.grader import api_key_headers

APIS = ("chat", "completions", "predict")
PERCENTILES = (50, 90, 99)

# Random prompts mix the domain's English keywords with Chinese filler, like the grader's questions.
_WORDS = ("GPU CUDA kernel warp thread block grid shared memory global coalescing tiling "
          "occupancy latency bandwidth register cache atomic reduction scan stencil histogram "
          "convolution matrix SpMV Triton TileLang 线程 内存 并行 计算 访问 优化 同步 性能 "
          "数据 结构 原理 实现 设计 调度 分块 带宽 延迟").split()


@dataclass
class Target:
    label: str
    base_url: str
    api: str = "chat"
    model: str | None = None  # served model name; looked up in /v1/models when None


@dataclass
class RequestResult:
    ok: bool
    status: int
    e2e: float
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


def random_prompts(n: int, words: int = 24, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["请解释：" + " ".join(rng.choice(_WORDS) for _ in range(words)) for _ in range(n)]


def dataset_prompts(path: str | Path, n: int, seed: int = 0) -> list[str]:
    """Questions from a .json list or .jsonl file (keys question / instruction / prompt, or strings)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    records = ([json.loads(line) for line in text.splitlines() if line.strip()]
               if path.suffix == ".jsonl" else json.loads(text))
    questions = []
    for r in records:
        q = r if isinstance(r, str) else next((r[k] for k in ("question", "instruction", "prompt")
                                                if isinstance(r.get(k), str)), None)
        if q and q.strip():
            questions.append(q)
    if not questions:
        raise ValueError(f"{path}: no questions found (expected keys question/instruction/prompt)")
    rng = random.Random(seed)
    rng.shuffle(questions)
    return [questions[i % len(questions)] for i in range(n)]


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    s = sorted(values)
    for p in PERCENTILES:
        if not s:
            out[f"p{p}"] = None
            continue
        k = (len(s) - 1) * p / 100  # linear interpolation, as numpy.percentile
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        out[f"p{p}"] = s[lo] + (s[hi] - s[lo]) * (k - lo)
    out["mean"] = sum(s) / len(s) if s else None
    return out


async def _stream_openai(client: httpx.AsyncClient, target: Target, prompt: str, max_tokens: int,
                         temperature: float, ignore_eos: bool) -> RequestResult:
    body: dict[str, Any] = {"model": target.model, "max_tokens": max_tokens, "temperature": temperature,
                            "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    if target.api == "chat":
        url, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        url, body["prompt"] = "/v1/completions", prompt
    start = time.perf_counter()
    ttft, last, itl, chunks, usage_tokens = None, None, [], 0, None
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return RequestResult(False, resp.status_code, time.perf_counter() - start,
                                 error=resp.text[:300])
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                return RequestResult(False, 200, time.perf_counter() - start,
                                     error=str(data["error"])[:300])
            if data.get("usage"):
                usage_tokens = data["usage"]["completion_tokens"]
            for choice in data.get("choices", []):
                piece = choice.get("delta", {}).get("content") if target.api == "chat" else choice.get("text")
                if piece:
                    now = time.perf_counter()
                    if ttft is None:
                        ttft = now - start
                    else:
                        itl.append(now - last)
                    last = now
                    chunks += 1
    e2e = time.perf_counter() - start
    return RequestResult(True, 200, e2e, ttft, itl, usage_tokens if usage_tokens is not None else chunks)


async def _predict(client: httpx.AsyncClient, prompts: list[str], max_tokens: int | None,
                   temperature: float, count_tokens: Callable[[str], int],
                   ignore_eos: bool) -> RequestResult:
    body: dict[str, Any] = {"prompt": prompts if len(prompts) > 1 else prompts[0],
                            "temperature": temperature}
    if ignore_eos:
        body["ignore_eos"] = True
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    start = time.perf_counter()
    resp = await client.post("/predict", json=body)
    e2e = time.perf_counter() - start
    if resp.status_code != 200:
        return RequestResult(False, resp.status_code, e2e, error=resp.text[:300])
    answers = resp.json()["response"]
    answers = answers if isinstance(answers, list) else [answers]
    if len(answers) != len(prompts):
        return RequestResult(False, 200, e2e, error=f"{len(answers)} answers for {len(prompts)} prompts")
    return RequestResult(True, 200, e2e, output_tokens=sum(count_tokens(a) for a in answers))


def _token_counter(tokenizer: str | None) -> tuple[Callable[[str], int], str]:
    if tokenizer:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tokenizer)
        return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), "tokenizer"
    # No tokenizer: ~1 token per CJK character or per 4 other characters (a rough estimate).
    def estimate(text: str) -> int:
        cjk = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
        return cjk + (len(text) - cjk + 3) // 4
    return estimate, "estimate"


async def _resolve_model(client: httpx.AsyncClient, target: Target) -> None:
    if target.api != "predict" and not target.model:
        try:
            resp = await client.get("/v1/models")
            resp.raise_for_status()
            target.model = resp.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{target.base_url}: cannot read the model name from /v1/models "
                             f"({type(exc).__name__}: {exc}); pass --model, or --api predict") from None


async def bench_target(target: Target, prompts: list[str], *, max_tokens: int = 64,
                       temperature: float = 0.0, request_rate: float | None = None,
                       concurrency: int | None = None, predict_batch: int = 1, seed: int = 0,
                       tokenizer: str | None = None, timeout: float = 600.0, ignore_eos: bool = False,
                       on_done: Callable[[], None] | None = None) -> dict[str, Any]:
    """Send `prompts` to one target; return its summary (and raw per-request numbers)."""
    count_tokens, token_source = _token_counter(tokenizer)
    limits = httpx.Limits(max_connections=concurrency or 10_000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=target.base_url, timeout=timeout, limits=limits,
                                 headers=api_key_headers()) as client:
        await _resolve_model(client, target)
        units = ([prompts[i:i + predict_batch] for i in range(0, len(prompts), predict_batch)]
                 if target.api == "predict" else [[p] for p in prompts])
        gate = asyncio.Semaphore(concurrency) if concurrency else contextlib.nullcontext()
        rng = random.Random(seed)

        async def one(unit: list[str]) -> RequestResult:
            async with gate:
                try:
                    if target.api == "predict":
                        res = await _predict(client, unit, max_tokens, temperature, count_tokens,
                                             ignore_eos)
                    else:
                        res = await _stream_openai(client, target, unit[0], max_tokens, temperature,
                                                  ignore_eos)
                except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
                    res = RequestResult(False, 0, 0.0, error=f"{type(exc).__name__}: {exc}"[:300])
            if on_done:
                on_done()
            return res

        started = time.perf_counter()
        tasks = []
        for unit in units:
            tasks.append(asyncio.create_task(one(unit)))
            if request_rate:  # Poisson arrivals
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    return summarize(target, results, wall, len(prompts), token_source)


def summarize(target: Target, results: list[RequestResult], wall: float, num_prompts: int,
              token_source: str) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok
            if r.ttft is not None and r.output_tokens > 1]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    return {
        "label": target.label, "base_url": target.base_url, "api": target.api, "model": target.model,
        "requests": len(results), "prompts": num_prompts, "completed": len(ok),
        "failed": len(results) - len(ok), "statuses": statuses,
        "errors": sorted({r.error for r in results if r.error})[:5],
        "wall_seconds": wall, "requests_per_second": len(ok) / wall if wall else 0.0,
        "output_tokens": out_tokens, "output_tokens_per_second": out_tokens / wall if wall else 0.0,
        "output_tokens_counted_by": "server usage" if target.api != "predict" else token_source,
        "ttft_s": percentiles([r.ttft for r in ok if r.ttft is not None]),
        "tpot_s": percentiles(tpot),
        "itl_s": percentiles([x for r in ok for x in r.itl]),
        "e2e_s": percentiles([r.e2e for r in ok]),
        "e2e_samples": [round(r.e2e, 6) for r in ok],
    }


def run_bench(endpoints: Sequence[str] = (), *, labels: Sequence[str] | None = None, api: str = "chat",
              model: str | None = None, num_requests: int = 100, request_rate: float | None = None,
              concurrency: int | None = None, prompts: str = "random", prompt_words: int = 24,
              max_tokens: int = 64, temperature: float = 0.0, predict_batch: int = 1, seed: int = 0,
              tokenizer: str | None = None, serve_model: str | None = None,
              engines: Sequence[str] = (), out_dir: str | Path | None = None, progress: bool = True,
              timeout: float = 600.0, warmup_requests: int = 2,
              ignore_eos: bool = False) -> dict[str, Any]:
    """Benchmark each endpoint (or each engine serving `serve_model`), one after another.

    Returns {"config": ..., "results": [summary per target]}; with `out_dir`, also writes
    bench.json and bench.png there. Prints a comparison table when `progress`.
    """
    from qaforge.bench.report import print_table, progress_bar, write_outputs

    if api not in APIS:
        raise ValueError(f"api must be one of {APIS}, got {api!r}")
    if not endpoints and not (serve_model and engines):
        raise ValueError("give endpoints, or serve_model and engines")
    if num_requests < 1:
        raise ValueError("num_requests must be >= 1")
    args = dict(locals())
    texts = (random_prompts(num_requests, prompt_words, seed) if prompts == "random"
             else dataset_prompts(prompts, num_requests, seed))
    names = list(labels or [])
    config = {k: v for k, v in args.items() if k in {
        "api", "num_requests", "request_rate", "concurrency", "prompts", "prompt_words", "max_tokens",
        "temperature", "predict_batch", "seed", "serve_model", "warmup_requests", "ignore_eos"}}
    config["engines"], config["endpoints"] = list(engines), list(endpoints)
    if serve_model and not tokenizer:
        tokenizer = serve_model

    def bench_one(target: Target) -> dict[str, Any]:
        kwargs = dict(max_tokens=max_tokens, temperature=temperature, request_rate=request_rate,
                      concurrency=concurrency, predict_batch=predict_batch, seed=seed,
                      tokenizer=tokenizer, timeout=timeout, ignore_eos=ignore_eos)
        if warmup_requests:  # let each server settle (allocations, first-request compilation)
            asyncio.run(bench_target(target, texts[:warmup_requests], **kwargs))
        with progress_bar(f"bench {target.label}", len(texts), enabled=progress) as advance:
            return asyncio.run(bench_target(target, texts, on_done=advance, **kwargs))

    results = []
    if endpoints:
        for i, url in enumerate(endpoints):
            label = names[i] if i < len(names) else url
            results.append(bench_one(Target(label, url.rstrip("/"), api, model)))
    else:
        from qaforge.serve.launcher import start_server
        for i, engine in enumerate(engines):
            label = names[i] if i < len(names) else engine
            server = start_server(serve_model, engine=engine)
            try:
                summary = bench_one(Target(label, server.base_url, api, model))
            finally:
                server.stop()
            summary["engine"] = engine
            results.append(summary)
    report = {"config": config, "results": results}
    if progress:
        print_table(report)
    if out_dir is not None:
        report["files"] = write_outputs(report, Path(out_dir))
    return report
