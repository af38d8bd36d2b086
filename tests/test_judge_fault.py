"""The judge end to end against the fault-injecting server in judge mode, over real HTTP with the
openai SDK: dataset mode (planted wrong answers found, every fault survived, the threshold rule),
answer mode (rank correlation with ROUGE-L), pairwise mode (a planted position bias measured), and
a real `qaforge judge` subprocess killed with SIGKILL and resumed with nothing lost or redone."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from judge_helpers import journal_calls, judge_command, make_dataset, make_eval_run, subprocess_env
from qaforge.generate.llm_client import LLMOptions
from qaforge.judge import apply_judge_threshold, judge_answers, judge_dataset, judge_pairwise
from qaforge.testing.fault_judge_server import FaultJudgeServer, JudgeFaultConfig

CONTRACT_KEYS = {"id", "scores", "overall", "reason", "judge_model"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("judge_dataset"))


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    return make_eval_run(tmp_path_factory.mktemp("judge_eval"))


def _faulty(**overrides) -> JudgeFaultConfig:
    base = dict(latency=(0.0, 0.01), slow_s=0.6, retry_after_s=0.3, rate_out_of_range=0.15)
    return JudgeFaultConfig.all_faults(**{**base, **overrides})


def _options(server, **overrides) -> LLMOptions:
    base = dict(base_url=server.base_url, api_key="test-key", model="fault-judge", concurrency=8,
                timeout_s=0.4, backoff_base_s=0.05, temperature=0.0, max_tokens=512)
    return LLMOptions(**{**base, **overrides})


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_dataset_mode_finds_wrong_answers_through_every_fault(dataset, tmp_path):
    source, wrong = dataset
    folder = tmp_path / "ds"
    shutil.copytree(source, folder)
    records = json.loads((folder / "qa.json").read_text(encoding="utf-8"))
    with FaultJudgeServer(_faulty()) as server:
        report = judge_dataset(folder, _options(server, price_in_per_1k=0.002, price_out_per_1k=0.01),
                               show_progress=False)
        faults, waits = dict(server.stats.faults), list(server.stats.retry_waits)
        requests_before_rerun = server.stats.requests
        again = judge_dataset(folder, _options(server), show_progress=False)
        assert server.stats.requests == requests_before_rerun
    lines = _lines(folder / "judge.jsonl")
    assert [line["id"] for line in lines] == [r["id"] for r in records]       # one line per pair, in order
    for line in lines:
        assert set(line) == CONTRACT_KEYS and line["judge_model"] == "fault-judge"
        assert set(line["scores"]) == {"accuracy", "relevance", "completeness"}
        assert all(isinstance(v, int) and 1 <= v <= 5 for v in line["scores"].values())
        assert line["overall"] == round(sum(line["scores"].values()) / 3, 4) and line["reason"]
    assert {line["id"] for line in lines if line["scores"]["accuracy"] <= 2} == set(wrong)
    # every fault was met and survived: nothing lost to 429/500/timeouts, garbage or bad scores
    for fault in ("429", "500", "slow", "garbage", "out_of_range", "malformed", "think", "fence"):
        assert faults.get(fault, 0) > 0, (fault, faults)
    assert report["failures"]["total"] == 0 and report["failures"]["reasked"] > 0
    assert report["failures"]["repaired"] > 0 and report["run"]["retries"] > 0
    assert report["run"]["response_format_fallbacks"] == ["json_schema"]
    assert waits and min(w for _, w in waits) >= 0.3                           # Retry-After honoured
    usage = report["usage"]
    assert usage["calls"] == len(records) and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["cost"] == pytest.approx(usage["prompt_tokens"] * 2e-6 + usage["completion_tokens"] * 1e-5, abs=1e-6)
    assert sum(report["scores"]["accuracy"]["distribution"].values()) == len(records)
    assert "## Failures" in (folder / "judge_report.md").read_text(encoding="utf-8")
    # a second run replays the journal: no request, same file
    assert again["run"]["calls_reused"] == len(records) and again["run"]["calls_asked"] == 0
    assert _lines(folder / "judge.jsonl") == lines
    kept, rejected = apply_judge_threshold(records, folder, 2, score="accuracy")
    assert {r["id"] for r in rejected} == set(wrong) and len(kept) == len(records) - len(wrong)


def test_answer_mode_scores_and_rank_correlation(eval_run, tmp_path):
    with FaultJudgeServer(_faulty()) as server:
        result = judge_answers(eval_run, _options(server), out_dir=tmp_path, show_progress=False)
    summary = result["summary"]
    assert result["systems"] == ["poor", "good"]             # question-as-answer skipped by default
    assert summary["good"]["scores"]["overall"]["mean"] > summary["poor"]["scores"]["overall"]["mean"] + 2
    pooled = result["rank_correlation_pooled"]
    assert pooled["n"] == 2 * result["questions"] and pooled["spearman"] > 0.7 and pooled["kendall_tau_b"] > 0.5
    assert all(row is not None for rows in result["per_question"].values() for row in rows)
    assert len(_lines(tmp_path / "judge_answers.jsonl")) == 2 * result["questions"]
    assert result["failures"]["total"] == 0
    assert "Spearman" in (tmp_path / "judge_answers_report.md").read_text(encoding="utf-8")


def test_pairwise_measures_a_planted_position_bias(eval_run, tmp_path):
    with FaultJudgeServer(_faulty(first_bias=0.0)) as server:
        fair = judge_pairwise(eval_run, _options(server), ("good", "poor"), out_dir=tmp_path / "fair",
                              show_progress=False)
        server.config.first_bias = 0.5
        biased = judge_pairwise(eval_run, _options(server), ("good", "poor"), out_dir=tmp_path / "biased",
                                show_progress=False)
    n = fair["n"]
    assert fair["swapped"] == n // 2 and sum(r["first"] == "poor" for r in fair["rows"]) == n // 2
    # an order-blind judge and an always-better A: A wins everywhere, the first position exactly half the time
    assert fair["a_vs_b"]["win"]["count"] == n
    assert fair["position_bias"]["first_position_wins"]["rate"] == pytest.approx((n // 2) / n)
    bias = biased["position_bias"]
    assert bias["a_wins_when_first"]["rate"] == 1.0 and bias["a_wins_when_second"]["rate"] < 0.9
    assert bias["first_position_wins"]["rate"] > 0.6
    assert biased["a_vs_b"]["loss"]["count"] > 0
    low, high = biased["a_vs_b"]["win"]["ci95"]
    assert low < biased["a_vs_b"]["win"]["rate"] < high


def test_cli_pairwise_report_shows_the_bias_figure(eval_run, tmp_path):
    with FaultJudgeServer(_faulty(first_bias=0.3)) as server:
        run = subprocess.run(judge_command(eval_run, server.base_url, "--mode", "pairwise", "--system", "good",
                                           "--system", "poor", "--out", str(tmp_path), "--timeout", "0.4"),
                             env=subprocess_env(), capture_output=True, text=True, timeout=180)
        bad = subprocess.run(judge_command(eval_run, server.base_url, "--mode", "pairwise", "--system", "nope",
                                           "--out", str(tmp_path)),
                             env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "first position wins" in run.stdout
    text = (tmp_path / "judge_pairwise_report.md").read_text(encoding="utf-8")
    assert "## Position bias" in text and "first-shown answer wins:" in text and "Wilson" in text
    assert bad.returncode == 2 and "no system 'nope'" in bad.stderr


def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(dataset, tmp_path):
    source, _ = dataset
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    shutil.copytree(source, reference)
    shutil.copytree(source, resumed)
    items = len(json.loads((source / "qa.json").read_text(encoding="utf-8")))
    with FaultJudgeServer(_faulty(latency=(0.1, 0.2), rate_slow=0.0)) as server:
        judge_dataset(reference, _options(server, concurrency=2, timeout_s=2.0), show_progress=False)
        args = judge_command(resumed, server.base_url, "--concurrency", "2", "--timeout", "2.0")
        proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(journal_calls(resumed)) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        before = journal_calls(resumed)
        assert 10 <= len(before) < items and not (resumed / "judge.jsonl").exists()
        final = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, timeout=240)
        assert final.returncode == 0, final.stderr[-3000:]
    keys = journal_calls(resumed)
    assert len(keys) == len(set(keys)) == items                 # nothing asked twice, nothing missing
    assert keys[:len(before)] == before                          # the killed run's answers were kept
    report = json.loads((resumed / "judge_report.json").read_text(encoding="utf-8"))
    assert report["run"]["calls_reused"] == len(before) and report["run"]["calls_asked"] == items - len(before)
    assert report["usage"]["calls"] == items
    assert (resumed / "judge.jsonl").read_bytes() == (reference / "judge.jsonl").read_bytes()
