"""`qaforge bench --serve-model M --engine native --engine vllm`: both engines on the tiny model, one
run, one table, bench.json and bench.png (the issue's done-when)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from qaforge.bench.command import bench
from qaforge.serve.launcher import vllm_python
from serve_helpers import NO_VLLM, model_dir

pytestmark = pytest.mark.skipif(vllm_python() is None, reason=NO_VLLM)


def test_bench_cli_compares_native_and_vllm(request, tmp_path_factory, tmp_path, monkeypatch):
    model = model_dir(request, tmp_path_factory)
    monkeypatch.setenv("QAFORGE_WARMUP_MAX_TOKENS", "4")
    monkeypatch.setenv("QAFORGE_DTYPE", "float32")  # the same precision on both engines
    app = typer.Typer()
    app.command()(bench)
    result = CliRunner().invoke(app, [
        "--serve-model", str(model), "--engine", "native", "--engine", "vllm",
        "--api", "chat", "-n", "32", "--concurrency", "16", "--max-tokens", "16", "--ignore-eos",
        "--temperature", "1.0",
        "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "vllm / native" in result.output and "output tokens/s" in result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["engine"] for r in report["results"]] == ["native", "vllm"]
    for r in report["results"]:
        assert r["completed"] == 32 and r["failed"] == 0
        assert r["output_tokens"] == 32 * 16
        assert r["ttft_s"]["p50"] > 0 and r["tpot_s"]["p50"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 10_000
