"""`qaforge bench --grader EXAM`: the course grader's workload, timed, on one or more servers.

The whole exam list in one `POST /predict` (the grader's body: the prompt list only, so the
server's own answer budget), repeated for `rounds` rounds, output tokens counted with the model's
tokenizer as the course counts them. Several servers run one after another on the same list, so
their round times and tokens/s compare (the table's last column is the second over the first).
The protocol itself (readiness poll, the /predict call and its checks) is eval's grader simulator
(qaforge.evaluate.grader): one home for what the grader does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import httpx

from qaforge.dataset import read_records
from qaforge.evaluate.endpoint import TokenCounter
from qaforge.evaluate.exam import exam_items
from qaforge.evaluate.grader import _ask_all, api_key_headers, wait_until_ready


def exam_questions(path: str | Path, limit: int | None = None) -> list[str]:
    questions = [item.question for item in exam_items(read_records(path), limit)]
    if not questions:
        raise ValueError(f"{path}: no questions in the exam file")
    return questions


def grader_rounds(url: str, questions: list[str], rounds: int, count: TokenCounter, *,
                  chunk_size: int | None = None, ready_s: float = 420.0,
                  timeout_s: float = 3600.0) -> dict[str, Any]:
    """Time `rounds` grader rounds against one server; tokens per round from `count`."""
    url = url.rstrip("/")
    with httpx.Client(headers=api_key_headers()) as client:
        wait_until_ready(client, url, ready_s, 0.5)
        round_s, tokens, chars = [], [], []
        answers: list[str] = []
        for _ in range(rounds):
            started = time.perf_counter()
            answers, _ = _ask_all(client, url, "batch", questions, chunk_size, started + timeout_s)
            round_s.append(time.perf_counter() - started)
            counted = [count(a) for a in answers]
            tokens.append(None if None in counted else sum(counted))
            chars.append(sum(map(len, answers)))
    total_tokens = None if None in tokens else sum(tokens)
    return {
        "base_url": url, "questions": len(questions), "rounds": rounds, "round_s": round_s,
        "mean_round_s": sum(round_s) / rounds, "output_tokens_per_round": tokens,
        "output_chars_per_round": chars,
        "output_tokens_per_second": total_tokens / sum(round_s) if total_tokens is not None else None,
        "output_chars_per_second": sum(chars) / sum(round_s),
        "answers": answers,  # the last round's, in question order: servers compare answer by answer
    }


def run_grader_bench(urls: Sequence[str] = (), exam: str | Path = "", *, rounds: int = 3,
                     tokenizer: str | None = None, labels: Sequence[str] | None = None,
                     limit: int | None = None, chunk_size: int | None = None,
                     serve_model: str | None = None, engines: Sequence[str] = (),
                     out_dir: str | Path | None = None, progress: bool = True,
                     timeout: float = 3600.0) -> dict[str, Any]:
    """Grader rounds on each URL (or on a server per engine for `serve_model`); returns the report
    and, with `out_dir`, writes bench.json and bench.png."""
    from qaforge.bench.report import print_grader_table, write_grader_outputs

    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    if not urls and not (serve_model and engines):
        raise ValueError("give --endpoint URL (repeat it, or --compare URL, to compare), or "
                         "--serve-model PATH with --engine")
    questions = exam_questions(exam, limit)
    tokenizer = tokenizer or serve_model
    count = TokenCounter(tokenizer)
    names = list(labels or [])
    results = []
    targets = list(urls) or list(engines)
    for i, target in enumerate(targets):
        label = names[i] if i < len(names) else target
        if urls:
            result = grader_rounds(target, questions, rounds, count, chunk_size=chunk_size, timeout_s=timeout)
        else:
            from qaforge.serve.launcher import start_server
            server = start_server(serve_model, engine=target)
            try:
                result = grader_rounds(server.base_url, questions, rounds, count, chunk_size=chunk_size,
                                       timeout_s=timeout)
            finally:
                server.stop()
            result["engine"] = target
        results.append({"label": label, **result})
    if len(results) >= 2:
        a, b = results[0]["answers"], results[1]["answers"]
        results[1]["same_answers_as_first"] = sum(x == y for x, y in zip(a, b)) / len(a)
    report = {"config": {"mode": "grader", "exam": str(exam), "questions": len(questions), "rounds": rounds,
                         "tokenizer": tokenizer, "chunk_size": chunk_size, "endpoints": list(urls),
                         "engines": list(engines), "serve_model": serve_model,
                         "date": time.strftime("%Y-%m-%d %H:%M:%S")},
              "results": results}
    if progress:
        print_grader_table(report)
    if out_dir is not None:
        report["files"] = write_grader_outputs(report, Path(out_dir))
    return report
