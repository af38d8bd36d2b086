"""Op tables the model calls through: `TorchOps` (reference, any device) and `TritonOps` (CUDA)."""
from __future__ import annotations

import torch

from . import torch_ops
from .fp8 import linear


class TorchOps:
    linear = staticmethod(linear)  # F.linear, or the fp8 GEMM once layers/fp8.quantize_model replaced a weight
    rms_norm = staticmethod(torch_ops.rms_norm)
    add_rms_norm = staticmethod(torch_ops.add_rms_norm)
    silu_mul = staticmethod(torch_ops.silu_mul)
    qk_norm_rope_store = staticmethod(torch_ops.qk_norm_rope_store)
    paged_attention = staticmethod(torch_ops.paged_attention)


def triton_ops(gemv_max_rows: int = 0):
    """gemv_max_rows: steps with at most this many rows run the layer linears through layers/gemv.py."""
    from . import triton_ops as t

    few_rows_linear = linear
    if gemv_max_rows:
        from .gemv import gemv

        def few_rows_linear(x, w, bias=None):
            if x.dim() == 2 and 0 < x.shape[0] <= gemv_max_rows and isinstance(w, torch.Tensor):
                return gemv(x, w, bias)
            return linear(x, w, bias)  # more rows, or an fp8 weight

    class TritonOps:
        linear = staticmethod(few_rows_linear)
        rms_norm = staticmethod(lambda x, w, eps: t.rms_norm(x, w, eps))
        add_rms_norm = staticmethod(lambda x, r, w, eps: t.rms_norm(x, w, eps, residual=r))
        silu_mul = staticmethod(t.silu_mul)
        qk_norm_rope_store = staticmethod(t.qk_norm_rope_store)
        paged_attention = staticmethod(t.paged_attention)

    return TritonOps
