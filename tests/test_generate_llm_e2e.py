"""The LLM generator end to end, through the `qaforge generate` command and the fault server over
real HTTP: exact 50/30/20 per chapter with every rule counted, and SIGKILL-and-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qaforge.generate.filters import RULES
from qaforge.generate.llm_client import LLMOptions
from qaforge.generate.progress import PROGRESS_KEYS
from qaforge.generate.pipeline import generate_dataset
from qaforge.testing.fault_llm_server import FaultConfig, FaultLLMServer

REPO = Path(__file__).resolve().parents[1]
GLOSSARY = REPO.parent / "shared" / "corpus" / "gpu-glossary"
PROJECT_CORPUS = REPO / "qaforge" / "data" / "corpus"
COMPARED = ("qa.json", "train.jsonl", "exam.jsonl", "dataset_info.json")


def _command(corpus: Path, out: Path, server: FaultLLMServer, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qaforge.generate.command", "--corpus", str(corpus), "--out", str(out),
            "--generator", "llm", "--api-base", server.base_url, "--api-key", "test-key", "--model", "fault-llm",
            "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.skipif(not GLOSSARY.is_dir(), reason=f"shared GPU glossary corpus not found at {GLOSSARY}")
def test_cli_reaches_exact_difficulty_mix_against_faulty_api(tmp_path):
    out = tmp_path / "glossary"
    # rate_bad_item 0.8: enough bad items that each of the seven rules is drawn at least once
    with FaultLLMServer(FaultConfig.all_faults(latency=(0.01, 0.05), slow_s=3.0, rate_slow=0.15,
                                               rate_bad_item=0.8)) as server:
        run = subprocess.run(_command(GLOSSARY, out, server, "--target-per-chapter", "30", "--exam-size", "20",
                                      "--concurrency", "16", "--timeout", "1.5"),
                             env=_env(), capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        faults = dict(server.stats.faults)
        waits = list(server.stats.retry_waits)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    chapters = report["dataset"]["by_chapter"]
    assert len(chapters) == 4
    for row in chapters.values():
        assert (row["easy"], row["medium"], row["hard"]) == (15, 9, 6), row
    # every quality rule fired and is counted; duplicates were caught; faults were survived
    assert all(report["rejections"][rule] > 0 for rule in RULES), report["rejections"]
    assert report["duplicates"]["exact"] > 0
    assert report["planner"]["retries"] > 0 and report["planner"]["calls_reasked"] > 0
    assert report["planner"]["response_format_fallbacks"] == ["json_schema"]
    for fault in ("429", "500", "slow", "garbage", "malformed", "think", "fence", "duplicate"):
        assert faults.get(fault, 0) > 0, (fault, faults)
    assert waits and min(wait for _, wait in waits) >= 1.0        # Retry-After: 1 honoured
    usage = report["usage"]["total"]
    assert usage["calls"] > 0 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert "Rejections per filter rule" in (out / "report.md").read_text(encoding="utf-8")
    records = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    assert all(r["generator"] == "llm" and r["model"] == "fault-llm" for r in records)


def _journal_calls(out: Path) -> int:
    path = out / "journal.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().split(b"\n") if line.startswith(b'{"type": "call"'))


@pytest.mark.skipif(not PROJECT_CORPUS.is_dir(), reason="project corpus qaforge/data/corpus not present")
def test_sigkill_and_resume_gives_the_uninterrupted_dataset(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in sorted(p.name for p in PROJECT_CORPUS.glob("ch0[12]_*.md")):
        shutil.copy(PROJECT_CORPUS / name, corpus / name)
    config = FaultConfig.all_faults(latency=(0.05, 0.25), slow_s=2.0, retry_after_s=0.3, rate_think=0.5)
    with FaultLLMServer(config) as server:
        reference = tmp_path / "uninterrupted"
        ref_report = generate_dataset(corpus, reference, generator="llm", exam_size=10, show_progress=False, print_table=False,
                         llm=LLMOptions(base_url=server.base_url, api_key="test-key", model="fault-llm",
                                        concurrency=4, timeout_s=1.0, target_per_chapter=40))
        assert [(r["easy"], r["medium"], r["hard"]) for r in ref_report["dataset"]["by_chapter"].values()] == [(20, 12, 8)] * 2
        resumed = tmp_path / "resumed"
        args = _command(corpus, resumed, server, "--target-per-chapter", "40", "--exam-size", "10",
                        "--concurrency", "4", "--timeout", "1.0")
        for kill_after_calls in (3, 12):        # two kills: early in round 0, and later
            proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 120
            while _journal_calls(resumed) < kill_after_calls and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        assert not (resumed / "qa.json").exists()
        final = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=240)
        assert final.returncode == 0, final.stderr[-3000:]
    for name in COMPARED:
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    keys = [json.loads(line)["key"] for line in (resumed / "journal.jsonl").read_text().splitlines()
            if line.startswith('{"type": "call"')]
    assert len(keys) == len(set(keys))                  # nothing asked twice, nothing lost
    report = json.loads((resumed / "report.json").read_text())
    assert report["planner"]["calls_reused"] >= 12
    progress = json.loads((resumed / "progress.json").read_text())
    assert set(progress) == set(PROGRESS_KEYS) and progress["status"] == "complete"
    assert progress["accepted"] == progress["target"] == 80 and progress["calls_journaled"] == len(keys)
