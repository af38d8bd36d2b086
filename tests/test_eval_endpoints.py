"""Grader simulator and endpoint collection against a small real FastAPI server (uvicorn, real HTTP).

The server answers each question with a fixed answer map (or echoes the question), serves the grader API
in "batch" or "ok" mode, and an OpenAI-compatible /v1/chat/completions. Flags make it break the contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import model_dir_for_eval, quiet_console, serve_in_thread, write_jsonl
from fastapi import FastAPI, Request

from qaforge.evaluate.endpoint import collect_from_endpoint, detect_api
from qaforge.evaluate.grader import simulate_grader

EXAM = [
    {"instruction": "什么是 warp？", "input": "", "output": "warp 是 32 个线程组成的调度单位，在 SIMT 模式下执行。",
     "difficulty": "easy", "topic": "warp", "chapter": 4},
    {"instruction": "共享内存有什么作用？", "input": "", "output": "shared memory 是片上存储，用于线程块内的数据复用。",
     "difficulty": "medium", "topic": "memory", "chapter": 5},
    {"instruction": "如何声明 CUDA 核函数？", "input": "", "output": "用 __global__ 修饰函数，由主机端以 <<<grid, block>>> 启动。",
     "difficulty": "hard", "topic": "kernel", "chapter": 2},
]
ANSWERS = {row["instruction"]: row["output"] for row in EXAM}


def make_app(mode: str = "batch", loading_polls: int = 0, drop_last: bool = False, think: bool = False) -> FastAPI:
    app = FastAPI()
    polls = {"n": 0}

    def answer(question: str) -> str:
        text = ANSWERS.get(question, question)
        return f"<think>hmm</think>{text}" if think else text

    @app.get("/")
    def health():
        polls["n"] += 1
        return {"status": "loading" if polls["n"] <= loading_polls else mode}

    @app.post("/predict")
    async def predict(request: Request):
        prompt = (await request.json())["prompt"]
        if isinstance(prompt, list):
            answers = [answer(q) for q in prompt]
            return {"response": answers[:-1] if drop_last else answers}
        return {"response": answer(prompt)}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "fake-qa", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        question = body["messages"][-1]["content"]
        text = answer(question)
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "<think>\n\n</think>\n\n" + text}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(text), "total_tokens": 10 + len(text)}}

    return app


@pytest.fixture
def exam_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "exam.jsonl", EXAM)


@pytest.mark.parametrize("mode", ["batch", "ok"])
def test_grader_simulator_passes_a_correct_server_in_both_modes(mode: str, exam_file: Path, tmp_path: Path) -> None:
    console = quiet_console()
    with serve_in_thread(make_app(mode=mode, loading_polls=2)) as url:
        result = simulate_grader(url, exam_file, poll_s=0.05, repeat=2, out_dir=tmp_path, console=console)
    assert result["passed"], result["checks"]
    assert "PASS" in console.file.getvalue()
    assert result["mode"] == mode
    assert result["health_polls"] == 3  # two "loading" answers, then ready
    assert result["requests"] == (2 if mode == "batch" else 2 * len(EXAM))
    assert result["rouge_l"] == pytest.approx(1.0, abs=1e-6)  # the server returns the references
    saved = json.loads((tmp_path / "grader_results.json").read_text(encoding="utf-8"))
    assert saved["passed"] is True and saved["mode"] == mode


def test_grader_simulator_fails_a_server_that_drops_an_answer(exam_file: Path) -> None:
    with serve_in_thread(make_app(mode="batch", drop_last=True)) as url:
        result = simulate_grader(url, exam_file, poll_s=0.05, console=quiet_console())
    assert not result["passed"]
    assert any("got 2 answers" in c["detail"] for c in result["checks"] if c["verdict"] == "fail")


def test_grader_simulator_fails_think_blocks_and_a_missed_health_budget(exam_file: Path) -> None:
    with serve_in_thread(make_app(mode="batch", think=True)) as url:
        result = simulate_grader(url, exam_file, poll_s=0.05, console=quiet_console())
    assert not result["passed"]
    assert [c["check"] for c in result["checks"] if c["verdict"] == "fail"] == ["plain-text answers"]
    with serve_in_thread(make_app(mode="batch", loading_polls=1000)) as url:
        result = simulate_grader(url, exam_file, poll_s=0.05, health_budget_s=0.5, console=quiet_console())
    assert not result["passed"]
    assert "never said batch/ok" in result["checks"][-1]["detail"]


def test_collect_from_openai_endpoint_strips_think_and_keeps_order(exam_file: Path) -> None:
    questions = [row["instruction"] for row in EXAM]
    with serve_in_thread(make_app()) as url:
        collection = collect_from_endpoint(url, questions, "endpoint", concurrency=3, progress=False)
    assert collection.details["api"] == "openai" and collection.details["model"] == "fake-qa"
    assert [a.text for a in collection.answers] == [row["output"] for row in EXAM]
    assert all(a.latency_s is not None and a.latency_s > 0 for a in collection.answers)
    assert [a.output_tokens for a in collection.answers] == [len(row["output"]) for row in EXAM]


def test_collect_from_predict_endpoint_in_chunks(exam_file: Path) -> None:
    questions = [row["instruction"] for row in EXAM] + ["未知问题"]
    with serve_in_thread(make_app()) as url:
        collection = collect_from_endpoint(url + "/predict", questions, "endpoint", chunk_size=2, progress=False)
    assert collection.details["api"] == "predict"
    assert [a.text for a in collection.answers] == [row["output"] for row in EXAM] + ["未知问题"]


def test_detect_api_reads_the_url() -> None:
    assert detect_api("http://h:8000") == ("openai", "http://h:8000/v1")
    assert detect_api("http://h:8000/v1/") == ("openai", "http://h:8000/v1")
    assert detect_api("http://h:8000/predict") == ("predict", "http://h:8000/predict")
    assert detect_api("http://h:8000", "predict") == ("predict", "http://h:8000/predict")
    with pytest.raises(ValueError, match="http"):
        detect_api("h:8000")


@pytest.mark.parametrize("mode", ["batch", "ok"])
def test_grader_simulator_against_the_project_server(mode: str, exam_file: Path, tmp_path_factory,
                                                     request: pytest.FixtureRequest) -> None:
    """The real qaforge server (native engine, tiny model): batch as it announces, and forced one-by-one."""
    try:
        from qaforge.serve.app import create_app
        from qaforge.serve.settings import ServeSettings
    except ImportError as exc:
        pytest.skip(f"qaforge.serve is not importable yet: {exc}")
    model_dir = model_dir_for_eval(request, tmp_path_factory)
    app = create_app(ServeSettings(model=str(model_dir), device="cpu", max_tokens=8, warmup=False))
    with serve_in_thread(app) as url:
        result = simulate_grader(url, exam_file, mode=mode, poll_s=0.2, health_budget_s=120,
                                 console=quiet_console())
        if mode == "batch":  # the same server's OpenAI API, through the endpoint collector
            questions = [row["instruction"] for row in EXAM]
            collection = collect_from_endpoint(url, questions, "endpoint", max_tokens=8, progress=False)
            assert len(collection.answers) == len(EXAM)
            assert all(0 < (a.output_tokens or 0) <= 8 and a.latency_s for a in collection.answers)
    assert result["passed"], result["checks"]
    assert result["status"] == "batch" and result["mode"] == mode
    assert result["requests"] == (1 if mode == "batch" else len(EXAM))
    assert 0.0 <= result["rouge_l"] <= 1.0
