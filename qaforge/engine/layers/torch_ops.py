"""Reference ops in plain torch (CPU and any dtype). Numerics follow transformers' Qwen3 and Qwen2 exactly.

Vectorized over the batch: no Python loop over sequences or tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attn_meta import AttnMeta
from .fp8 import from_kv, to_kv


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.float()
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float):
    residual = residual + x
    return rms_norm(residual, w, eps), residual


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def qk_norm_rope_store(qkv, positions, slot_mapping, k_cache, v_cache, q_w, k_w, cos, sin,
                       num_heads: int, num_kv_heads: int, head_dim: int, eps: float) -> torch.Tensor:
    """Split qkv, RMS-normalize q and k per head (skipped when q_w/k_w are None: Qwen2), apply RoPE, write
    k and v to the paged cache; return q [T,H,D]."""
    T = qkv.shape[0]
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q = q.reshape(T, num_heads, head_dim)
    k = k.reshape(T, num_kv_heads, head_dim)
    if q_w is not None:
        q, k = rms_norm(q, q_w, eps), rms_norm(k, k_w, eps)
    c = cos[positions].unsqueeze(1).to(q.dtype)
    s = sin[positions].unsqueeze(1).to(q.dtype)
    q = (q * c) + (_rotate_half(q) * s)
    k = (k * c) + (_rotate_half(k) * s)
    k_cache.view(-1, num_kv_heads, head_dim)[slot_mapping] = to_kv(k, k_cache.dtype)
    v_cache.view(-1, num_kv_heads, head_dim)[slot_mapping] = to_kv(v.reshape(T, num_kv_heads, head_dim), v_cache.dtype)
    return q


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMeta,
                    scale: float) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its whole context in the paged cache.

    q: [T, H, D]; k_cache/v_cache: [num_blocks, block_size, KVH, D]. Covers prefill (with prefix-cache
    hits: context longer than the new tokens) and decode (one new token) with one padded batch.
    """
    T, H, D = q.shape
    block_size, kvh = k_cache.shape[1], k_cache.shape[2]
    dev = q.device
    ctx = meta.context_lens.long()
    cu = meta.cu_seqlens_q.long()
    qlen = cu[1:] - cu[:-1]
    max_k, max_q = meta.max_ctx_len, meta.max_q_len
    pos = torch.arange(max_k, device=dev)
    bt = meta.block_tables.long()[:, pos // block_size]                  # [B, max_k]
    slots = bt * block_size + pos % block_size
    # an fp8 cache is upcast to the compute dtype; any other cache dtype is the compute dtype
    k = from_kv(k_cache.view(-1, kvh, D)[slots], q.dtype).transpose(1, 2)  # [B, KVH, max_k, D]
    v = from_kv(v_cache.view(-1, kvh, D)[slots], q.dtype).transpose(1, 2)
    if H != kvh:
        k = k.repeat_interleave(H // kvh, dim=1)
        v = v.repeat_interleave(H // kvh, dim=1)
    qi = torch.arange(max_q, device=dev)
    qidx = (cu[:-1, None] + qi[None, :]).clamp(max=T - 1)                 # [B, max_q]
    qvalid = qi[None, :] < qlen[:, None]
    qp = q[qidx].transpose(1, 2).to(k.dtype)                              # [B, H, max_q, D]
    allowed = (pos[None, None, :] <= (ctx - qlen)[:, None, None] + qi[None, :, None]) \
        & (pos[None, None, :] < ctx[:, None, None])                       # [B, max_q, max_k]
    allowed = allowed | ~qvalid[:, :, None]                               # padded query rows: anything, discarded
    out = F.scaled_dot_product_attention(qp, k, v, attn_mask=allowed[:, None], scale=scale)
    return out.transpose(1, 2)[qvalid].to(q.dtype)                       # [T, H, D]
