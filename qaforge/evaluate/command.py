"""`qaforge eval`: the typer command. Heavy imports stay inside the function so `qaforge --help` is fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qaforge.exit_codes import bad_input, shortfall


def eval(  # noqa: A001 - the command is called "eval"
    data: Path = typer.Option(..., "--data", help="Exam file: alpaca JSONL {instruction,input,output,difficulty,"
                              "chapter} or {question,answer} lines; a .json list also works."),
    out: Path = typer.Option(Path("runs/eval"), "--out", help="Directory for eval_results.json, eval_report.md, "
                             "eval_rouge.png (grader mode: grader_results.json)."),
    model: Optional[str] = typer.Option(None, "--model", help="Local HF model directory (or cached name) to evaluate."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Running server to evaluate: an OpenAI base URL "
                                           "(http://host:8000 or .../v1) or the grader API (http://host:8000/predict)."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Untuned base model, evaluated as a baseline."),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Train file for the contamination check "
                                              "(default: train.jsonl beside the exam file, if present)."),
    grader: Optional[str] = typer.Option(None, "--grader", help="Simulate the course grader against this server "
                                         "(http://HOST:8000) instead of a normal evaluation."),
    max_tokens: int = typer.Option(384, "--max-tokens", min=1, help="Maximum new tokens per answer."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only the first N exam questions."),
    backend: str = typer.Option("auto", "--backend", help="Local generation: native (qaforge engine), hf "
                                "(transformers generate) or auto (native, hf if the engine is unavailable)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Questions generated together "
                                             "locally (default: 256 on a GPU, 16 on CPU)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", min=0.01, max=2.0,
                                             help="Local greedy decoding: penalty on tokens already in the prompt "
                                             "or answer (vLLM/HF semantics; 1.0 is off)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Also score the answers with an LLM judge at this "
                                        "OpenAI base URL (qaforge judge's answers rubric), beside ROUGE-L."),
    judge_model: str = typer.Option("judge", "--judge-model", help="Model name the judge server serves."),
    judge_api_key: str = typer.Option("", "--judge-api-key", envvar="QAFORGE_JUDGE_API_KEY",
                                      help="API key of the judge server."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System prompt for every question "
                                                "('' for none; default: the course grader's)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    endpoint_api: str = typer.Option("auto", "--endpoint-api", help="auto, openai or predict."),
    endpoint_model: Optional[str] = typer.Option(None, "--endpoint-model", help="Model name for the OpenAI API "
                                                 "(default: the first of /v1/models)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer directory for counting output "
                                            "tokens of /predict answers (throughput)."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Concurrent requests to an endpoint."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1, help="Grader mode: questions per batch "
                                             "request (default: all in one)."),
    repeat: int = typer.Option(1, "--repeat", min=1, help="Grader mode: send the question list this many times."),
    mode: str = typer.Option("auto", "--mode", help="Grader mode: auto (as GET / says), batch (one list) or ok "
                             "(one question per request)."),
    health_budget: float = typer.Option(420.0, "--health-budget", help="Grader mode: seconds for GET / to say "
                                        "batch/ok."),
    predict_budget: float = typer.Option(360.0, "--predict-budget", help="Grader mode: seconds for all answers."),
) -> None:
    """Score answers with ROUGE-L (LLaMA-Factory-identical) and the course metric, beside baselines; or simulate the grader.

    Exit 1: the exam overlaps the train file (contaminated), or the simulated grader did not pass."""
    from qaforge.dataset import DatasetFormatError

    if not data.is_file():
        bad_input(f"no such file: {data}", "--data")
    if grader:
        _simulate_grader(grader, data, limit=limit, chunk_size=chunk_size, repeat=repeat, mode=mode,
                         tokenizer=tokenizer, health_budget_s=health_budget, predict_budget_s=predict_budget, out_dir=out)
    if backend not in ("auto", "native", "hf"):
        raise typer.BadParameter("must be auto, native or hf", param_hint="--backend")
    if endpoint_api not in ("auto", "openai", "predict"):
        raise typer.BadParameter("must be auto, openai or predict", param_hint="--endpoint-api")
    from qaforge.evaluate.run import evaluate

    try:
        results = evaluate(data, out, model=model, endpoint=endpoint, base_model=base_model, train_data=train_data,
                 max_tokens=max_tokens, limit=limit, backend=backend, batch_size=batch_size,  # type: ignore[arg-type]
                 device=device, endpoint_api=endpoint_api, endpoint_model=endpoint_model,  # type: ignore[arg-type]
                 tokenizer=tokenizer, concurrency=concurrency, repetition_penalty=repetition_penalty,
                 **({} if system_prompt is None else {"system_prompt": system_prompt or None}))
        if judge:
            from qaforge.evaluate.judged import add_judge_scores

            add_judge_scores(results, out, base_url=judge, model=judge_model, api_key=judge_api_key,
                             concurrency=concurrency)
    except (DatasetFormatError, FileNotFoundError) as exc:
        bad_input(str(exc))
    if results.get("contaminated"):
        shortfall("scored, but the exam overlaps the train file (contaminated): these are not held-out scores")


def _simulate_grader(grader: str, data: Path, mode: str, **kwargs) -> None:
    """--grader: exit 0 when the simulated course grader passes, 1 when it does not, 2 on bad input."""
    from qaforge.dataset import DatasetFormatError
    from qaforge.evaluate.grader import simulate_grader

    if mode not in ("auto", "batch", "ok"):
        raise typer.BadParameter("must be auto, batch or ok", param_hint="--mode")
    try:
        result = simulate_grader(grader, data, mode=mode, **kwargs)
    except DatasetFormatError as exc:
        bad_input(str(exc))
    raise typer.Exit(0 if result["passed"] else 1)
