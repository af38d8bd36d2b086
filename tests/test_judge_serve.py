"""The judge against `qaforge serve` on the tiny model over real HTTP (openai SDK).

The tiny model cannot write a verdict by itself, but `qaforge serve` enforces the judge's JSON schema
(structured output), so every reply parses: every call reached the server, tokens came from the server's
usage, no reply needed a re-ask, and every item got a verdict on file.
"""

from __future__ import annotations

import json
import subprocess

from judge_helpers import judge_command, make_dataset, make_eval_run, subprocess_env
from qaforge.generate.llm_client import LLMOptions
from qaforge.judge import judge_answers, judge_pairwise
from qaforge.serve.launcher import running_server

SERVER_ARGS = ["--max-tokens", "48", "--max-model-len", "4096"]


def _check_counted(report: dict, asked: int) -> None:
    failures = report["failures"]
    assert report["usage"]["calls"] == asked and report["usage"]["prompt_tokens"] > 0
    assert report["usage"]["completion_tokens"] > 0
    assert failures["call"] == 0                                  # the server answered every call
    assert failures["total"] == failures["parse"] == 0            # the schema-constrained replies all parse


def test_judge_modes_against_qaforge_serve_on_the_tiny_model(tiny_model_dir, tmp_path):
    dataset, _ = make_dataset(tmp_path)
    run = make_eval_run(tmp_path, exam_size=6)
    with running_server(str(tiny_model_dir), engine="native", args=SERVER_ARGS) as base_url:
        cli = subprocess.run(judge_command(dataset, f"{base_url}/v1", "--model", str(tiny_model_dir),
                                           "--limit", "3", "--max-tokens", "48", "--concurrency", "3"),
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
        options = LLMOptions(base_url=f"{base_url}/v1", api_key="EMPTY", model=str(tiny_model_dir),
                             max_tokens=48, concurrency=4, temperature=0.0)
        answers = judge_answers(run, options, systems=["good"], limit=3, show_progress=False)
        pairwise = judge_pairwise(run, options, ("good", "poor"), limit=4, show_progress=False)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "not judged" in cli.stdout
    report = json.loads((dataset / "judge_report.json").read_text(encoding="utf-8"))
    assert report["items"] == 3 and report["judged"] + report["failures"]["total"] == 3
    _check_counted(report, 3)
    judged = (dataset / "judge.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(judged) == report["judged"]
    assert answers["summary"]["good"]["judged"] + answers["failures"]["total"] == 3
    _check_counted(answers, 3)
    assert pairwise["n"] + pairwise["failures"]["total"] == 4
    _check_counted(pairwise, 4)
