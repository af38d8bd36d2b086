"""Async scheduling (`EngineConfig.async_scheduling`): host work of decode step k overlaps the device's step k+1.

The synchronous engine reads step k's sampled ids (a host sync) before it schedules step k+1, so the device
waits while the host appends tokens, checks stops and builds the next inputs. Here, for consecutive pure
decode steps, step k+1 is enqueued first: its input ids are step k's sampled ids taken on the device, its
positions, slots and context lengths are one token ahead of the host, and the slot's block is reserved
before launch (`Scheduler.schedule_ahead`). Then step k's ids are read (the copy to pinned memory was queued
right behind step k, so the wait does not include step k+1) and postprocessed while the device runs k+1.

A row whose sequence ends at step k (EOS, a stop id, abort) still runs in step k+1; its token is dropped
(`Scheduler.finish_inflight`). Its KV write is harmless: it is the true KV of the true token k (the input id
came from step k), written into a block the sequence owned alone (a prefix-cache hit never covers the last
prompt token, and a shared block is never the one being written); the block is freed, unhashed, and any later
owner's writes are enqueued after it on the same stream. Rows that end by length are known in advance and
get no extra row. A block filled by the in-flight token is hashed once that token is on the host.

Everything else takes the synchronous path after the pipeline drains: prefill and mixed steps, a sequence
that can be admitted, a decode that needs a block that is not free (preemption), and batches with a row that
is not overlap-safe (`overlappable`).
"""
from __future__ import annotations

import torch

from .sequence import Sequence


# A decode batch of fewer rows takes the synchronous path: at one stream the overlap saved nothing (the graph
# replay is ~90 % of the step) and its extra device copies made W2 5 % slower (docs/benchmarks.md, 2026-12-02).
MIN_ROWS = 2


def overlappable(seq: Sequence) -> bool:
    """Rows whose tokens do not depend on the batch around them nor on host state updated per token: greedy,
    or sampled from the request's own seeded generator (an extra row after its end draws from that generator
    only); no repetition penalty or grammar (their state is updated from the host's ids) and no LoRA adapter."""
    p = seq.params
    if seq.lora_id or p.repetition_penalty != 1.0 or p.grammar is not None:
        return False
    return p.greedy or p.seed is not None


class _InFlight:
    """A decode step enqueued and not read yet: its rows, its ids on the device, their copy on the host."""
    __slots__ = ("seqs", "ids", "host", "event")

    def __init__(self, seqs: list[Sequence], ids: torch.Tensor, host: torch.Tensor, event):
        self.seqs, self.ids, self.host, self.event = seqs, ids, host, event

    def tokens(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()  # step k only: the next step was enqueued after this event
        return self.host.tolist()


class OverlapPipeline:
    """Drives `LLM.step` with async scheduling on; one step's (sequence, token) pairs per call, as before.
    It holds the runner, not the LLM (no reference cycle: a deleted engine frees its GPU memory at once)."""

    def __init__(self, llm):
        self.runner = llm.runner
        self.pending: _InFlight | None = None
        self.num_overlapped = 0  # steps enqueued before the previous step's ids were read
        if self.runner.is_cuda:
            # two pinned buffers in turn: step k's is read after step k+1 has been given the other one
            n = llm.config.max_num_seqs
            self._hosts = [torch.empty(n, dtype=torch.int64, pin_memory=True) for _ in range(2)]
            self._events = [torch.cuda.Event(), torch.cuda.Event()]
            self._turn = 0

    def _launch(self, seqs: list[Sequence], prev: _InFlight | None = None, rows: list[int] | None = None) -> _InFlight:
        prev_ids = None
        if prev is not None:
            prev_ids = prev.ids
            if len(rows) != len(prev.seqs):  # some rows ended: gather the survivors' ids on the device
                prev_ids = prev_ids[torch.tensor(rows, dtype=torch.int64).to(prev_ids.device, non_blocking=True)]
        ids = self.runner.decode(seqs, prev_ids, keep=True)
        if not self.runner.is_cuda:
            return _InFlight(seqs, ids, ids, None)
        t = self._turn
        self._turn ^= 1
        host = self._hosts[t][: len(seqs)]
        host.copy_(ids, non_blocking=True)
        self._events[t].record()
        return _InFlight(seqs, ids, host, self._events[t])

    def step(self, llm) -> list[tuple[Sequence, int]]:
        sched = llm.scheduler
        if self.pending is None:
            batch = sched.schedule()
            if not batch.seqs:
                return []
            if batch.is_prefill or len(batch.seqs) < MIN_ROWS or not all(overlappable(s) for s in batch.seqs):
                return llm.run_batch(batch)
            self.pending = self._launch(batch.seqs)
        done, self.pending = self.pending, None
        rows = sched.schedule_ahead(done.seqs)
        if rows:
            self.pending = self._launch([done.seqs[i] for i in rows], done, rows)
            self.num_overlapped += 1
        out = sched.finish_inflight(done.seqs, done.tokens(), set(rows or ()))
        llm.count_step(0, len(out))
        return out
