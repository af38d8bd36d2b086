"""The CLI's contract (README, "Exit codes"): 0 done, 1 done with shortfalls, 2 bad input naming the flag or
file:line, 3 a crash; API flags imply the LLM generator; help texts render whole."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qaforge.cli import app
from qaforge.paths import DEFAULT_CORPUS_DIR
from qaforge.testing.fault_llm_server import FaultConfig, FaultLLMServer

COMMANDS = ("generate", "train", "eval", "serve", "bench", "convert", "split", "review", "judge", "tiny",
            "download", "demo", "profiles")


def _run(*args: object):
    # A wide terminal: rich wraps help text, and a wrapped line could hide a stray " ." at its end.
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def _one_chapter(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(sorted(DEFAULT_CORPUS_DIR.glob("ch01_*.md"))[0], corpus)
    return corpus


@pytest.mark.parametrize("command", COMMANDS)
def test_help_texts_render_whole(command):
    result = _run(command, "--help")
    assert result.exit_code == 0, result.output
    # rich reads "[env: X]" as markup and drops it, which left "LLM API base URL ." behind
    assert not re.search(r"\w \.(\s|$)", result.output), result.output


def test_generate_help_names_the_environment_variables():
    text = _run("generate", "--help").output
    assert "QAFORGE_GEN_BASE_URL" in text and "OPENAI_API_KEY" in text and "Implies --generator llm" in text


def test_api_flags_imply_the_llm_generator(tmp_path):
    out = tmp_path / "d"
    with FaultLLMServer(FaultConfig()) as server:
        result = _run("generate", "--corpus", _one_chapter(tmp_path), "--out", out, "--api-base", server.base_url,
                      "--model", "fault-llm", "--target-per-chapter", "6", "--exam-size", "2", "--quiet")
    assert result.exit_code == 0, result.output
    records = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    assert records and {r["generator"] for r in records} == {"llm"} and {r["model"] for r in records} == {"fault-llm"}


def test_rules_generator_with_api_flags_is_refused(tmp_path):
    result = _run("generate", "--generator", "rules", "--model", "qwen-max", "--out", tmp_path / "d")
    assert result.exit_code == 2
    assert "--generator rules" in result.output and "--model" in result.output
    assert not (tmp_path / "d").exists()  # refused before any work


@pytest.mark.parametrize("args, flag", [
    (["--corpus", "/no/such/book"], "--corpus"),
    (["--chunk-size", "10"], "--chunk-size"),
    (["--response-format", "yaml"], "--response-format"),
    (["--generator", "magic"], "--generator"),
    (["--targets", "1=x"], "--targets"),
])
def test_generate_bad_flags_exit_2_naming_the_flag(tmp_path, args, flag):
    result = _run("generate", "--out", tmp_path / "d", *args)
    assert result.exit_code == 2, result.output
    assert flag in result.output


def test_generate_exam_too_large_names_the_flag(tmp_path):
    result = _run("generate", "--corpus", _one_chapter(tmp_path), "--out", tmp_path / "d", "--exam-size", "5000",
                  "--quiet")
    assert result.exit_code == 2 and "--exam-size" in result.output


def test_llm_run_that_falls_short_exits_1(tmp_path):
    """A server that is not there: every call fails, the run stops short (resumable), exit 1, not 'bad --exam-size'."""
    out = tmp_path / "d"
    result = _run("generate", "--corpus", _one_chapter(tmp_path), "--out", out, "--api-base", "http://127.0.0.1:9/v1",
                  "--max-retries", "0", "--timeout", "1", "--target-per-chapter", "3", "--max-rounds", "1",
                  "--exam-size", "1", "--quiet")
    assert result.exit_code == 1, result.output
    assert "accepted 0 of 3 pairs" in result.output and "journal.jsonl" in result.output
    assert json.loads((out / "progress.json").read_text(encoding="utf-8"))["status"] == "incomplete"


def test_train_errors_name_the_profile_flag_or_file_line(tmp_path, tiny_model_dir):
    unknown = _run("train", "--profile", "fast_v99", "--data", "x.jsonl")
    assert unknown.exit_code == 2 and "--profile" in unknown.output and "fast_v7_long" in unknown.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora_r: 8\nlearning_rate: [\n", encoding="utf-8")
    assert f"{broken}:3" in _run("train", "--profile", broken, "--data", "x.jsonl").output
    typed = _run("train", "--profile", "tiny", "--lora-r", "0", "--data", "x.jsonl")
    assert typed.exit_code == 2 and "--lora-r" in typed.output
    wrong_type = _run("train", "--profile", "tiny", "--set", "lora_r=eight", "--data", "x.jsonl")
    assert wrong_type.exit_code == 2 and "--set lora_r" in wrong_type.output and "must be int" in wrong_type.output
    missing = _run("train", "--profile", "tiny", "--data", tmp_path / "none.jsonl")
    assert missing.exit_code == 2 and "--data" in missing.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": 3, "output": "b"}\n', encoding="utf-8")
    lined = _run("train", "--profile", "tiny", "--model", tiny_model_dir, "--data", bad,
                 "--output-dir", tmp_path / "run")
    assert lined.exit_code == 2 and f"{bad}:2" in lined.output


def test_eval_of_a_contaminated_exam_exits_1(tmp_path):
    rows = [{"instruction": f"什么是概念{i}？它为什么重要？", "input": "", "output": f"概念{i}是一种机制，编号{i}。"}
            for i in range(6)]
    exam = tmp_path / "exam.jsonl"
    exam.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = _run("eval", "--data", exam, "--train-data", exam, "--out", tmp_path / "e")
    assert result.exit_code == 1, result.output
    assert "contaminated" in result.output
    assert json.loads((tmp_path / "e" / "eval_results.json").read_text(encoding="utf-8"))["contaminated"] is True
    assert _run("eval", "--data", tmp_path / "none.jsonl").exit_code == 2


@pytest.mark.parametrize("args, flag", [
    (["bench", "--endpoint", "http://127.0.0.1:9", "--api", "grpc"], "--api"),
    (["bench", "--endpoint", "http://127.0.0.1:9", "--prompts", "/no/such.jsonl"], "--prompts"),
    (["bench", "--serve-model", "m", "--engine", "sglang"], "--engine"),
    (["convert", "/no/such.gguf", "--out", "/tmp/qaforge-never", "--dtype", "int3"], "--dtype"),
    (["split", "/no/such.jsonl"], "such.jsonl"),
])
def test_other_commands_refuse_bad_input_with_2(args, flag):
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert flag in result.output


def test_a_crash_exits_3_with_its_traceback(monkeypatch, capsys):
    """Through the real entry point: an error no command expected is neither 1 (shortfall) nor 2 (bad input)."""
    import qaforge.train.profiles as profiles
    from qaforge import cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(profiles, "list_profiles", broken)
    monkeypatch.setattr(sys, "argv", ["qaforge", "profiles"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 3
    assert "RuntimeError: a bug" in capsys.readouterr().err


def test_python_dash_m_qaforge_works(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qaforge", "--help"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "profiles" in proc.stdout and "generate" in proc.stdout
