"""Batched sampling on the logits' device: greedy, temperature, top-k, top-p, per-request seeds.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which needs no host sync. Seeded
requests draw their noise from their own torch.Generator, over the whole vocabulary in token-id order,
so a seeded request gives the same tokens whatever else is in the batch.
"""
from __future__ import annotations

import torch

from .sequence import Sequence


class Sampler:
    CHUNK = 256  # rows sampled at once

    def __init__(self, device: torch.device):
        self.device = device
        self._gen = torch.Generator(device=device)
        self._gen.manual_seed(torch.initial_seed() % (2**63))

    def seed(self, seed: int) -> None:
        self._gen.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """logits [B, V] (rows beyond len(seqs) ignored) -> token ids [len(seqs)] (device tensor)."""
        B = len(seqs)
        logits = logits[:B]
        params = [s.params for s in seqs]
        if all(p.greedy for p in params):
            return logits.argmax(dim=-1)
        if B > self.CHUNK:  # bound the [rows, vocab] fp32 temporaries
            return torch.cat([self(logits[i:i + self.CHUNK], seqs[i:i + self.CHUNK]) for i in range(0, B, self.CHUNK)])
        dev = logits.device
        V = logits.shape[-1]
        logits = logits.float()
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
                ks = torch.tensor([k if 0 < k < V else V for k in top_ks], dtype=torch.int64).to(dev)
                mask |= torch.arange(V, device=dev)[None, :] >= ks[:, None]
            if need_p:
                ps = torch.tensor(top_ps, dtype=torch.float32).to(dev)
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
        is_greedy = torch.tensor([p.greedy for p in params], dtype=torch.bool).to(dev)
        return torch.where(is_greedy, greedy_ids, sampled)
