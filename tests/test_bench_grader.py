"""`qaforge bench --grader`: the exam list in one /predict x rounds against real servers, tokens
counted with the model's tokenizer, two servers compared in one run (table, bench.json, bench.png)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from qaforge.bench.grader_mode import run_grader_bench
from qaforge.cli import app
from serve_helpers import model_dir, serve_tiny, warmup_questions


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory) -> str:
    return str(model_dir(request, tmp_path_factory))


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, tiny):
    with serve_tiny(request, tmp_path_factory, model=tiny, env={"QAFORGE_MAX_TOKENS": "12"}) as srv:
        yield srv


@pytest.fixture()
def exam(tmp_path):
    path = tmp_path / "exam.jsonl"
    rows = [{"instruction": q, "input": "", "output": "参考答案 warp", "difficulty": "easy", "chapter": 1}
            for q in warmup_questions(10)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_two_servers_compared_with_tokenizer_counts(server, tiny, exam, tmp_path, capsys):
    report = run_grader_bench([server.base_url, server.base_url], exam, rounds=2, tokenizer=tiny,
                              labels=["A", "B"], out_dir=tmp_path)
    a, b = report["results"]
    assert report["config"]["questions"] == 10 and report["config"]["rounds"] == 2
    assert len(a["round_s"]) == 2 and all(s > 0 for s in a["round_s"] + b["round_s"])
    tok = AutoTokenizer.from_pretrained(tiny)
    counted = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in a["answers"])
    assert a["output_tokens_per_round"][-1] == counted > 0
    assert a["output_tokens_per_second"] == pytest.approx(sum(a["output_tokens_per_round"]) / sum(a["round_s"]))
    assert b["same_answers_as_first"] == 1.0  # greedy, the same server twice
    table = capsys.readouterr().out
    assert "B / A" in table and "round 2 s" in table and "output tokens/s" in table
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["config"]["mode"] == "grader" and len(saved["results"]) == 2
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_grader_mode_with_compare_and_chunks(server, tiny, exam, tmp_path):
    result = CliRunner().invoke(app, ["bench", "--grader", str(exam), "--url", server.base_url,
                                      "--compare", server.base_url, "--rounds", "1", "--chunk-size", "4",
                                      "--limit", "6", "--tokenizer", tiny, "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["config"]["questions"] == 6 and saved["config"]["chunk_size"] == 4
    assert [len(r["answers"]) for r in saved["results"]] == [6, 6]


def test_cli_grader_mode_bad_exam_names_the_file(server, tmp_path):
    bad = tmp_path / "empty.jsonl"
    bad.write_text("", encoding="utf-8")
    result = CliRunner().invoke(app, ["bench", "--grader", str(bad), "--url", server.base_url])
    assert result.exit_code != 0
    assert "empty.jsonl" in result.output
