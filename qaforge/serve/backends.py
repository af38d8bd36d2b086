"""One engine interface for the server, two backends: the native engine and vLLM.

The server speaks token ids to the engine (DESIGN.md: tokenization lives at the edges), streams
new tokens back as they are produced, and aborts a request when its client goes away. Both
backends batch concurrent requests themselves (continuous batching), so the server simply
submits every request as soon as it arrives.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any, AsyncIterator

from qaforge.serve.settings import ServeSettings

log = logging.getLogger("qaforge.serve")


@dataclass(frozen=True)
class GenParams:
    """Sampling for one sequence; temperature 0 means greedy (as in qaforge.engine.SamplingParams)."""
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0              # 0: no top-k
    seed: int | None = None
    ignore_eos: bool = False


@dataclass
class TokenDelta:
    """The tokens one engine step added to one request."""
    token_ids: list[int]
    finished: bool
    finish_reason: str | None = None  # "stop" (EOS) | "length" | "abort"


class Engine(abc.ABC):
    """What the HTTP layer needs from an inference engine."""

    name: str = "engine"

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights and allocate the KV cache; after it, generate() may be called."""

    @abc.abstractmethod
    def generate(self, prompt_ids: list[int], params: GenParams,
                 request_id: str) -> AsyncIterator[TokenDelta]:
        """Stream the new tokens of one request. Closing the iterator early aborts the request."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks (idempotent, unknown ids are ignored)."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release the engine (background loops, worker processes, memory)."""

    def stats(self) -> dict[str, Any]:
        """Engine-side counters for /metrics and /health (optional)."""
        return {}


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


class NativeEngine(Engine):
    """qaforge's own paged-KV engine (qaforge.engine.async_engine.AsyncLLM)."""

    name = "native"

    def __init__(self, model_path: str, settings: ServeSettings):
        self.model_path = model_path
        self.settings = settings
        self._llm: Any = None

    async def start(self) -> None:
        # Import torch and the engine in a thread: /health keeps answering 503 meanwhile.
        engine_module = await asyncio.to_thread(importlib.import_module, "qaforge.engine.async_engine")
        AsyncLLM = engine_module.AsyncLLM
        self._sampling_params = engine_module.SamplingParams
        device = pick_device(self.settings.device)
        s = self.settings
        kwargs = dict(device=device, dtype=pick_dtype(s.dtype, device),
                      max_model_len=s.max_model_len, max_num_seqs=s.max_num_seqs,
                      max_num_batched_tokens=max(s.max_num_batched_tokens, s.max_model_len),
                      gpu_memory_utilization=s.gpu_memory_utilization,
                      enable_prefix_caching=s.enable_prefix_caching, enforce_eager=s.enforce_eager)
        kwargs.update(self.settings.extra)
        log.info("native engine: %s %s", self.model_path, kwargs)
        self._llm = AsyncLLM(self.model_path, **kwargs)
        await self._llm.start()

    async def generate(self, prompt_ids: list[int], params: GenParams,
                       request_id: str) -> AsyncIterator[TokenDelta]:
        sampling = self._sampling_params(
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
            max_tokens=params.max_tokens, seed=params.seed, ignore_eos=params.ignore_eos)
        finished = False
        try:
            async for out in self._llm.generate(list(prompt_ids), sampling, request_id):
                finished = bool(out.finished)
                yield TokenDelta(list(out.new_token_ids), finished, out.finish_reason)
        finally:
            if not finished:  # the consumer left early (disconnect, timeout, stop string)
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def shutdown(self) -> None:
        if self._llm is not None:
            await self._llm.shutdown()
            self._llm = None

    def stats(self) -> dict[str, Any]:
        if self._llm is None:
            return {}
        try:
            return dict(self._llm.stats())
        except Exception:  # stats are best-effort; never fail a scrape over them
            return {}


class VllmEngine(Engine):
    """vLLM's v1 AsyncLLM, with the seed's settings (fp8, prefix caching, CUDA graphs, big batches)."""

    name = "vllm"

    def __init__(self, model_path: str, settings: ServeSettings):
        self.model_path = model_path
        self.settings = settings
        self._llm: Any = None

    def engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        s = self.settings
        kwargs: dict[str, Any] = dict(
            model=self.model_path,
            tokenizer=self.model_path,
            max_model_len=s.max_model_len,
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=max(s.max_num_batched_tokens, s.max_model_len),
            gpu_memory_utilization=s.gpu_memory_utilization,
            enable_prefix_caching=s.enable_prefix_caching,
            enforce_eager=s.enforce_eager,
            tensor_parallel_size=1,
            disable_log_stats=True,
        )
        if s.dtype != "auto":
            kwargs["dtype"] = s.dtype
        if s.quantization:
            kwargs["quantization"] = s.quantization
        kwargs.update(s.extra)
        return AsyncEngineArgs(**kwargs)

    async def start(self) -> None:
        # In a thread: importing vllm and building the engine (worker process, profiling, graphs)
        # take seconds to minutes, and /health must keep answering 503 meanwhile. AsyncLLM starts
        # its output task on the first generate() when built outside the event loop.
        self._llm = await asyncio.to_thread(self._build)

    def _build(self) -> Any:
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                f"the vllm engine needs vllm in this interpreter ({sys.executable}): {exc}. On CPU "
                f"run `.venv-vllm/bin/python -m qaforge.serve ...` (docs/serving.md)") from exc
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        self._SamplingParams, self._TokensPrompt = SamplingParams, TokensPrompt
        self._delta = RequestOutputKind.DELTA
        args = self.engine_args()
        log.info("vllm engine: %s", args)
        return AsyncLLM.from_engine_args(args)

    async def generate(self, prompt_ids: list[int], params: GenParams,
                       request_id: str) -> AsyncIterator[TokenDelta]:
        sampling = self._SamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p,
            # -1 = off in every vLLM release (0 is refused by older ones, e.g. the image's 0.11)
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_tokens,
            seed=params.seed, ignore_eos=params.ignore_eos,
            detokenize=False,  # the server detokenizes (stop strings, think filtering)
            output_kind=self._delta)
        prompt = self._TokensPrompt(prompt_token_ids=list(prompt_ids))
        finished = False
        try:
            async for out in self._llm.generate(prompt, sampling, request_id):
                completion = out.outputs[0]
                finished = bool(out.finished)
                yield TokenDelta(list(completion.token_ids), finished, completion.finish_reason)
        finally:
            if not finished:
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def make_engine(model_path: str, settings: ServeSettings) -> Engine:
    if settings.engine == "native":
        return NativeEngine(model_path, settings)
    if settings.engine == "vllm":
        return VllmEngine(model_path, settings)
    raise ValueError(f"unknown engine {settings.engine!r}")
