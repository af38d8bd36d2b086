"""Triton kernels for the CUDA path (bf16/fp16): fused RMSNorm(+residual), SiLU*mul, fused q/k-norm (skipped
for Qwen2) + RoPE + KV-cache store, paged decode attention (GQA-aware) and varlen prefill attention over the paged
cache (prefix-cache hits included). Imported only when CUDA and Triton are present. The KV cache may be fp8
(float8_e4m3fn, scale 1.0): the store saturates and casts, the attention kernels upcast K/V to q's dtype."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attn_meta import AttnMeta


# ---------------------------------------------------------------- RMSNorm (+ residual add, in place)
@triton.jit
def _rmsnorm_kernel(X, R, W, Y, stride_x, stride_r, stride_y, N, eps,
                    HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(R + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)
        tl.store(R + row * stride_r + offs, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    y = (xf * tl.rsqrt(var + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + offs, (y * w).to(Y.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    N = x.shape[-1]
    x2 = x.reshape(-1, N)
    y = torch.empty_like(x2)
    rows = x2.shape[0]
    if rows:
        BLOCK = triton.next_power_of_2(N)
        r = residual.reshape(-1, N) if residual is not None else x2
        _rmsnorm_kernel[(rows,)](x2, r, w, y, x2.stride(0), r.stride(0), y.stride(0), N, eps,
                                 HAS_RES=residual is not None, BLOCK=BLOCK, num_warps=4 if BLOCK <= 1024 else 8)
    y = y.view(x.shape)
    return y if residual is None else (y, residual)


# ---------------------------------------------------------------- SiLU(gate) * up
@triton.jit
def _silu_mul_kernel(GU, Y, stride_gu, stride_y, I, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    g = tl.load(GU + row * stride_gu + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * stride_gu + I + offs, mask=mask, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(Y + row * stride_y + offs, y.to(Y.dtype.element_ty), mask=mask)


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    T, I2 = gu.shape
    I = I2 // 2
    y = torch.empty((T, I), dtype=gu.dtype, device=gu.device)
    if T:
        BLOCK = 1024
        _silu_mul_kernel[(T, triton.cdiv(I, BLOCK))](gu, y, gu.stride(0), y.stride(0), I, BLOCK=BLOCK, num_warps=4)
    return y


# ---------------------------------------------------------------- q/k RMSNorm + RoPE + KV store
@triton.jit
def _norm_rope_heads(SRC, DST, W, mask, c, s, eps, D: tl.constexpr, HALF: tl.constexpr, HAS_NORM: tl.constexpr,
                     SAT: tl.constexpr):
    """Pointer blocks [heads, HALF] to each head's first half at SRC and DST: RMSNorm per head (HAS_NORM,
    weight W), rotate-half RoPE, stored in DST's dtype (SAT: clamped to the fp8 range first). All in fp32,
    rounded once."""
    x1 = tl.load(SRC, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(SRC + HALF, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        oh = tl.arange(0, HALF)
        r = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / D + eps)[:, None]
        x1 = x1 * r * tl.load(W + oh)[None, :].to(tl.float32)
        x2 = x2 * r * tl.load(W + HALF + oh)[None, :].to(tl.float32)
    y1 = x1 * c[None, :] - x2 * s[None, :]
    y2 = x2 * c[None, :] + x1 * s[None, :]
    if SAT:
        y1 = _sat_fp8(y1)
        y2 = _sat_fp8(y2)
    tl.store(DST, y1.to(DST.dtype.element_ty), mask=mask)
    tl.store(DST + HALF, y2.to(DST.dtype.element_ty), mask=mask)


@triton.jit
def _sat_fp8(x):
    """Clamp to e4m3's +-448 (KV scale 1.0, see fp8.py): a cast of a larger value is not guaranteed to saturate."""
    return tl.minimum(tl.maximum(x, -448.0), 448.0)


@triton.jit
def _qk_norm_rope_store_kernel(QKV, QOUT, KC, VC, POS, SLOT, QW, KW, COS, SIN,
                               stride_qkv, stride_cs, eps,
                               H: tl.constexpr, KVH: tl.constexpr, HP2: tl.constexpr, KVHP2: tl.constexpr,
                               D: tl.constexpr, HALF: tl.constexpr, HAS_NORM: tl.constexpr, KV_FP8: tl.constexpr):
    t = tl.program_id(0)
    pos = tl.load(POS + t).to(tl.int64)
    slot = tl.load(SLOT + t).to(tl.int64)
    oh = tl.arange(0, HALF)
    c = tl.load(COS + pos * stride_cs + oh)
    s = tl.load(SIN + pos * stride_cs + oh)
    row = QKV + t * stride_qkv
    hh = tl.arange(0, HP2)
    _norm_rope_heads(row + hh[:, None] * D + oh[None, :], QOUT + t * (H * D) + hh[:, None] * D + oh[None, :],
                     QW, (hh < H)[:, None], c, s, eps, D, HALF, HAS_NORM, False)
    kh = tl.arange(0, KVHP2)
    # slot -1: a padded CUDA-graph row, nothing stored (broadcast to a block: Triton's interpreter, which the CPU
    # tests run this kernel in, rejects a scalar & block mask)
    km = (kh < KVH)[:, None] & (slot + kh[:, None] * 0 >= 0)
    _norm_rope_heads(row + H * D + kh[:, None] * D + oh[None, :], KC + slot * (KVH * D) + kh[:, None] * D + oh[None, :],
                     KW, km, c, s, eps, D, HALF, HAS_NORM, KV_FP8)
    # v
    od = tl.arange(0, D)
    vb = row + (H + KVH) * D + kh[:, None] * D + od[None, :]
    v = tl.load(vb, mask=km, other=0.0)
    if KV_FP8:
        v = _sat_fp8(v.to(tl.float32))
    tl.store(VC + slot * (KVH * D) + kh[:, None] * D + od[None, :], v.to(VC.dtype.element_ty), mask=km)


