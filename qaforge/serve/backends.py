"""One engine interface for the server, two backends: the native engine and vLLM.

The server speaks token ids to the engine (tokenization lives at the edges: qaforge.chat, serve/service.py)
and streams new tokens back as they are produced. Each backend builds its engine's own sampling object
once per sequence (`sampling_params`) and hands the engine's stream through with one conversion at most.
Aborting a request whose consumer leaves early belongs to the engines themselves: both AsyncLLMs abort
when their stream is closed, so the backends only close the stream they opened. Both batch concurrent
requests themselves (continuous batching), so the server submits every request as soon as it arrives.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from qaforge.modeling import pick_device, pick_dtype
from qaforge.serve.settings import ServeSettings
# vLLM's plain-data helpers live beside it (and stay importable from here)
from qaforge.serve.vllm_support import first_token_time, lora_ranks, lora_request_fields, vllm_lora_args

log = logging.getLogger("qaforge.serve")


@dataclass
class TokenDelta:
    """The tokens one engine step added to one request: the fields of qaforge.engine's RequestOutput,
    which the native backend yields unchanged."""
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None = None  # "stop" (EOS) | "length" | "abort"


@dataclass(frozen=True)
class LoraSampling:
    """An engine's sampling object bound to a LoRA adapter (None: the base model) by `Engine.bind_lora`:
    it travels through the service unchanged and the backend unwraps it in generate()."""
    sampling: Any
    lora: str | None


@dataclass
class FinalOutput:
    """One request's whole output at once (`Engine.generate_final`: clients that do not stream)."""
    token_ids: list[int]
    finish_reason: str                      # "stop" (EOS) | "length" | "abort"
    first_token_time: float | None = None   # time.perf_counter() at its first token
    finish_time: float | None = None


