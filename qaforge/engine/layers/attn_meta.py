"""Batch metadata that attention needs: where each token's KV goes, and each sequence's block table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class AttnMeta:
    is_prefill: bool
    slot_mapping: torch.Tensor      # [T] int64: flat KV slot of each input token
    context_lens: torch.Tensor      # [B] int32: tokens of context per sequence, the new ones included
    block_tables: torch.Tensor      # [B, max_blocks] int32
    cu_seqlens_q: torch.Tensor      # [B+1] int32: offsets of each sequence's new tokens in the batch
    max_q_len: int                  # host ints (the torch path and the prefill grid need them)
    max_ctx_len: int
    # a mixed step on the Triton path: (decode rows' meta, prompt rows' meta), the decode rows first in the
    # batch; the prompt part's cu_seqlens_q are offsets into the whole batch. The torch path ignores it.
    parts: Optional[tuple["AttnMeta", "AttnMeta"]] = None
