"""`qaforge.bench.run_bench` against a real native server: every API, arrival mode and output."""

from __future__ import annotations

import json

import pytest

from qaforge.bench import dataset_prompts, percentiles, random_prompts, run_bench
from qaforge.paths import WARMUP_QUESTIONS
from serve_helpers import serve_tiny


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    with serve_tiny(request, tmp_path_factory) as srv:
        yield srv


def test_percentiles_interpolate_like_numpy():
    import numpy as np

    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    got = percentiles(values)
    for p in (50, 90, 99):
        assert got[f"p{p}"] == pytest.approx(float(np.percentile(values, p)))
    assert percentiles([])["p50"] is None


def test_prompt_sources_are_deterministic():
    assert random_prompts(5, seed=3) == random_prompts(5, seed=3) != random_prompts(5, seed=4)
    qs = dataset_prompts(WARMUP_QUESTIONS, 20, seed=0)
    assert len(qs) == 20 and len(set(qs)) == 15  # cycles through the 15 questions


def test_chat_stream_bench_measures_latencies_and_writes_outputs(server, tmp_path):
    # Sampling (not greedy) so that even a barely trained model streams visible text.
    report = run_bench([server.base_url], labels=["native"], api="chat", num_requests=24,
                       concurrency=8, max_tokens=16, ignore_eos=True, temperature=1.0,
                       out_dir=tmp_path, progress=False)
    r = report["results"][0]
    assert r["completed"] == 24 and r["failed"] == 0
    assert r["output_tokens"] == 24 * 16  # counted by the server (usage), not guessed
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert 0 < r[key]["p50"] <= r[key]["p90"] <= r[key]["p99"], key
    assert r["ttft_s"]["p50"] < r["e2e_s"]["p50"]
    assert r["requests_per_second"] > 0 and r["output_tokens_per_second"] > 0
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["results"][0]["completed"] == 24 and saved["config"]["concurrency"] == 8
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_bench_with_batches_and_a_request_rate(server, tmp_path):
    report = run_bench([server.base_url], api="predict", num_requests=12, predict_batch=4,
                       request_rate=20.0, prompts=str(WARMUP_QUESTIONS), max_tokens=8, temperature=1.0,
                       tokenizer=_model_arg(server), progress=False)
    r = report["results"][0]
    assert r["requests"] == 3 and r["prompts"] == 12 and r["completed"] == 3
    assert r["output_tokens_counted_by"] == "tokenizer"
    # Re-tokenizing decoded answers (as the course grader counts) is close to, not exactly, the
    # generated count: merges across the answer's text can differ from the sampled tokens.
    assert 0 < r["output_tokens"] <= 12 * 8 * 1.5
    assert r["ttft_s"]["p50"] is None  # /predict does not stream


def test_two_endpoints_compared_in_one_run(server, tmp_path, capsys):
    report = run_bench([server.base_url, server.base_url], labels=["first", "second"], api="completions",
                       num_requests=8, max_tokens=8, out_dir=tmp_path, progress=True)
    assert [r["label"] for r in report["results"]] == ["first", "second"]
    table = capsys.readouterr().out
    assert "second / first" in table and "output tokens/s" in table and "TTFT p50 ms" in table
    assert set(report["files"]) == {"json", "png"}


def test_openai_api_on_a_server_without_models_says_what_to_do():
    with pytest.raises(ValueError, match="pass --model, or --api predict"):
        run_bench(["http://127.0.0.1:9"], api="chat", num_requests=1, progress=False)


def test_unreachable_endpoint_is_reported_as_failures(tmp_path):
    report = run_bench(["http://127.0.0.1:9"], api="predict", num_requests=3, progress=False,
                       warmup_requests=0)
    r = report["results"][0]
    assert r["failed"] == 3 and r["completed"] == 0 and "ConnectError" in r["errors"][0]


def _model_arg(server) -> str:
    import httpx

    return httpx.get(server.base_url + "/v1/models").json()["data"][0]["root"]
