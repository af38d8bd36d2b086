"""`qaforge generate --judge-threshold N`: pairs the judge scores below N leave the dataset as the counted
rule "judge"; the exam is drawn again from what is kept (fault judge server over real HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys

from judge_helpers import make_dataset, subprocess_env
from qaforge.dataset import read_records
from qaforge.generate.judge_filter import drop_below_judge
from qaforge.generate.llm_client import LLMOptions
from qaforge.testing.fault_judge_server import FaultJudgeServer, JudgeFaultConfig


def test_planted_wrong_answers_are_dropped_and_counted(tmp_path):
    dataset, wrong = make_dataset(tmp_path, wrong_every=4)
    before = len(read_records(dataset / "qa.json"))
    with FaultJudgeServer(JudgeFaultConfig(latency=(0.0, 0.01))) as server:
        options = LLMOptions(base_url=server.base_url, api_key="test-key", model="fault-judge", concurrency=8)
        report = drop_below_judge(dataset, options, 4.0, exam_size=4, seed=0, near_threshold=0.7, name="t",
                                  show_progress=False)
    kept = read_records(dataset / "qa.json")
    kept_ids = {r.id for r in kept}
    assert not kept_ids & set(wrong), "an answer the judge scored low is still in the dataset"
    assert report["rejections"]["judge"] == before - len(kept) >= len(wrong)
    assert report["dataset"]["total"] == len(kept) and report["judge"]["threshold"] == 4.0
    train, exam = read_records(dataset / "train.jsonl"), read_records(dataset / "exam.jsonl")
    assert len(exam) == report["split"]["exam"] == 4 and len(train) == report["split"]["train"]
    assert json.loads((dataset / "report.json").read_text(encoding="utf-8"))["rejections"]["judge"] == report["rejections"]["judge"]
    assert "judge" in (dataset / "report.md").read_text(encoding="utf-8")
    assert f"QA pairs: **{len(kept)}**" in (dataset / "README.md").read_text(encoding="utf-8")


def test_judge_threshold_needs_the_llm_generator(tmp_path):
    from judge_helpers import PROJECT_CORPUS

    proc = subprocess.run([sys.executable, "-m", "qaforge", "generate", "--corpus", str(PROJECT_CORPUS), "--out", str(tmp_path / "d"),
                           "--judge-threshold", "3", "--exam-size", "5"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300, cwd=str(tmp_path.parent))
    assert proc.returncode == 2 and "--generator llm" in proc.stderr
    assert not (tmp_path / "d").exists()  # refused before generating anything
