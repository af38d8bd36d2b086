"""Continuous batching: waiting and running queues, prefill and decode steps, chunked prefill, preemption.

Without chunked prefill a step is either a prefill step (new sequences, whole prompts, up to
max_num_batched_tokens tokens that are not already in the prefix cache) or a decode step (one token for
every running sequence). With chunked prefill (the default) one step holds every running decode (one token
each) and fills the rest of the token budget with prompt chunks: the oldest partly computed prompts first,
then new ones, a long prompt split over several steps. Only a row whose context is complete is sampled.

When the KV cache has no block for a decoding sequence, the most recently admitted sequence is preempted: its
blocks are freed and it goes back to the front of the waiting queue, to be recomputed (prompt + output so
far) by a later prefill.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property

from .block_manager import BlockManager
from .config import EngineConfig
from .sequence import Sequence, SequenceStatus


@dataclass
class Batch:
    """One step's work. Rows are ordered decodes first (the attention kernels split the batch there)."""
    seqs: list[Sequence]
    num_new: list[int]          # tokens computed per row this step (1 for a decode)
    num_decodes: int            # leading rows that continue a generation
    sample: list[bool]          # rows whose context is complete after this step: they get a token

    @property
    def is_prefill(self) -> bool:
        """False for a pure decode step (the CUDA-graph path)."""
        return self.num_decodes < len(self.seqs)

    @cached_property
    def sampled(self) -> list[Sequence]:
        if self.num_decodes == len(self.seqs):
            return self.seqs
        return [s for s, x in zip(self.seqs, self.sample) if x]


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_model_len = config.max_model_len
        self.chunked = config.enable_chunked_prefill
        self.eos_token_ids = frozenset(config.eos_token_ids)
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> Batch:
        return self._schedule_chunked() if self.chunked else self._schedule_whole()

    def _admit(self, seq: Sequence, commit: bool = True) -> None:
        self.block_manager.allocate(seq, commit=commit)
        seq.status = SequenceStatus.RUNNING
        self.waiting.popleft()
        self.running.append(seq)

    def _decodes(self, seqs) -> list[Sequence]:
        """Make room for one more token of each decoding sequence, preempting the newest when blocks run out."""
        bm = self.block_manager
        scheduled: list[Sequence] = []
        taken: set[int] = set()
        running = SequenceStatus.RUNNING
        append = bm.append_slot
        for seq in seqs:
            if seq.status is not running:  # preempted for an earlier one
                continue
            while not append(seq):
                victim = next((s for s in reversed(self.running) if s is not seq and s.seq_id not in taken), seq)
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                scheduled.append(seq)
                taken.add(seq.seq_id)
        return scheduled

    def _schedule_whole(self) -> Batch:
        bm = self.block_manager
        scheduled: list[Sequence] = []
        num_tokens = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not bm.can_allocate(seq):
                break
            # upper bound: a prefix-cache hit only lowers the count
            if scheduled and num_tokens + len(seq) > self.max_num_batched_tokens:
                break
            self._admit(seq)
            num_tokens += len(seq) - seq.num_cached_tokens
            scheduled.append(seq)
        if scheduled:
            return Batch(scheduled, [len(s) - s.num_computed_tokens for s in scheduled], 0, [True] * len(scheduled))
        scheduled = self._decodes(list(self.running)[: self.max_num_seqs])
        return Batch(scheduled, [1] * len(scheduled), len(scheduled), [True] * len(scheduled))

    def _schedule_chunked(self) -> Batch:
        bm = self.block_manager
        before = self.num_preemptions
        decoding, partial = [], []
        for s in self.running:
            (decoding if len(s.token_ids) - s.num_computed_tokens == 1 else partial).append(s)
        decodes = self._decodes(decoding)
        budget = self.max_num_batched_tokens - len(decodes)  # decodes always run: no sequence starves
        chunks: list[Sequence] = []
        sizes: list[int] = []
        for seq in partial:
            left = len(seq.token_ids) - seq.num_computed_tokens
            if seq.status is SequenceStatus.RUNNING and budget > 0:
                n = min(left, budget)
                bm.commit(seq, seq.num_computed_tokens + n)
                chunks.append(seq)
                sizes.append(n)
                budget -= n
        # new prompts only when nothing was preempted: a preempted sequence must not lose its place
        while (self.num_preemptions == before and budget > 0 and self.waiting
               and len(self.running) < self.max_num_seqs and bm.can_allocate(self.waiting[0])):
            seq = self.waiting[0]
            self._admit(seq, commit=False)
            n = min(len(seq) - seq.num_computed_tokens, budget)
            bm.commit(seq, seq.num_computed_tokens + n)
            chunks.append(seq)
            sizes.append(n)
            budget -= n
        return Batch(decodes + chunks, [1] * len(decodes) + sizes, len(decodes),
                     [True] * len(decodes) + [s.num_computed_tokens + n == len(s) for s, n in zip(chunks, sizes)])

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.block_manager.deallocate(seq)
        self.waiting.appendleft(seq)

    def check_stop(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if not p.ignore_eos and token in self.eos_token_ids:
            return "stop"
        if token in p.stop_token_ids:
            return "stop"
        if seq.num_completion_tokens >= p.max_tokens or len(seq) >= self.max_model_len:
            return "length"
        return None

    def postprocess(self, batch: Batch, token_ids: list[int]) -> list[Sequence]:
        """Advance each row's computed tokens; append the sampled ids (one per sampled row, in order)."""
        for seq, n in zip(batch.seqs, batch.num_new):
            seq.num_computed_tokens += n
        finished = []
        eos, max_len = self.eos_token_ids, self.max_model_len
        for seq, tok in zip(batch.sampled, token_ids):
            ids = seq.token_ids
            ids.append(tok)
            p = seq.params
            # the common case first, cheaply: no stop id, below both length limits
            if (p.ignore_eos or tok not in eos) and tok not in p.stop_token_ids \
                    and len(ids) - seq.num_prompt_tokens < p.max_tokens and len(ids) < max_len:
                continue
            seq.finish_reason = self.check_stop(seq, tok)
            seq.status = SequenceStatus.FINISHED
            self.block_manager.deallocate(seq)
            self.running.remove(seq)
            finished.append(seq)
        return finished

    # ------------------------------------------------------------------ async scheduling (engine/overlap.py)
    def schedule_ahead(self, seqs: list[Sequence]) -> list[int] | None:
        """The rows of the decode step in flight (`seqs`) that decode once more in the next step, whose input
        is the in-flight step's token (on the device only); each gets the slot for it. None: the next step must
        be scheduled the ordinary way, once the in-flight tokens are in (the caller drains the pipeline)."""
        bm = self.block_manager
        if self.waiting and len(self.running) < self.max_num_seqs and bm.can_allocate(self.waiting[0]):
            return None  # a new or preempted sequence can be admitted: a prefill comes first
        running = SequenceStatus.RUNNING
        live = [i for i, s in enumerate(seqs) if s.status is running]  # aborted or finished rows drop out
        if len(live) != len(self.running):
            return None  # chunked prefill: a prompt is still partly computed
        bs, max_len = bm.block_size, self.max_model_len
        rows: list[int] = []
        need = 0
        for i in live:
            s = seqs[i]
            n = len(s.token_ids) + 1  # its length once the in-flight token lands
            if n - s.num_prompt_tokens >= s.params.max_tokens or n >= max_len:
                continue  # that token ends it by length, whatever it is: no row after it
            rows.append(i)
            need += len(s.block_table) * bs < n
        if need > bm.num_free_blocks:
            return None  # the ordinary path preempts
        for i in rows:
            bm.reserve_next_slot(seqs[i])
        return rows

    def finish_inflight(self, seqs: list[Sequence], token_ids: list[int],
                        ahead: set[int]) -> list[tuple[Sequence, int]]:
        """`postprocess` for a decode step that ran ahead of the host: rows whose sequence ended (or was
        aborted) while the step was in flight are dropped with their token. `ahead`: the rows that are in the
        step enqueued after this one; a block that their appended token fills is hashed now (append_slot would
        have at scheduling, had the token been known)."""
        running = SequenceStatus.RUNNING
        live = [i for i, s in enumerate(seqs) if s.status is running]
        rows = [seqs[i] for i in live]
        toks = [token_ids[i] for i in live]
        n = len(rows)
        self.postprocess(Batch(rows, [1] * n, n, [True] * n), toks)
        bm = self.block_manager
        for i, s in zip(live, rows):
            if i in ahead and s.status is running:
                bm.hash_filled_block(s)
        return list(zip(rows, toks))

    def abort(self, seq: Sequence) -> bool:
        if seq.status == SequenceStatus.FINISHED:
            return False
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
            self.block_manager.deallocate(seq)
        else:
            return False
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = "abort"
        return True
