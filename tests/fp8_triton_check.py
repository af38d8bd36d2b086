"""Run by tests/test_engine_fp8.py with TRITON_INTERPRET=1 (Triton's CPU interpreter, set before triton is
imported): the engine's Triton kernels with an fp8 KV cache against the torch ops. Prints 'ALL OK' last.

The interpreter has no bf16 dot, so q and qkv are fp32; the fp8 stores, loads and upcasts run as written.
"""
from __future__ import annotations

import os
import sys

import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from qaforge.engine.layers import fp8, torch_ops  # noqa: E402
from qaforge.engine.layers import triton_ops as T  # noqa: E402
from qaforge.engine.layers.attn_meta import AttnMeta  # noqa: E402
from qaforge.engine.layers.fp8_triton import quantize_rows_triton  # noqa: E402

FAILED: list[str] = []


def check(name: str, ok: bool, detail) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def one_ulp(got, want) -> bool:
    """Interpreter-cast fp8 values `got` and torch-cast `want` differ by at most one e4m3 step (inputs that
    differ in the last fp32 bits may round to either side of a midpoint), except for one interpreter bug:
    when rounding up carries out of the mantissa it drops the carry (1.97 -> 1.0 instead of 2.0), so a `got`
    equal to half of a power-of-two `want` is that bug, not the kernel's (GPUs and torch round correctly)."""
    a, b = got.float(), want.float()
    close = (a - b).abs() <= 2.0 ** -3 * torch.maximum(a.abs(), b.abs()) + 2.0 ** -9 + 1e-7
    m, _ = torch.frexp(b)
    carry_bug = (m.abs() == 0.5) & (a == b / 2)
    return bool((close | carry_bug).all())


def rope_store(g):
    T_, H, KVH, D, NB, BS = 37, 4, 2, 64, 8, 16
    qkv = torch.randn(T_, (H + 2 * KVH) * D, generator=g) * 3
    qkv[2, (H + KVH) * D + 1] = 900.0   # a V beyond e4m3's range: saturates to 448
    pos = torch.randint(0, 512, (T_,), generator=g)
    slots = torch.randperm(NB * BS, generator=g)[:T_]
    slots[5] = -1                        # a padded CUDA-graph row: nothing stored
    inv = 1.0 / (1e6 ** (torch.arange(0, D, 2).float() / D))
    emb = torch.cat([torch.arange(512).float()[:, None] * inv] * 2, dim=-1)
    cos, sin = emb.cos(), emb.sin()
    keep = slots >= 0
    for with_norm in (True, False):
        qw = 1 + 0.2 * torch.randn(D, generator=g) if with_norm else None
        kw = 1 + 0.2 * torch.randn(D, generator=g) if with_norm else None
        ref = [torch.zeros(NB, BS, KVH, D, dtype=fp8.FP8) for _ in range(2)]
        got = [torch.zeros(NB, BS, KVH, D, dtype=fp8.FP8) for _ in range(2)]
        q_ref = torch_ops.qk_norm_rope_store(qkv[keep], pos[keep], slots[keep], *ref, qw, kw, cos, sin,
                                             H, KVH, D, 1e-6)
        q = T.qk_norm_rope_store(qkv, pos, slots, *got, qw, kw, cos, sin, H, KVH, D, 1e-6)
        same = [float((a.float() == b.float()).float().mean()) for a, b in zip(got, ref)]
        check(f"rope_store norm={with_norm} q", rel(q[keep], q_ref) < 1e-5, rel(q[keep], q_ref))
        # the interpreter's fp32 -> e4m3 cast breaks some ties unlike torch's (the GPU's cvt.rn matches torch)
        check(f"rope_store norm={with_norm} k/v within one e4m3 step", one_ulp(got[0], ref[0])
              and one_ulp(got[1], ref[1]) and min(same) > 0.98, f"equal fraction {same}")
        check(f"rope_store norm={with_norm} V saturated", float(got[1].view(-1, KVH, D)[slots[2], 0, 1]) == 448.0,
              float(got[1].view(-1, KVH, D)[slots[2], 0, 1]))


def attention(g):
    H, KVH, D, NB, BS = 4, 2, 64, 120, 16
    kc = (torch.randn(NB + 1, BS, KVH, D, generator=g) * 2).to(fp8.FP8)
    vc = (torch.randn(NB + 1, BS, KVH, D, generator=g) * 2).to(fp8.FP8)
    ctx, ql = [37, 300, 1, 129, 200], [37, 100, 1, 64, 3]
    bt = torch.randperm(NB, generator=g)[: 5 * 20].view(5, 20)
    cu = torch.tensor([0] + list(torch.tensor(ql).cumsum(0)))
    q = torch.randn(sum(ql), H, D, generator=g)
    ctx_t = torch.tensor(ctx)
    meta = AttnMeta(True, None, ctx_t, bt, cu, max(ql), max(ctx))
    for name, (k, v) in (("fp8 cache", (kc, vc)), ("fp32 cache", (kc.float(), vc.float()))):
        r = rel(T.paged_attention(q, k, v, meta, D ** -0.5), torch_ops.paged_attention(q, k, v, meta, D ** -0.5))
        check(f"prefill attention, {name}", r < 1e-4, r)
    # decode: 5 sequences (16 context splits + the reduce kernel) and 140 (no split)
    for B in (5, 140):
        idx = torch.arange(B) % 5
        qd = torch.randn(B, H, D, generator=g)
        c = ctx_t[idx] if B == 5 else torch.clamp(ctx_t[idx], max=40)
        m = AttnMeta(False, None, c, bt[idx], torch.arange(B + 1), 1, int(c.max()))
        r = rel(T.paged_attention(qd, kc, vc, m, D ** -0.5), torch_ops.paged_attention(qd, kc, vc, m, D ** -0.5))
        check(f"decode attention B={B} (splits {T.decode_splits(B, KVH)}), fp8 cache", r < 1e-4, r)


def quant_rows(g):
    x = torch.randn(33, 768, generator=g) * torch.logspace(-2, 2, 33)[:, None]
    x[4] = 0.0
    q1, s1 = quantize_rows_triton(x, fp8.FP8, fp8.FP8_MAX, 1e-12)
    q2, s2 = fp8.quantize_rows_torch(x)
    check("quantize_rows scales", torch.allclose(s1, s2, rtol=1e-6) and s1.shape == (33, 1), rel(s1, s2))
    check("quantize_rows values within one e4m3 step", one_ulp(q1, q2) and not torch.isnan(q1.float()).any(),
          float((q1.float() == q2.float()).float().mean()))


if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    for fn in (rope_store, attention, quant_rows):
        fn(g)
    if FAILED:
        print("FAILED:", FAILED)
        sys.exit(1)
    print("ALL OK")