def qk_norm_rope_store(qkv, positions, slot_mapping, k_cache, v_cache, q_w, k_w, cos, sin,
                       num_heads: int, num_kv_heads: int, head_dim: int, eps: float) -> torch.Tensor:
    """q_w/k_w None (Qwen2): RoPE and the KV store only, no per-head RMSNorm."""
    T = qkv.shape[0]
    q = torch.empty((T, num_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    has_norm = q_w is not None
    if T:
        # without a norm the weight pointers are never read: any tensor stands in for them
        _qk_norm_rope_store_kernel[(T,)](
            qkv, q, k_cache, v_cache, positions, slot_mapping, q_w if has_norm else qkv, k_w if has_norm else qkv,
            cos, sin, qkv.stride(0), cos.stride(0), eps,
            H=num_heads, KVH=num_kv_heads, HP2=triton.next_power_of_2(num_heads),
            KVHP2=triton.next_power_of_2(num_kv_heads), D=head_dim, HALF=head_dim // 2, HAS_NORM=has_norm,
            KV_FP8=k_cache.dtype == torch.float8_e4m3fn, num_warps=4)
    return q


# ---------------------------------------------------------------- paged decode attention
@triton.jit
def _decode_kernel(Q, KC, VC, BT, CTX, O, OP, ML, scale, stride_bt,
                   KVH: tl.constexpr, GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                   PAGE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr):
    """One program per (sequence, kv head[, context split]); all GROUP query heads of the kv head together.
    With NUM_SPLITS > 1 (small batches: flash-decoding), each split writes a normalized partial output and its
    (max, sum) to OP / ML, and _decode_reduce_kernel combines them."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    ctx = tl.load(CTX + b)
    if NUM_SPLITS == 1:
        lo = 0
        hi = ctx
    else:
        sp = tl.program_id(2)
        chunk = tl.cdiv(tl.cdiv(ctx, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = sp * chunk
        hi = tl.minimum(ctx, lo + chunk)
    og = tl.arange(0, GP)
    od = tl.arange(0, D)
    gm = og < GROUP
    q = tl.load(Q + b * (KVH * GROUP * D) + (kvh * GROUP + og)[:, None] * D + od[None, :], mask=gm[:, None], other=0.0)
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    qk_scale = scale * 1.4426950408889634
    for start in range(lo, hi, BLOCK_N):
        on = start + tl.arange(0, BLOCK_N)
        nm = on < hi
        page = tl.load(BT + b * stride_bt + on // PAGE, mask=nm, other=0).to(tl.int64)
        slot = page * PAGE + on % PAGE
        kv_off = slot[:, None] * (KVH * D) + kvh * D + od[None, :]
        k = tl.load(KC + kv_off, mask=nm[:, None], other=0.0).to(q.dtype)  # fp8 cache: upcast
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(nm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(VC + kv_off, mask=nm[:, None], other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if NUM_SPLITS == 1:
        tl.store(O + b * (KVH * GROUP * D) + (kvh * GROUP + og)[:, None] * D + od[None, :],
                 out.to(O.dtype.element_ty), mask=gm[:, None])
    else:
        row = (b * (KVH * GROUP) + kvh * GROUP + og) * NUM_SPLITS + sp      # [B, H, S] flattened
        tl.store(OP + row[:, None] * D + od[None, :], out, mask=gm[:, None])
        tl.store(ML + row * 2, m_i, mask=gm)
        tl.store(ML + row * 2 + 1, l_i, mask=gm)


@triton.jit
def _decode_reduce_kernel(OP, ML, O, H: tl.constexpr, D: tl.constexpr, NUM_SPLITS: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    os_ = tl.arange(0, NUM_SPLITS)
    od = tl.arange(0, D)
    row = (b * H + h) * NUM_SPLITS + os_
    m = tl.load(ML + row * 2)
    l = tl.load(ML + row * 2 + 1)
    mx = tl.max(m, axis=0)
    w = tl.where(l > 0.0, tl.exp2(m - mx) * l, 0.0)
    tot = tl.sum(w, axis=0)
    part = tl.load(OP + row[:, None] * D + od[None, :])
    out = tl.sum(part * w[:, None], axis=0) / tl.where(tot > 0.0, tot, 1.0)
    tl.store(O + (b * H + h) * D + od, out.to(O.dtype.element_ty))


def decode_splits(batch: int, num_kv_heads: int) -> int:
    """Context splits for a decode batch: enough programs for ~2 per SM of an H100/H200, at most 16."""
    target = 264
    s = -(-target // max(1, batch * num_kv_heads))
    return 1 if s <= 1 else min(16, triton.next_power_of_2(s))


# ---------------------------------------------------------------- varlen prefill attention (paged KV)
@triton.jit
def _prefill_kernel(Q, KC, VC, BT, CTX, CU, O, scale, stride_bt,
                    KVH: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    mb = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(CU + b)
    q_len = tl.load(CU + b + 1) - q_start
    if mb * BLOCK_M >= q_len:
        return
    ctx = tl.load(CTX + b)
    prefix = ctx - q_len
    kvh = h // GROUP
    om = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    od = tl.arange(0, D)
    mm = om < q_len
    q = tl.load(Q + (q_start + om)[:, None].to(tl.int64) * (KVH * GROUP * D) + h * D + od[None, :], mask=mm[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    qk_scale = scale * 1.4426950408889634
    end = tl.minimum(ctx, prefix + (mb + 1) * BLOCK_M)
    qpos = prefix + om
    for start in range(0, end, BLOCK_N):
        on = start + tl.arange(0, BLOCK_N)
        nm = on < end
        page = tl.load(BT + b * stride_bt + on // PAGE, mask=nm, other=0).to(tl.int64)
        slot = page * PAGE + on % PAGE
        kv_off = slot[:, None] * (KVH * D) + kvh * D + od[None, :]
        k = tl.load(KC + kv_off, mask=nm[:, None], other=0.0).to(q.dtype)  # fp8 cache: upcast
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where((qpos[:, None] >= on[None, :]) & nm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(VC + kv_off, mask=nm[:, None], other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(O + (q_start + om)[:, None].to(tl.int64) * (KVH * GROUP * D) + h * D + od[None, :], out.to(O.dtype.element_ty),
             mask=mm[:, None])


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMeta,
                    scale: float) -> torch.Tensor:
    o = torch.empty_like(q)
    if q.shape[0] == 0:
        return o
    if meta.parts is not None:  # a mixed step: decode rows (the first ones) by the decode kernel, the rest varlen
        dm, pm = meta.parts
        nd = dm.context_lens.shape[0]
        _decode_into(q[:nd], k_cache, v_cache, dm, scale, o[:nd])
        _prefill_into(q, k_cache, v_cache, pm, scale, o)
    elif meta.is_prefill:
        _prefill_into(q, k_cache, v_cache, meta, scale, o)
    else:
        _decode_into(q, k_cache, v_cache, meta, scale, o)
    return o


def _prefill_into(q, k_cache, v_cache, meta: AttnMeta, scale: float, o: torch.Tensor) -> None:
    """Rows of meta (cu_seqlens_q: offsets into q and o) attend over their paged context."""
    H, D = q.shape[1], q.shape[2]
    page, kvh = k_cache.shape[1], k_cache.shape[2]
    bt = meta.block_tables
    B = meta.context_lens.shape[0]
    BLOCK_M, BLOCK_N = 64, 64
    grid = (triton.cdiv(meta.max_q_len, BLOCK_M), B, H)
    _prefill_kernel[grid](q, k_cache, v_cache, bt, meta.context_lens, meta.cu_seqlens_q, o, scale, bt.stride(0),
                          KVH=kvh, GROUP=H // kvh, D=D, PAGE=page, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                          num_warps=4, num_stages=2)


def _decode_into(q, k_cache, v_cache, meta: AttnMeta, scale: float, o: torch.Tensor) -> None:
    """One query token per row of q (and o)."""
    H, D = q.shape[1], q.shape[2]
    page, kvh = k_cache.shape[1], k_cache.shape[2]
    group = H // kvh
    bt = meta.block_tables
    B = meta.context_lens.shape[0]
    S = decode_splits(B, kvh)
    GP = max(16, triton.next_power_of_2(group))
    if S == 1:
        _decode_kernel[(B, kvh)](q, k_cache, v_cache, bt, meta.context_lens, o, o, o, scale, bt.stride(0),
                                 KVH=kvh, GROUP=group, GP=GP, D=D, PAGE=page, BLOCK_N=64, NUM_SPLITS=1,
                                 num_warps=4, num_stages=3)
    else:
        op = torch.empty((B, H, S, D), dtype=torch.float32, device=q.device)
        ml = torch.empty((B, H, S, 2), dtype=torch.float32, device=q.device)
        _decode_kernel[(B, kvh, S)](q, k_cache, v_cache, bt, meta.context_lens, o, op, ml, scale, bt.stride(0),
                                    KVH=kvh, GROUP=group, GP=GP, D=D, PAGE=page, BLOCK_N=64, NUM_SPLITS=S,
                                    num_warps=4, num_stages=3)
        _decode_reduce_kernel[(B, H)](op, ml, o, H=H, D=D, NUM_SPLITS=S, num_warps=4)
