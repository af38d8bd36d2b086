"""AsyncLLM: the engine behind async per-request streams, stepped by one background thread.

Requests from any number of coroutines join the running batch at the next step (continuous batching).
The engine thread owns the scheduler: adds and aborts travel to it through a command queue, and new
tokens travel back to each request's asyncio.Queue with one `call_soon_threadsafe` per step.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from .config import EngineConfig
from .llm_engine import LLM
from .sampling_params import SamplingParams
from .sequence import Sequence


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None = None        # "stop" | "length" | "abort" once finished
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0              # generated so far, new ones included
    num_cached_tokens: int = 0
    error: str | None = field(default=None, repr=False)


class EngineDeadError(RuntimeError):
    pass


class AsyncLLM:
    def __init__(self, model: str, **kwargs):
        self.lora = dict(kwargs.pop("lora", None) or {})  # {name: PEFT adapter directory}
        self.config = EngineConfig(model=str(model), **kwargs)   # validates now; loads in start()
        if self.lora:
            from .layers.lora import read_adapter_config

            for name, path in self.lora.items():  # a bad adapter config fails here, before any weights load
                read_adapter_config(name, path)
        self.llm: LLM | None = None
        self._cond = threading.Condition()
        self._cmds: deque = deque()
        self._streams: dict[str, asyncio.Queue] = {}
        self._seqs: dict[str, Sequence] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._drain = False
        self._dead: BaseException | None = None
        self._stats: dict = {"waiting": 0, "running": 0, "kv_usage": 0.0}
        self.step_times: deque = deque(maxlen=1000)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self.llm is None:
            self.llm = await asyncio.to_thread(LLM.from_config, self.config, self.lora)
        self._stats = self.llm.stats()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="qaforge-engine", daemon=True)
        self._thread.start()

    async def shutdown(self, drain: bool = False) -> None:
        """Stop the loop; with drain=True, first let every admitted request finish."""
        with self._cond:
            self._stop = True
            self._drain = drain
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for rid, q in list(self._streams.items()):
            q.put_nowait(RequestOutput(rid, [], True, "abort"))

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    # ------------------------------------------------------------------ requests
    async def generate(self, prompt_token_ids, params: SamplingParams | None = None, request_id: str | None = None,
                       lora: str | None = None):
        """Async generator of RequestOutput; the last one has finished=True. Closing it aborts the request.
        `lora` names a registered LoRA adapter (None: the base model)."""
        if self._thread is None:
            raise RuntimeError("AsyncLLM.start() has not been awaited")
        if self._dead is not None:
            raise EngineDeadError(f"engine loop died: {self._dead!r}")
        rid = request_id if request_id is not None else uuid.uuid4().hex
        if rid in self._streams:
            raise ValueError(f"duplicate request_id {rid!r}")
        seq = self.llm.make_sequence(prompt_token_ids, params or SamplingParams(), rid, lora)  # ValueError on bad input
        q: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = q
        self._command(("add", seq))
        finished = False
        try:
            while True:
                out = await q.get()
                if out.error is not None:
                    finished = True
                    raise EngineDeadError(out.error)
                finished = out.finished
                yield out
                if finished:
                    break
        finally:
            self._streams.pop(rid, None)
            if not finished:
                self._command(("abort", rid))

    async def abort(self, request_id: str) -> None:
        self._command(("abort", request_id))

    def stats(self) -> dict:
        s = dict(self._stats)
        s["num_requests"] = len(self._streams)
        return s

    def _command(self, cmd) -> None:
        with self._cond:
            self._cmds.append(cmd)
            self._cond.notify()

    # ------------------------------------------------------------------ engine thread
    def _emit(self, items: list) -> None:  # runs on the event loop
        for rid, out in items:
            q = self._streams.get(rid)
            if q is not None:
                q.put_nowait(out)

    def _post(self, items: list) -> None:
        if items and self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._emit, items)
            except RuntimeError:
                pass

    def _run(self) -> None:
        llm = self.llm
        try:
            llm.bind_thread()
            while True:
                with self._cond:
                    while not self._cmds and llm.is_finished() and not self._stop:
                        self._cond.wait()
                    if self._stop and (not self._drain or (llm.is_finished() and not self._cmds)):
                        break
                    cmds = list(self._cmds)
                    self._cmds.clear()
                items = []
                for kind, arg in cmds:
                    if kind == "add":
                        self._seqs[arg.request_id] = arg
                        llm.add_sequence(arg)
                    else:
                        seq = self._seqs.pop(arg, None)
                        if seq is not None and llm.abort(seq):
                            items.append((arg, RequestOutput(arg, [], True, "abort", seq.num_prompt_tokens,
                                                             seq.num_completion_tokens)))
                if not llm.is_finished():
                    t0 = time.perf_counter()
                    for seq, tok in llm.step():
                        if seq.is_finished:
                            self._seqs.pop(seq.request_id, None)
                        items.append((seq.request_id, RequestOutput(
                            seq.request_id, [tok], seq.is_finished, seq.finish_reason if seq.is_finished else None,
                            seq.num_prompt_tokens, seq.num_completion_tokens, seq.num_cached_tokens)))
                    self.step_times.append(time.perf_counter() - t0)
                self._stats = llm.stats()
                self._post(items)
        except BaseException as e:  # the loop must never die silently: fail every open stream
            self._dead = e
            msg = f"{type(e).__name__}: {e}"
            self._post([(rid, RequestOutput(rid, [], True, "abort", error=msg)) for rid in list(self._streams)])
