"""Requests -> engine sequences: admission control, sampling parameters, metrics, detokenization,
stop strings.

Two paths. A stream (`stream`) gets every token as the engine makes it and detokenizes as it goes
(TextStream). A plain request (`complete`, `complete_batch`) takes the fast path when it has no stop
string: all its sequences reach the engine in one call, the engine hands back one finished output
per sequence (no per-token event), and the answers are decoded in one `batch_decode` at the end. A
plain request with stop strings is read token by token, so a stop string ends its sequence at once.

Routes (grader and OpenAI) call only `GenerationService`; it knows nothing about HTTP except the
ApiError it raises for a full queue or a prompt that does not fit. A request's sampling fields become
the engine's own sampling object here, once (`sampling`). Streams are closed, never aborted, here:
closing an engine stream early is what aborts its sequence (serve/backends.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Sequence

from qaforge.serve.backends import Engine, TokenDelta
from qaforge.serve.errors import ApiError
from qaforge.serve.metrics import ServerMetrics
from qaforge.serve.settings import ServeSettings
from qaforge.serve.textstream import TextStream, split_visible, visible_text


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    reasoning: str | None = None    # the thought, in thinking mode only


@dataclass
class StreamEvent:
    text: str                       # new visible text ("" is allowed on the final event)
    finish_reason: str | None       # set on the last event only
    completion_tokens: int = 0
    reasoning: str = ""             # new visible thought (thinking mode)


class GenerationService:
    def __init__(self, engine: Engine, tokenizer: Any, settings: ServeSettings,
                 metrics: ServerMetrics):
        self.engine, self.tokenizer, self.settings, self.metrics = engine, tokenizer, settings, metrics
        self.pending = 0  # sequences admitted and not finished (running or queued in the engine)

    # ---- admission -------------------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self, num_sequences: int) -> Iterator[None]:
        """Reserve room for a request's sequences, or refuse it with 429 + Retry-After."""
        if num_sequences > self.settings.max_pending:  # would never fit: retrying cannot help
            raise ApiError(413, f"{num_sequences} prompts in one request is more than the server's "
                                f"queue of {self.settings.max_pending} (QAFORGE_MAX_PENDING); split it")
        if self.pending + num_sequences > self.settings.max_pending:
            self.metrics.rejected.inc(num_sequences)
            raise ApiError(429, f"server is at capacity ({self.pending} sequences pending, limit "
                                f"{self.settings.max_pending}); retry after "
                                f"{self.settings.retry_after} s",
                           headers={"Retry-After": str(self.settings.retry_after)})
        self.pending += num_sequences
        try:
            yield
        finally:
            self.pending -= num_sequences

    # ---- prompt checks ---------------------------------------------------------------------
    def fit_max_tokens(self, prompt_ids: Sequence[int], requested: int | None, param: str = "prompt") -> int:
        """The answer budget: the request's (or the default), cut to what the context leaves."""
        limit = self.settings.max_model_len
        if not prompt_ids:
            raise ApiError(400, "prompt is empty after tokenization", param)
        if len(prompt_ids) >= limit:
            raise ApiError(400, f"{param}: {len(prompt_ids)} prompt tokens, but the context is "
                                f"{limit} tokens (prompt + answer); shorten the prompt", param)
        budget = self.settings.max_tokens if requested is None else requested
        return max(1, min(budget, limit - len(prompt_ids)))

    def sampling(self, prompt_ids: Sequence[int], max_tokens: int | None, param: str = "prompt", *,
                 temperature: float, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 ignore_eos: bool = False, repetition_penalty: float | None = None) -> Any:
        """The engine's sampling parameters for one sequence: the answer budget fitted to the context
        (`fit_max_tokens`), top_k -1 read as 0 (off)."""
        return self.engine.sampling_params(
            max_tokens=self.fit_max_tokens(prompt_ids, max_tokens, param), temperature=temperature,
            top_p=top_p, top_k=max(0, top_k), seed=seed, ignore_eos=ignore_eos,
            repetition_penalty=self.settings.repetition_penalty if repetition_penalty is None else repetition_penalty)

    # ---- generation ------------------------------------------------------------------------
    async def _sequence(self, prompt_ids: list[int], sampling: Any,
                        outcome: dict[str, str] | None = None) -> AsyncIterator[TokenDelta]:
        """One engine sequence with its metrics; closing it closes (so aborts) the engine's stream.
        A consumer that ends it early on purpose (a stop string) says so in `outcome["reason"]`."""
        m = self.metrics
        m.prompt_tokens.inc(len(prompt_ids))
        request_id = uuid.uuid4().hex
        start = time.perf_counter()
        first = last = None
        produced = 0
        reason = "abort"
        m.queue_depth.inc()
        gen = self.engine.generate(prompt_ids, sampling, request_id)
        try:
            async with contextlib.aclosing(gen):
                async for delta in gen:
                    if delta.new_token_ids:
                        now = time.perf_counter()
                        if first is None:
                            first = now
                            m.queue_depth.dec()
                            m.running.inc()
                            m.ttft.observe(now - start)
                        last = now
                        produced += len(delta.new_token_ids)
                        m.generation_tokens.inc(len(delta.new_token_ids))
                    if delta.finished:
                        reason = delta.finish_reason or "stop"
                    yield delta
        finally:
            if first is None:
                m.queue_depth.dec()
            else:
                m.running.dec()
                m.e2e.observe(last - start)
                if produced > 1:
                    m.tpot.observe((last - first) / (produced - 1))
            m.sequences.labels((outcome or {}).get("reason") or reason).inc()

    async def stream(self, prompt_ids: list[int], sampling: Any, stop: Sequence[str] = (),
                     splitter: Any = None) -> AsyncIterator[StreamEvent]:
        """Visible text as it is produced; the last event carries the finish reason. With a
        `qaforge.chat.ReasoningSplitter` (thinking mode) the thought comes in `reasoning`."""
        text = TextStream(self.tokenizer, stop, splitter)
        reason, outcome = "length", {}
        seq = self._sequence(prompt_ids, sampling, outcome)
        async with contextlib.aclosing(seq):
            async for delta in seq:
                piece = text.push(delta.new_token_ids)
                thought = text.take_reasoning()
                if piece or thought:
                    yield StreamEvent(piece, None, text.num_tokens, thought)
                if text.stopped:
                    reason = outcome["reason"] = "stop"
                    break
                if delta.finished:
                    reason = "length" if delta.finish_reason == "length" else "stop"
                    break
        last = text.finish()
        yield StreamEvent(last, reason, text.num_tokens, text.take_reasoning())

    async def complete(self, prompt_ids: list[int], sampling: Any, stop: Sequence[str] = (),
                       splitter: Any = None) -> Completion:
        return (await self.complete_batch([(prompt_ids, sampling)], stop, [splitter]))[0]

    async def complete_batch(self, jobs: Sequence[tuple[list[int], Any]], stop: Sequence[str] = (),
                             splitters: Sequence[Any] | None = None) -> list[Completion]:
        """Answers to (prompt ids, sampling) jobs, in order. Cancelling it aborts every sequence. A job's
        `qaforge.chat.ReasoningSplitter` (thinking mode) moves its thought into `Completion.reasoning`."""
        splitters = list(splitters) if splitters is not None else [None] * len(jobs)
        if any(stop):
            return list(await asyncio.gather(*(self._complete_streamed(ids, p, stop, sp)
                                               for (ids, p), sp in zip(jobs, splitters))))
        prompts = [ids for ids, _ in jobs]
        outs = await self._final_outputs(prompts, [p for _, p in jobs])
        raws = self.tokenizer.batch_decode([o.token_ids for o in outs], skip_special_tokens=True)
        results = []
        for ids, out, raw, splitter in zip(prompts, outs, raws, splitters):
            if splitter is None:
                text, _ = visible_text(raw, (), final=True)
                thought = None
            else:
                thought, text, _ = split_visible(raw, (), splitter.opened)
            reason = "length" if out.finish_reason == "length" else "stop"
            results.append(Completion(text, reason, len(ids), len(out.token_ids), thought))
        return results

    async def _final_outputs(self, prompts: list[list[int]], samplings: list[Any]) -> list[Any]:
        """The engine's whole outputs (no per-token events), with the same metrics as `_sequence`."""
        m, n = self.metrics, len(prompts)
        m.prompt_tokens.inc(sum(map(len, prompts)))
        m.queue_depth.inc(n)
        started: list[bool] = [False] * n
        start = time.perf_counter()

        def on_first_token(i: int, t: float) -> None:
            started[i] = True
            m.queue_depth.dec()
            m.running.inc()
            m.ttft.observe(max(0.0, t - start))

        outs = None
        try:
            outs = await self.engine.generate_final(prompts, samplings, [uuid.uuid4().hex for _ in range(n)],
                                                    on_first_token=on_first_token)
        finally:
            began = sum(started)
            m.queue_depth.dec(n - began)
            m.running.dec(began)
            if outs is None:  # cancelled (client gone, timeout) or failed: the engine aborted them all
                m.sequences.labels("abort").inc(n)
        for out in outs:
            produced = len(out.token_ids)
            m.generation_tokens.inc(produced)
            m.sequences.labels(out.finish_reason).inc()
            if out.finish_time is not None:
                m.e2e.observe(max(0.0, out.finish_time - start))
                if produced > 1 and out.first_token_time is not None:
                    m.tpot.observe((out.finish_time - out.first_token_time) / (produced - 1))
        return outs

    async def _complete_streamed(self, prompt_ids: list[int], sampling: Any, stop: Sequence[str],
                                 splitter: Any = None) -> Completion:
        stream = TextStream(self.tokenizer, stop, splitter)
        token_ids: list[int] = []
        reason, outcome = "length", {}
        seq = self._sequence(prompt_ids, sampling, outcome)
        async with contextlib.aclosing(seq):
            async for delta in seq:
                token_ids.extend(delta.new_token_ids)
                stream.push(delta.new_token_ids)
                if stream.stopped:
                    reason = outcome["reason"] = "stop"
                    break
                if delta.finished:
                    reason = "length" if delta.finish_reason == "length" else "stop"
                    break
        raw = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        if splitter is None:
            text, stopped = visible_text(raw, stop, final=True)
            thought = None
        else:
            thought, text, stopped = split_visible(raw, stop, splitter.opened)
        return Completion(text, "stop" if stopped else reason, len(prompt_ids), len(token_ids), thought)

