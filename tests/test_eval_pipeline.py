"""evaluate() end to end on a real (tiny) Qwen3 model: outputs, baselines, breakdowns, contamination, plot, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from eval_helpers import model_dir_for_eval, quiet_console, write_jsonl
from typer.testing import CliRunner

from qaforge.dataset import read_records
from qaforge.evaluate.collect import collect_from_model, pick_backend, question_as_answer
from qaforge.evaluate.command import eval as eval_command
from qaforge.evaluate.exam import exam_items
from qaforge.evaluate.plot import build_figure
from qaforge.evaluate.run import evaluate
from qaforge.evaluate.scoring import reference_tokens_of, score_samples, summarize

SHARED_QA = Path(__file__).resolve().parents[1].parent / "shared" / "seed_data" / "pmpp_qa_v2.jsonl"

EXAM = [
    {"instruction": q, "input": "", "output": a, "difficulty": d, "topic": "t", "chapter": c}
    for q, a, d, c in [
        ("什么是 warp？", "warp 是 32 个线程组成的调度单位。", "easy", 4),
        ("共享内存有什么作用？", "shared memory 用于线程块内的数据复用，延迟低。", "easy", 5),
        ("如何声明 CUDA 核函数？", "用 __global__ 修饰函数，由主机端启动。", "medium", 2),
        ("什么是全局内存合并访问？", "同一 warp 的线程访问连续地址时合并为少量事务。", "medium", 5),
        ("解释 CUDA 动态并行。", "核函数可以在设备端启动子核函数。", "hard", 13),
        ("卷积中为什么使用常量内存存放掩码？", "掩码只读且被所有线程访问，常量缓存可以广播。", "hard", 7),
    ]
]
TRAIN = [
    {"instruction": "线程块的最大线程数是多少？", "input": "", "output": "当前架构上是 1024 个线程。"},
    {"instruction": "解释CUDA动态并行", "input": "", "output": "另一种措辞的答案。"},  # planted: exam #4
]


@pytest.fixture(scope="module")
def eval_model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir_for_eval(request, tmp_path_factory)


def test_evaluate_writes_results_report_and_plot(eval_model_dir: Path, tmp_path: Path) -> None:
    exam = write_jsonl(tmp_path / "exam.jsonl", EXAM)
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    console = quiet_console()
    results = evaluate(exam, tmp_path / "out", model=str(eval_model_dir), base_model=str(eval_model_dir),
                       train_data=train, max_tokens=12, backend="hf", batch_size=4, progress=False,
                       console=console)
    labels = [s["label"] for s in results["systems"]]
    assert labels == ["question-as-answer", "base (untuned)", "fine-tuned"]
    for name in ("eval_results.json", "eval_report.md", "eval_rouge.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "eval_results.json").read_text(encoding="utf-8"))
    tuned = saved["systems"][-1]
    assert list(tuned["by_difficulty"]) == ["easy", "medium", "hard"]
    assert list(tuned["by_chapter"]) == ["2", "4", "5", "7", "13"]  # numeric order, not text order
    assert tuned["by_chapter"]["5"]["n"] == 2
    assert len(tuned["worst"]) == len(EXAM)  # fewer than 10 samples: all of them, worst first
    assert tuned["lengths"]["output_tokens"]["max"] <= 12
    assert tuned["details"]["backend"] == "hf"
    assert set(saved["samples"][0]["predictions"]) == set(labels)
    # The planted duplicate is caught and the report says so in its very first line.
    assert saved["contaminated"] is True and saved["contamination"]["contaminated_exam_items"] == 1
    report = (tmp_path / "out" / "eval_report.md").read_text(encoding="utf-8")
    assert report.splitlines()[0].startswith("# CONTAMINATED: 1 of 6 exam items")
    assert "course ROUGE-L" in report and "[a-z0-9]" in report
    printed = console.file.getvalue()
    assert "CONTAMINATED" in printed and "question-as-answer" in printed
    assert (tmp_path / "out" / "eval_rouge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_has_labelled_bars_for_every_system_and_group(tmp_path: Path) -> None:
    exam = write_jsonl(tmp_path / "exam.jsonl", EXAM)
    results = evaluate(exam, tmp_path / "out", progress=False, console=quiet_console())
    fig = build_figure(results)
    overall, by_difficulty, by_chapter = fig.axes
    assert [len(ax.containers) for ax in fig.axes] == [1, 1, 1]  # one system: the baseline alone
    assert [t.get_text() for t in by_difficulty.get_xticklabels()] == ["easy", "medium", "hard"]
    assert len(by_chapter.containers[0]) == 5
    value_labels = [t.get_text() for t in by_difficulty.texts]
    expected = [f"{results['systems'][0]['by_difficulty'][d]['rouge_l']:.3f}" for d in ("easy", "medium", "hard")]
    assert value_labels == expected


def test_hf_left_padded_batches_match_one_by_one_generation(eval_model_dir: Path) -> None:
    questions = ["短问题？", "一个长得多的问题，用来让左填充真正发挥作用：共享内存和全局内存在延迟上有何区别？", "warp"]
    batched = collect_from_model(str(eval_model_dir), questions, "b", max_tokens=8, backend="hf", batch_size=3,
                                 progress=False)
    single = collect_from_model(str(eval_model_dir), questions, "s", max_tokens=8, backend="hf", batch_size=1,
                                progress=False)
    assert [(a.text, a.output_tokens, a.finish_reason) for a in batched.answers] == \
           [(a.text, a.output_tokens, a.finish_reason) for a in single.answers]


def test_native_engine_matches_hf_fallback_when_available(eval_model_dir: Path) -> None:
    if pick_backend("auto") != "native":
        pytest.skip("qaforge.engine is not importable yet; backend auto falls back to hf")
    questions = ["什么是 warp？", "共享内存有什么作用？"]
    native = collect_from_model(str(eval_model_dir), questions, "n", max_tokens=8, backend="native", progress=False)
    hf = collect_from_model(str(eval_model_dir), questions, "h", max_tokens=8, backend="hf", progress=False)
    assert [a.text for a in native.answers] == [a.text for a in hf.answers]


def test_question_as_answer_scores_higher_on_the_course_metric_on_real_data() -> None:
    if not SHARED_QA.exists():
        pytest.skip(f"shared seed data not found at {SHARED_QA}")
    items = exam_items(read_records(SHARED_QA), limit=60)
    baseline = question_as_answer([item.question for item in items])
    metrics = summarize(items, baseline, score_samples(items, baseline, reference_tokens_of(items)))["metrics"]
    # Questions repeat the answers' English terms, which is all the course metric sees.
    assert 0.05 < metrics["rouge_l"] < metrics["course_rouge_l"] < 0.6


def test_cli_writes_outputs_and_reports_bad_lines(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("other")(lambda: None)  # two commands, so typer keeps "eval" as a subcommand
    exam = write_jsonl(tmp_path / "exam.jsonl", EXAM)
    ok = CliRunner().invoke(app, ["eval", "--data", str(exam), "--out", str(tmp_path / "out"), "--limit", "3"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text(encoding="utf-8"))["n"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q2"}\n', encoding="utf-8")
    failed = CliRunner().invoke(app, ["eval", "--data", str(bad), "--out", str(tmp_path / "out2")])
    assert failed.exit_code == 2
    assert f"{bad}:2" in failed.output and "missing field" in failed.output
