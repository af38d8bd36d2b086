"""The few-row GEMV of the decode step (qaforge/engine/layers/gemv.py, `EngineConfig.gemv_max_rows`).

On CPU: the option's validation, and (when Triton is installed) the kernel and the op table's routing in
Triton's interpreter (tests/gemv_triton_check.py). Marked `gpu`: the bf16 kernel on Qwen3-0.6B's four layer
shapes against cuBLAS and an fp32 reference, and one stream's ms/token with the option off and on.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qaforge.engine import LLM, EngineConfig, SamplingParams

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("bad", [-1, 5])
def test_gemv_max_rows_is_validated(tiny_model_dir, bad):
    with pytest.raises(ValueError, match="gemv_max_rows must be in"):
        EngineConfig(str(tiny_model_dir), device="cpu", gemv_max_rows=bad)
    assert EngineConfig(str(tiny_model_dir), device="cpu", gemv_max_rows=4).gemv_max_rows == 4


def test_the_option_leaves_the_cpu_engine_alone(tiny_model_dir):
    """The torch backend has no GEMV: the option changes nothing there (same greedy tokens)."""
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [[5, 9, 200, 31], [7, 8]]
    kw = dict(device="cpu", dtype="float32", max_model_len=128)
    a = LLM(str(tiny_model_dir), **kw).generate(prompts, sp)
    b = LLM(str(tiny_model_dir), gemv_max_rows=4, **kw).generate(prompts, sp)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="Triton is not installed (CPU torch ships without it): its interpreter runs the kernel")
def test_gemv_kernel_in_the_interpreter():
    r = subprocess.run([sys.executable, str(HERE / "gemv_triton_check.py")], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=str(HERE.parent))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ALL OK" in r.stdout, r.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton, CUDA graphs)")
def test_gpu_gemv_matches_cublas_and_times_one_stream(tmp_path):
    from qaforge.bench.engine import make_random_qwen3_06b
    from qaforge.engine.layers.gemv import gemv

    g = torch.Generator(device="cuda").manual_seed(0)
    for N, K in ((4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072)):  # qkv, o, gate_up, down
        w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
        for M in (1, 2, 4):
            x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
            exact = x.double() @ w.double().t()
            err_gemv = float((gemv(x, w).double() - exact).norm() / exact.norm())
            err_cublas = float(((x @ w.t()).double() - exact).norm() / exact.norm())
            assert err_gemv <= 1.5 * err_cublas + 1e-4, (N, K, M, err_gemv, err_cublas)
    d = make_random_qwen3_06b(str(tmp_path / "qwen3_06b_rand"))
    prompt = list(range(1000, 1100))
    one = SamplingParams(temperature=0.0, max_tokens=256, ignore_eos=True)
    ms, outs = {}, {}
    for rows in (0, 4):
        llm = LLM(d, device="cuda", dtype="bfloat16", max_model_len=1024, max_num_seqs=8, gpu_memory_utilization=0.3,
                  gemv_max_rows=rows)
        assert (llm.runner.model.ops.linear.__name__ == "few_rows_linear") == bool(rows)
        llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs[rows] = llm.generate([prompt], one)[0].token_ids
        torch.cuda.synchronize()
        ms[rows] = round((time.perf_counter() - t0) * 1000 / 256, 3)
        del llm
    same = next((i for i, (a, b) in enumerate(zip(outs[0], outs[4])) if a != b), 256)
    print(f"single stream, 256 tokens: cuBLAS {ms[0]} ms/token, gemv {ms[4]} ms/token; equal greedy prefix {same}")
    assert len(outs[4]) == 256