class Engine(abc.ABC):
    """What the HTTP layer needs from an inference engine."""

    name: str = "engine"
    settings: ServeSettings

    def bind_lora(self, sampling: Any, lora: str | None) -> LoraSampling:
        """`sampling` for the adapter `lora` (a --lora name; None: the base model)."""
        if lora is not None and lora not in self.settings.lora_modules:
            raise ValueError(f"unknown LoRA adapter {lora!r}")
        return LoraSampling(sampling, lora)

    def unbind_lora(self, sampling: Any) -> tuple[Any, str | None]:
        """The engine's sampling object and its adapter. Unbound requests (/predict, warm-up) get the
        --predict-lora adapter, or the base model."""
        if isinstance(sampling, LoraSampling):
            return sampling.sampling, sampling.lora
        return sampling, self.settings.predict_lora or None

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights and allocate the KV cache; after it, generate() may be called."""

    @abc.abstractmethod
    def sampling_params(self, *, max_tokens: int, temperature: float, top_p: float = 1.0, top_k: int = 0,
                        seed: int | None = None, ignore_eos: bool = False, repetition_penalty: float = 1.0) -> Any:
        """The engine's own sampling object for one sequence; temperature 0 is greedy, top_k 0 is off."""

    @abc.abstractmethod
    def generate(self, prompt_ids: list[int], sampling: Any,
                 request_id: str) -> AsyncIterator[TokenDelta]:
        """Stream the new tokens of one request. Closing the iterator early aborts the request."""

    async def generate_final(self, prompts: list[list[int]], samplings: list[Any], request_ids: list[str], *,
                             on_first_token: Callable[[int, float], None] | None = None,
                             **kwargs: Any) -> list[FinalOutput]:
        """Whole outputs, in order, for clients that do not stream; `on_first_token(i, t)` when
        sequence i starts. Cancelling it aborts the unfinished ones. This default drains generate();
        an engine with a batch API overrides it (no per-token events)."""
        async def one(i: int) -> FinalOutput:
            ids: list[int] = []
            first, reason = None, "length"
            stream = self.generate(prompts[i], samplings[i], request_ids[i], **kwargs)
            async with contextlib.aclosing(stream):
                async for delta in stream:
                    if delta.new_token_ids and first is None:
                        first = time.perf_counter()
                        if on_first_token is not None:
                            on_first_token(i, first)
                    ids.extend(delta.new_token_ids)
                    if delta.finished:
                        reason = delta.finish_reason or "stop"
            return FinalOutput(ids, reason, first, time.perf_counter())

        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release the engine (background loops, worker processes, memory)."""

    def stats(self) -> dict[str, Any]:
        """Engine-side counters for /metrics and /health (optional)."""
        return {}

    async def constrain(self, sampling: Any, response_format: dict[str, Any], thinking: bool = False) -> Any:
        """`sampling` restricted to a checked response format (serve/structured.py): {"type": "json_object"}
        or {"type": "json_schema", "schema": {...}}, after a thought with `thinking`. ValueError if refused."""
        raise ValueError(f"the {self.name} engine does not support structured output")


class NativeEngine(Engine):
    """qaforge's own paged-KV engine (qaforge.engine.async_engine.AsyncLLM)."""

    name = "native"

    def __init__(self, model_path: str, settings: ServeSettings):
        self.model_path = model_path
        self.settings = settings
        self._llm: Any = None
        self._vocab: Any = None                  # engine.structured.Vocabulary, on first use
        self._grammars: dict[str, Any] = {}      # response format (JSON text) -> Grammar
        self._grammar_lock = threading.Lock()

    def engine_kwargs(self) -> dict[str, Any]:
        s = self.settings
        device = pick_device(s.device)
        kwargs = dict(device=device, dtype=pick_dtype(s.dtype, device),
                      max_model_len=s.max_model_len, max_num_seqs=s.max_num_seqs,
                      max_num_batched_tokens=max(s.max_num_batched_tokens, s.max_model_len),
                      gpu_memory_utilization=s.gpu_memory_utilization,
                      enable_prefix_caching=s.enable_prefix_caching, enforce_eager=s.enforce_eager)
        if s.quantization:  # the seed's vLLM setting ("fp8") means the same in the native engine
            kwargs["quantization"] = s.quantization
        if s.lora_modules:
            kwargs["lora"] = s.lora_modules  # loaded and checked against the model by the engine
        kwargs.update(s.extra)
        return kwargs

    async def start(self) -> None:
        # Importing torch and the engine takes seconds: in a thread, so /health keeps answering 503.
        self._llm = await asyncio.to_thread(self._build)
        await self._llm.start()

    def _build(self) -> Any:
        from qaforge.engine import SamplingParams
        from qaforge.engine.async_engine import AsyncLLM

        self._SamplingParams = SamplingParams
        kwargs = self.engine_kwargs()
        log.info("native engine: %s %s", self.model_path, kwargs)
        return AsyncLLM(self.model_path, **kwargs)

    def sampling_params(self, *, max_tokens: int, temperature: float, top_p: float = 1.0, top_k: int = 0,
                        seed: int | None = None, ignore_eos: bool = False, repetition_penalty: float = 1.0) -> Any:
        return self._SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                    seed=seed, ignore_eos=ignore_eos, repetition_penalty=repetition_penalty)

    async def constrain(self, sampling: Any, response_format: dict[str, Any], thinking: bool = False) -> Any:
        # In a thread: the first call builds llguidance's vocabulary (about a second for Qwen3) and
        # compiling a large schema can take as long; the event loop keeps serving meanwhile.
        grammar = await asyncio.to_thread(self._grammar, response_format)
        if thinking:  # the grammar starts after `</think>`; the thought's budget is engine.structured's rule
            from qaforge.engine.structured import thought_budget

            grammar = grammar.after_thought(thought_budget(sampling.max_tokens))
        return dataclasses.replace(sampling, grammar=grammar)

    def _grammar(self, response_format: dict[str, Any]) -> Any:
        from qaforge.engine.structured import Vocabulary
        from qaforge.modeling import load_tokenizer

        key = json.dumps(response_format, sort_keys=True)
        with self._grammar_lock:
            if key in self._grammars:  # clients send the same schema again and again
                return self._grammars[key]
            if self._vocab is None:
                llm = self._llm.llm
                self._vocab = Vocabulary(load_tokenizer(self.model_path), llm.vocab_size,
                                         llm.eos_token_ids)
            vocab = self._vocab
        if response_format["type"] == "json_object":
            grammar = vocab.json_object()
        else:
            grammar = vocab.json_schema(response_format["schema"])
        with self._grammar_lock:
            if len(self._grammars) >= 128:
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = grammar
        return grammar

    def generate(self, prompt_ids: list[int], sampling: Any, request_id: str) -> AsyncIterator[TokenDelta]:
        # AsyncLLM's RequestOutput has TokenDelta's fields; closing it aborts the request.
        sampling, lora = self.unbind_lora(sampling)
        return self._llm.generate(prompt_ids, sampling, request_id, lora=lora)

    async def generate_final(self, prompts: list[list[int]], samplings: list[Any], request_ids: list[str], *,
                             on_first_token: Callable[[int, float], None] | None = None,
                             **kwargs: Any) -> list[FinalOutput]:
        # AsyncLLM.generate_batch: one add for all, nothing per token, one output per sequence.
        bound = [self.unbind_lora(s) for s in samplings]
        outs = await self._llm.generate_batch(prompts, [p for p, _ in bound], request_ids,
                                              on_first_token=on_first_token, loras=[lo for _, lo in bound], **kwargs)
        return [FinalOutput(o.new_token_ids, o.finish_reason or "stop", o.first_token_time, o.finish_time)
                for o in outs]

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
    """vLLM's v1 AsyncLLM, with the course project's settings (fp8, prefix caching, CUDA graphs, big batches)."""

    name = "vllm"

    def __init__(self, model_path: str, settings: ServeSettings):
        self.model_path = model_path
        self.settings = settings
        self._llm: Any = None

    def engine_kwargs(self) -> dict[str, Any]:
        """vLLM's AsyncEngineArgs fields, by their names (vllm.engine.arg_utils)."""
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
            # `vllm serve -tp N -dp M`: with M > 1 vLLM's AsyncLLM starts M engine processes and
            # balances requests over them itself (its internal load balancer).
            tensor_parallel_size=s.tensor_parallel_size,
            data_parallel_size=s.data_parallel_size,
            disable_log_stats=True,
        )
        if s.dtype != "auto":
            kwargs["dtype"] = s.dtype
        if s.quantization:
            kwargs["quantization"] = s.quantization
        if s.lora_modules:
            kwargs.update(vllm_lora_args(lora_ranks(self.model_path, s.lora_modules)))
        kwargs.update(s.extra)
        return kwargs

    def engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        kwargs = self.engine_kwargs()
        try:  # vLLM >= 0.11: the JSON layout is an engine setting, not a request's
            from vllm.config import StructuredOutputsConfig
        except ImportError:
            pass
        else:
            # llguidance, the native engine's grammar library, with compact JSON: the same answers'
            # shape on both engines, and no endless whitespace from a weak model.
            kwargs.setdefault("structured_outputs_config", StructuredOutputsConfig(
                backend="guidance", disable_any_whitespace=True))
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
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        self._SamplingParams, self._TokensPrompt = SamplingParams, TokensPrompt
        self._lora_requests = {name: LoRARequest(**fields)
                               for name, fields in lora_request_fields(self.settings.lora_modules).items()}
        self._delta, self._final_only = RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY
        args = self.engine_args()
        log.info("vllm engine: %s", args)
        return AsyncLLM.from_engine_args(args)

    def sampling_params(self, *, max_tokens: int, temperature: float, top_p: float = 1.0, top_k: int = 0,
                        seed: int | None = None, ignore_eos: bool = False, repetition_penalty: float = 1.0) -> Any:
        return self._SamplingParams(
            n=1, temperature=temperature, top_p=top_p,
            # -1 = off in every vLLM release (0 is refused by older ones, e.g. the image's 0.11)
            top_k=top_k if top_k > 0 else -1, max_tokens=max_tokens, seed=seed, ignore_eos=ignore_eos,
            repetition_penalty=repetition_penalty,
            detokenize=False,  # the server detokenizes (stop strings, think filtering)
            output_kind=self._delta)

    async def constrain(self, sampling: Any, response_format: dict[str, Any], thinking: bool = False) -> Any:
        # vLLM compiles and enforces the grammar itself (engine_args picks its llguidance backend).
        # disable_any_whitespace is read per request by older vLLMs, from the engine config by newer.
        # `thinking` is not passed on: without a reasoning parser (not configured here) vLLM applies
        # the grammar from the first token (docs/serving.md).
        if response_format["type"] == "json_object":
            spec = dict(json_object=True, disable_any_whitespace=True)
        else:
            from qaforge.engine.structured import json_schema_grammar

            json_schema_grammar(response_format["schema"])  # a bad schema: 400 now, not a failed stream
            spec = dict(json=response_format["schema"], disable_any_whitespace=True)
        try:
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError:  # vLLM before 0.11 called it guided decoding
            from vllm.sampling_params import GuidedDecodingParams

            sampling.guided_decoding = GuidedDecodingParams(**spec)
            return sampling
        sampling.structured_outputs = StructuredOutputsParams(**spec)
        return sampling

    def _submit(self, prompt_ids: list[int], sampling: Any, request_id: str) -> AsyncIterator[Any]:
        """vLLM's output stream of one request; it aborts the request when closed or cancelled."""
        prompt = self._TokensPrompt(prompt_token_ids=list(prompt_ids))
        sampling, lora = self.unbind_lora(sampling)
        lora_request = self._lora_requests[lora] if lora else None
        return self._llm.generate(prompt, sampling, request_id, lora_request=lora_request)

    async def generate(self, prompt_ids: list[int], sampling: Any,
                       request_id: str) -> AsyncIterator[TokenDelta]:
        stream = self._submit(prompt_ids, sampling, request_id)
        async with contextlib.aclosing(stream):  # closing it is our part of aborting
            async for out in stream:
                completion = out.outputs[0]
                yield TokenDelta(list(completion.token_ids), out.finished, completion.finish_reason)

    async def generate_final(self, prompts: list[list[int]], samplings: list[Any], request_ids: list[str], *,
                             on_first_token: Callable[[int, float], None] | None = None,
                             **kwargs: Any) -> list[FinalOutput]:
        # vLLM's own non-streaming output kind (its OpenAI server's for stream=false): one RequestOutput
        # per request, with all its tokens, instead of one event per token per request.
        async def one(i: int) -> FinalOutput:
            sampling, lora = self.unbind_lora(samplings[i])
            final = sampling.clone()  # the caller's object stays a DELTA one
            final.output_kind = self._final_only
            start = time.perf_counter()
            last = None
            stream = self._submit(prompts[i], LoraSampling(final, lora), request_ids[i])
            async with contextlib.aclosing(stream):
                async for out in stream:
                    last = out
            if last is None or not last.finished:  # vLLM ended the stream without a final output
                return FinalOutput([], "abort", None, time.perf_counter())
            first = first_token_time(last, start)
            if first is not None and on_first_token is not None:
                on_first_token(i, first)
            completion = last.outputs[0]
            return FinalOutput(list(completion.token_ids), completion.finish_reason or "stop", first,
                               time.perf_counter())

        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))

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
