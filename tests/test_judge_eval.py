"""`qaforge eval --judge URL`: judge scores beside ROUGE-L in eval_results.json, the report and the plot,
against the fault-injecting judge server over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys

from judge_helpers import PROJECT_CORPUS, subprocess_env
from qaforge.generate.pipeline import generate_dataset
from qaforge.testing.fault_judge_server import FaultJudgeServer, JudgeFaultConfig


def test_eval_with_judge_puts_scores_beside_rouge(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in sorted(PROJECT_CORPUS.glob("ch03_*.md")):
        (corpus / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    generate_dataset(corpus, tmp_path / "data", exam_size=12, show_progress=False, print_table=False)
    run = tmp_path / "run"
    with FaultJudgeServer(JudgeFaultConfig(latency=(0.0, 0.01))) as server:
        proc = subprocess.run([sys.executable, "-m", "qaforge", "eval", "--data", str(tmp_path / "data" / "exam.jsonl"),
                               "--out", str(run), "--judge", server.base_url, "--judge-model", "fault-judge",
                               "--judge-api-key", "test-key"],
                              capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run / "eval_results.json").read_text(encoding="utf-8"))
    summary = results["judge"]["summary"]["question-as-answer"]
    assert summary["judged"] == 12 and 1 <= summary["scores"]["overall"]["mean"] <= 5
    assert "spearman" in summary["rank_correlation"]
    judged = [s["predictions"]["question-as-answer"].get("judge_overall") for s in results["samples"]]
    assert all(isinstance(v, (int, float)) for v in judged)
    report = (run / "eval_report.md").read_text(encoding="utf-8")
    assert "## LLM judge (fault-judge)" in report and "| question-as-answer | 12 |" in report
    assert (run / "eval_rouge.png").stat().st_size > 10_000 and (run / "judge_answers_report.json").is_file()
