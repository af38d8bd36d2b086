"""scripts/bench_train on CPU: the one-call runner (variants as processes, timeouts with partial results,
bench_train.json, the table) on the project's tiny model and a small dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import write_qa_jsonl

from scripts.bench_train.e2e import step_summary
from scripts.bench_train.runner import last_progress, parse_args

ROOT = Path(__file__).resolve().parents[1]


def test_step_summary_leaves_one_off_gaps_out():
    ends = [10.0, 10.1, 10.2, 12.2, 12.3]  # a 2 s gap (an eval, a new-shape recording) among 0.1 s steps
    summary = step_summary(0.0, ends, [100] * 5)
    assert summary["first_step_s"] == 10.0 and summary["median_step_ms"] == 100.0
    assert summary["one_off_gaps_s"] == 2.0 and summary["steady_tok_s"] == pytest.approx(1000, rel=1e-6)
    assert step_summary(0.0, [], []) == {"steps": 0}


def test_last_progress_of_a_killed_variant(tmp_path):
    log = tmp_path / "p.jsonl"
    assert last_progress(log) == {"partial": True, "steps": 0}
    log.write_text('{"t": 1, "event": "step", "steps": 1}\n{"t": 5, "event": "step", "steps": 10}\n')
    assert last_progress(log) == {"partial": True, "t": 5, "steps": 10}


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--model", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        parse_args(["--steps", "3", "--warmup", "5"])


def test_one_call_runs_variants_in_processes_with_timeouts(tiny_model_dir, tmp_path):
    data = write_qa_jsonl(tmp_path / "train.jsonl", 36)
    exam = write_qa_jsonl(tmp_path / "exam.jsonl", 4, seed=1)
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, "-m", "scripts.bench_train", "--device", "cpu", "--model", str(tiny_model_dir),
           "--data", str(data), "--exam", str(exam), "--max-steps", "2", "--variants", "hf_peft,qaforge_cold",
           "--out", str(out), "--work", str(work), "--timeout-s", "150", "--budget-s", "300"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "bench_train.json").read_text())
    plain, mine = res["runs"]["hf_peft"], res["runs"]["qaforge_cold"]
    assert plain["status"] == "ok" and mine["status"] == "ok", (plain, mine)
    assert plain["steps"] == mine["steps"] == 2 and plain["planned_steps"] == 2
    assert mine["fast_path"]["fused_layers"] > 0 and mine["time_split"]["steps"] == 2
    assert (work / "runs" / "hf_peft" / "adapter" / "adapter_config.json").is_file()
    assert [row["variant"] for row in res["table"]] == ["hf_peft", "qaforge_cold"]
    assert "hf_peft | ok" in proc.stdout and "[qaforge_cold]" in proc.stdout
    # a variant that cannot finish in its timeout is killed and reports how far it got
    cmd[cmd.index("--variants") + 1] = "hf_peft"
    cmd[cmd.index("--timeout-s") + 1] = "3"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=200)
    res = json.loads((out / "bench_train.json").read_text())
    assert res["runs"]["hf_peft"]["status"] == "timeout after 3 s" and res["runs"]["hf_peft"]["partial"] is True
