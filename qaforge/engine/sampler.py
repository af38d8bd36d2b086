"""Batched sampling on the logits' device: repetition penalty, greedy, temperature, top-k, top-p, seeds.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which needs no host sync. Seeded
requests draw their noise from their own torch.Generator, over the whole vocabulary in token-id order,
so a seeded request gives the same tokens whatever else is in the batch.

Repetition penalty (vLLM's and HF's rule) needs, per sequence, the set of token ids seen so far. It lives on
the device as one bool row per sequence slot (the block manager's row), allocated on the first request
that asks for a penalty: a row is filled from the host once when its sequence is (re)prefilled, then each
sampled id is set on the device, so a decode step sends only row numbers and penalties, and never waits.
"""
from __future__ import annotations

import torch

from .sequence import Sequence


class Sampler:
    CHUNK = 256  # rows sampled at once

    def __init__(self, device: torch.device, num_rows: int = 256):
        self.device = device
        self._gen = torch.Generator(device=device)
        self._gen.manual_seed(torch.initial_seed() % (2**63))
        self.num_rows = num_rows
        self._seen: torch.Tensor | None = None                       # [num_rows, vocab] bool
        self._seen_by: list[tuple[int, int] | None] = [None] * num_rows  # (seq_id, tokens in the row) per row
        self._masks = None                                           # structured.GrammarMasks, on first use

    def seed(self, seed: int) -> None:
        self._gen.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """logits [B, V] (rows beyond len(seqs) ignored) -> token ids [len(seqs)] (device tensor)."""
        B = len(seqs)
        logits = logits[:B]
        params = [s.params for s in seqs]
        penalised = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
        constrained = [i for i, p in enumerate(params) if p.grammar is not None]
        if not penalised and not constrained and all(p.greedy for p in params):
            return logits.argmax(dim=-1)
        if B > self.CHUNK:  # bound the [rows, vocab] fp32 temporaries
            return torch.cat([self(logits[i:i + self.CHUNK], seqs[i:i + self.CHUNK]) for i in range(0, B, self.CHUNK)])
        logits = logits.float()
        if penalised:
            rows = self._penalise(logits, seqs, penalised)
        if constrained:  # structured output: what the grammar forbids goes to -inf (engine/structured.py)
            if self._masks is None:
                from .structured import GrammarMasks
                self._masks = GrammarMasks()
            self._masks.apply(logits, seqs, constrained)
        tokens = logits.argmax(dim=-1) if all(p.greedy for p in params) else self._sample(logits, seqs)
        if penalised:
            self._record(tokens, seqs, penalised, rows)
        return tokens

    # ------------------------------------------------------------------ repetition penalty
    def _penalise(self, logits: torch.Tensor, seqs: list[Sequence], idx: list[int]) -> torch.Tensor:
        """Divide (logit > 0) or multiply (logit <= 0) by the penalty, in place, the logits of every id the
        sequence has seen (prompt and output). Returns the device tensor of the rows' slot numbers."""
        dev, V = logits.device, logits.shape[-1]
        if self._seen is None or self._seen.shape[1] != V:
            self._seen = torch.zeros((self.num_rows, V), dtype=torch.bool, device=dev)
            self._seen_by = [None] * self.num_rows
        stale = [seqs[i] for i in idx if self._seen_by[seqs[i].row] != (seqs[i].seq_id, len(seqs[i]))]
        if stale:  # new, or recomputed after preemption, or its row was used by another sequence since
            flat = [s.row * V + t for s in stale for t in s.token_ids]
            srows = torch.tensor([s.row for s in stale], dtype=torch.int64).to(dev, non_blocking=True)
            self._seen[srows] = False
            self._seen.view(-1)[torch.tensor(flat, dtype=torch.int64).to(dev, non_blocking=True)] = True
        meta = torch.tensor([[i, seqs[i].row] for i in idx], dtype=torch.int64).to(dev, non_blocking=True)
        pen = torch.tensor([seqs[i].params.repetition_penalty for i in idx], dtype=torch.float32)
        pen = pen.to(dev, non_blocking=True)[:, None]
        sub = logits[meta[:, 0]]
        hit = self._seen[meta[:, 1]]
        sub = torch.where(hit, torch.where(sub > 0, sub / pen, sub * pen), sub)
        logits.index_copy_(0, meta[:, 0], sub)
        return meta

    def _record(self, tokens: torch.Tensor, seqs: list[Sequence], idx: list[int], meta: torch.Tensor) -> None:
        # the scheduler appends every sampled id, so after this the row holds len(seq) + 1 ids
        self._seen[meta[:, 1], tokens[meta[:, 0]]] = True
        for i in idx:
            self._seen_by[seqs[i].row] = (seqs[i].seq_id, len(seqs[i]) + 1)

    # ------------------------------------------------------------------ sampling
    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        params = [s.params for s in seqs]
        dev = logits.device
        V = logits.shape[-1]
        greedy_ids = logits.argmax(dim=-1)
        temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], dtype=torch.float32)
        logits = logits / temps.to(dev, non_blocking=True)[:, None]
        top_ks = [p.top_k for p in params]
        top_ps = [p.top_p for p in params]
        need_k = any(0 < k < V for k in top_ks)
        need_p = any(p < 1.0 for p in top_ps)
        if need_k or need_p:
            sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
            mask = torch.zeros_like(sorted_logits, dtype=torch.bool)
            if need_k:
                ks = torch.tensor([k if 0 < k < V else V for k in top_ks], dtype=torch.int64).to(dev, non_blocking=True)
                mask |= torch.arange(V, device=dev)[None, :] >= ks[:, None]
            if need_p:
                ps = torch.tensor(top_ps, dtype=torch.float32).to(dev, non_blocking=True)
                probs_sorted = sorted_logits.masked_fill(mask, float("-inf")).softmax(dim=-1)
                cum = probs_sorted.cumsum(dim=-1)
                mask |= (cum - probs_sorted) > ps[:, None]   # keeps at least the top token
            sorted_logits = sorted_logits.masked_fill(mask, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter_(1, sorted_idx, sorted_logits)
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self._gen)
        for i, seq in enumerate(seqs):
            if seq.params.seed is not None and not seq.params.greedy:
                if seq.generator is None:
                    seq.generator = torch.Generator(device=dev)
                    seq.generator.manual_seed(int(seq.params.seed))
                noise[i].exponential_(generator=seq.generator)
        sampled = (probs / noise).argmax(dim=-1)
        is_greedy = torch.tensor([p.greedy for p in params], dtype=torch.bool).to(dev, non_blocking=True)
        return torch.where(is_greedy, greedy_ids, sampled)
