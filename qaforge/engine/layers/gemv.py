"""A GEMV for the layer linears of few-row decode steps (one stream, a handful of rows).

At batch 1 on the H200 the decode graph's four layer GEMMs per layer (qkv, o, gate_up, down; 112 cuBLAS
calls for Qwen3-0.6B) read 881 MB of weights in 777 us, about 1.1 TB/s of the card's 4.8: each call is a
few MB, too small for cuBLAS's tiles to fill the SMs (the lm_head, 311 MB in one call, reaches 4.1 TB/s;
docs/benchmarks.md, 2026-12-03 kernel profile). Here every program streams a few weight rows over the whole
K and keeps all M <= 4 rows of x against each weight tile it loads, so the weights are read once and the
grid has a few programs per SM. Accumulation is fp32, like cuBLAS's.

`EngineConfig.gemv_max_rows` turns it on (0 = off, the default until it is measured on a GPU).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..config import GEMV_MAX_ROWS as MAX_ROWS

BLOCK_K = 512


@triton.jit
def _gemv_kernel(X, W, B, Y, N, K, stride_x, stride_w, stride_y, M: tl.constexpr, BLOCK_M: tl.constexpr,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    on = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = on < N
    om = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ok = k0 + tl.arange(0, BLOCK_K)
        km = ok < K
        w = tl.load(W + on[:, None].to(tl.int64) * stride_w + ok[None, :], mask=nm[:, None] & km[None, :],
                    other=0.0).to(tl.float32)
        for m in tl.static_range(M):  # the tile is loaded once for all rows of x
            x = tl.load(X + m * stride_x + ok, mask=km, other=0.0).to(tl.float32)
            part = tl.sum(w * x[None, :], axis=1)
            acc += tl.where(om[:, None] == m, part[None, :], 0.0)
    if HAS_BIAS:
        acc += tl.load(B + on, mask=nm, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + om[:, None] * stride_y + on[None, :], acc.to(Y.dtype.element_ty),
             mask=(om[:, None] < M) & nm[None, :])


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter (tests): any grid works
    return torch.cuda.get_device_properties(device).multi_processor_count


def block_n(n: int, sms: int) -> int:
    """Weight rows per program: the largest power of two in [4, 32] that still gives ~2 programs per SM."""
    b = 32
    while b > 4 and -(-n // b) < 2 * sms:
        b //= 2
    return b


def gemv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (M <= MAX_ROWS) @ w[N, K].T (+ bias) in x's dtype."""
    M, K = x.shape
    N = w.shape[0]
    if not 1 <= M <= MAX_ROWS or w.shape[1] != K:
        raise ValueError(f"gemv: x {tuple(x.shape)} and w {tuple(w.shape)} (1 <= rows <= {MAX_ROWS})")
    if x.stride(1) != 1:
        x = x.contiguous()
    w = w if w.stride(1) == 1 else w.contiguous()
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    bn = block_n(N, _sm_count(x.device))
    _gemv_kernel[(triton.cdiv(N, bn),)](x, w, bias if bias is not None else w, y, N, K, x.stride(0), w.stride(0),
                                        y.stride(0), M=M, BLOCK_M=triton.next_power_of_2(M),
                                        HAS_BIAS=bias is not None, BLOCK_N=bn, BLOCK_K=BLOCK_K, num_warps=4)
    return y
