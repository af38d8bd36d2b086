"""Run by tests/test_engine_gemv.py with TRITON_INTERPRET=1 (Triton's CPU interpreter, set before triton is
imported): layers/gemv.py against float64 F.linear, and the op table's routing. Prints 'ALL OK' last."""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from qaforge.engine.layers import fp8  # noqa: E402
from qaforge.engine.layers.gemv import block_n, gemv  # noqa: E402
from qaforge.engine.layers.ops import triton_ops  # noqa: E402

torch.manual_seed(0)
failed = []
# Qwen3-0.6B's o and down shapes (K > BLOCK_K, several K tiles), a ragged one (N, K not multiples of a block)
for N, K, bias in ((1024, 2048, False), (100, 700, True), (37, 5, True)):
    w = torch.randn(N, K) / K ** 0.5
    b = torch.randn(N) if bias else None
    for M in (1, 2, 3, 4):
        x = torch.randn(M, K)
        got = gemv(x, w, b)
        want = F.linear(x.double(), w.double(), None if b is None else b.double())
        err = float((got.double() - want).abs().max())
        ok = got.shape == (M, N) and got.dtype == x.dtype and err < 1e-4
        print(f"{'ok  ' if ok else 'FAIL'} gemv M={M} N={N} K={K} bias={bias}: max error {err:.1e}", flush=True)
        if not ok:
            failed.append((M, N, K))
# a row view with a stride (x[:, :K] of a wider buffer) reads the right elements
wide = torch.randn(2, 96)
w = torch.randn(50, 64)
if not torch.allclose(gemv(wide[:, :64], w), wide[:, :64] @ w.t(), atol=1e-4):
    failed.append("strided x")
if [block_n(n, 132) for n in (1024, 4096, 6144, 151936)] != [4, 8, 16, 32]:
    failed.append(f"block_n {[block_n(n, 132) for n in (1024, 4096, 6144, 151936)]}")
# the op table: <= gemv_max_rows rows through the GEMV, more rows and fp8 weights through their own paths
ops = triton_ops(2)
w = torch.randn(64, 48)
x = torch.randn(3, 48)
if not torch.equal(ops.linear(x, w), F.linear(x, w)):
    failed.append("3 rows must take F.linear")
if not torch.allclose(ops.linear(x[:2], w), F.linear(x[:2], w), atol=1e-5):
    failed.append("2 rows through the GEMV")
q = fp8.quantize_weight(w)
if not torch.equal(ops.linear(x[:1], q), fp8.fp8_linear(x[:1], q)):
    failed.append("an fp8 weight must take fp8_linear")
if triton_ops(0).linear is not fp8.linear:
    failed.append("gemv_max_rows=0 must be the plain linear")
print(f"FAILED {failed}" if failed else "ALL OK")
sys.exit(1 if failed else 0)
