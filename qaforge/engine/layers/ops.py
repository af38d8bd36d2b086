"""Op tables the model calls through: `TorchOps` (reference, any device) and `TritonOps` (CUDA)."""
from __future__ import annotations

from . import torch_ops


class TorchOps:
    rms_norm = staticmethod(torch_ops.rms_norm)
    add_rms_norm = staticmethod(torch_ops.add_rms_norm)
    silu_mul = staticmethod(torch_ops.silu_mul)
    qk_norm_rope_store = staticmethod(torch_ops.qk_norm_rope_store)
    paged_attention = staticmethod(torch_ops.paged_attention)


def triton_ops():
    from . import triton_ops as t

    class TritonOps:
        rms_norm = staticmethod(lambda x, w, eps: t.rms_norm(x, w, eps))
        add_rms_norm = staticmethod(lambda x, r, w, eps: t.rms_norm(x, w, eps, residual=r))
        silu_mul = staticmethod(t.silu_mul)
        qk_norm_rope_store = staticmethod(t.qk_norm_rope_store)
        paged_attention = staticmethod(t.paged_attention)

    return TritonOps
