"""The offline engine benchmark (qaforge.bench.engine) and the root `bench.py` over it, on CPU with a
small random Qwen3: the workloads keep their shapes, every request gets exactly its budget, the table
compares with the vLLM figures."""
from __future__ import annotations

import subprocess
import sys

import pytest

from qaforge.bench import engine as engine_bench
from qaforge.paths import REPO_DIR


def test_workloads_fit_the_vocabulary_and_scale():
    full = engine_bench.workloads(151936)
    assert len(full["W1"][0]) == 256 and len(full["W4"][0]) == 1024 and full["W3"][1] == [384] * 10
    small = engine_bench.workloads(1000, scale=0.05)
    assert len(small["W1"][0]) == 13 and small["W3"][1] == [19] * 10
    assert all(0 <= t < 1000 for prompts, _ in small.values() for p in prompts for t in p)
    assert small["W2"][0] == [[t % 1000 for t in full["W2"][0][0]]]  # the same prompts, folded


@pytest.mark.usefixtures("one_torch_thread")  # conftest.py says why
def test_run_native_generates_every_budget_and_tables_it(qwen3_dir):
    res = engine_bench.run_native(qwen3_dir, ["W2", "W3"], 0.02, device="cpu", max_model_len=512,
                                  max_num_seqs=16, num_kvcache_blocks=256)
    assert res["W3"]["requests"] == 10 and res["W3"]["gen_tokens"] == 10 * 8
    assert res["W2"]["gen_tokens"] == 5 and res["W2"]["ms_per_tok"] > 0
    assert res["kv_blocks"] == 256 and res["stats"]["waiting"] == 0
    table = engine_bench.table(res)
    assert "W2" in table and "W3" in table and "W1 " not in table and "startup" in table


def test_root_bench_script_runs_over_the_package():
    out = subprocess.run([sys.executable, "bench.py", "--help"], cwd=REPO_DIR, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--random-qwen3-0.6b" in out.stdout and "--max-num-seqs" in out.stdout
