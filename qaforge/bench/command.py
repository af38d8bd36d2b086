"""`qaforge bench`: load-test one or more endpoints, or compare engines serving one model."""

from __future__ import annotations

from typing import List, Optional

import typer

from qaforge.exit_codes import bad_input


def bench(
    endpoint: List[str] = typer.Option([], "--endpoint", "--url", help="base URL to test (repeat to compare)"),
    compare: Optional[str] = typer.Option(None, help="a second base URL to compare with the first"),
    grader: Optional[str] = typer.Option(None, help="grader mode: this exam file (alpaca .jsonl/.json) in "
                                                    "one /predict per round, the server's answer budget"),
    rounds: int = typer.Option(3, help="grader mode: rounds (the course repeats the list x3)"),
    limit: Optional[int] = typer.Option(None, help="grader mode: the first N exam questions only"),
    chunk_size: Optional[int] = typer.Option(None, help="grader mode: questions per /predict (default: all)"),
    label: List[str] = typer.Option([], help="name for each endpoint/engine, in order"),
    serve_model: Optional[str] = typer.Option(None, help="start a server for this model per --engine"),
    engine: List[str] = typer.Option([], help="native | vllm (repeat), with --serve-model"),
    api: str = typer.Option("chat", help="chat | completions | predict"),
    model: Optional[str] = typer.Option(None, help="served model name (default: from /v1/models)"),
    num_requests: int = typer.Option(100, "--num-requests", "-n", help="requests to send"),
    request_rate: Optional[float] = typer.Option(None, help="Poisson arrivals per second (default: all at once)"),
    concurrency: Optional[int] = typer.Option(None, help="at most this many requests in flight"),
    prompts: str = typer.Option("random", help="'random' or a .json/.jsonl file of questions"),
    prompt_words: int = typer.Option(24, help="words per random prompt"),
    max_tokens: int = typer.Option(64, help="answer budget per request"),
    temperature: float = typer.Option(0.0, help="sampling temperature"),
    ignore_eos: bool = typer.Option(False, help="always generate max_tokens (fixed output length)"),
    predict_batch: int = typer.Option(1, help="questions per /predict request"),
    tokenizer: Optional[str] = typer.Option(None, help="tokenizer to count /predict answer tokens"),
    seed: int = typer.Option(0, help="prompt order / arrival seed"),
    out_dir: str = typer.Option("runs/bench", help="where bench.json and bench.png go"),
    timeout: float = typer.Option(600.0, help="seconds per request"),
) -> None:
    """Measure TTFT, TPOT, ITL, end-to-end latency, requests/s and output tokens/s (exit 1 if a request
    failed); with --grader, the course grader's rounds (exam list in one /predict, round times, tokens/s, the ratio)."""
    from qaforge.bench.load import APIS, dataset_prompts, run_bench

    endpoint = list(endpoint) + ([compare] if compare else [])
    if not endpoint and not (serve_model and engine):
        bad_input("give --endpoint URL (repeatable), or --serve-model PATH with --engine")
    if grader:
        return _grader(endpoint, grader, rounds=rounds, tokenizer=tokenizer, labels=label or None, limit=limit,
                       chunk_size=chunk_size, serve_model=serve_model, engines=engine, out_dir=out_dir,
                       timeout=timeout)
    if api not in APIS:
        bad_input(f"must be one of {', '.join(APIS)}, got {api!r}", "--api")
    if any(name not in ("native", "vllm") for name in engine):
        bad_input(f"must be native or vllm, got {engine}", "--engine")
    if prompts != "random":
        try:  # read once up front, so a bad file is named before any server starts
            dataset_prompts(prompts, 1)
        except (OSError, ValueError) as exc:
            bad_input(f"{prompts}: {exc}" if prompts not in str(exc) else str(exc), "--prompts")
    try:
        report = run_bench(endpoint, labels=label or None, api=api, model=model,
                           num_requests=num_requests, request_rate=request_rate,
                           concurrency=concurrency, prompts=prompts, prompt_words=prompt_words,
                           max_tokens=max_tokens, temperature=temperature, predict_batch=predict_batch,
                           seed=seed, tokenizer=tokenizer, serve_model=serve_model, engines=engine,
                           out_dir=out_dir, timeout=timeout, ignore_eos=ignore_eos)
    except (ValueError, FileNotFoundError) as exc:
        bad_input(str(exc))
    typer.echo(f"wrote {report['files']['json']} and {report['files']['png']}")
    if any(r["failed"] for r in report["results"]):
        raise typer.Exit(1)


def _grader(endpoint: list[str], exam: str, **kwargs) -> None:
    from qaforge.bench.grader_mode import run_grader_bench
    from qaforge.evaluate.grader import GraderFailure

    try:
        report = run_grader_bench(endpoint, exam, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        bad_input(str(exc), "--grader")
    except GraderFailure as exc:  # the server broke the grader contract: say so, fail the run
        typer.echo(f"grader bench failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {report['files']['json']} and {report['files']['png']}")
