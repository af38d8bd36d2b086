"""Triton kernel for fp8.py: dynamic per-token fp8 quantisation of activations in one pass (CUDA only).
fp8.py imports this lazily and passes its constants in, so imports point one way."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _quant_rows_kernel(X, XQ, S, stride_x, stride_q, K, min_amax, fmax, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < K
    x = tl.load(X + row * stride_x + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(x), axis=0), min_amax) / fmax
    q = tl.minimum(tl.maximum(x / s, -fmax), fmax)
    tl.store(XQ + row * stride_q + offs, q.to(XQ.dtype.element_ty), mask=m)
    tl.store(S + row, s)


def quantize_rows_triton(x: torch.Tensor, fp8_dtype: torch.dtype, fmax: float,
                         min_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as fp8.quantize_rows_torch: (fp8 [M, K], fp32 scale [M, 1])."""
    if x.stride(1) != 1:
        x = x.contiguous()
    M, K = x.shape
    xq = torch.empty((M, K), dtype=fp8_dtype, device=x.device)
    s = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M:
        BLOCK = triton.next_power_of_2(K)
        _quant_rows_kernel[(M,)](x, xq, s, x.stride(0), xq.stride(0), K, min_amax, fmax, BLOCK=BLOCK,
                                 num_warps=4 if BLOCK <= 2048 else 8)
    return xq, s
