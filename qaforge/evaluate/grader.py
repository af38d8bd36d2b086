"""Grader simulator: what the course grader does to a server on port 8000, with its budgets.

1. Health: poll `GET /` until `{"status": "batch"}` or `{"status": "ok"}` (budget 420 s, load + warm-up).
2. Predict (budget 360 s): "batch" → all questions in one `POST /predict {"prompt": [...]}` (or in
   chunks, and repeated, as the course's imitation may do); "ok" → one question per request.
3. Checks: response types, one answer per question, order (a reversed probe must come back reversed),
   plain text (no think block, no special tokens), both budgets; then ROUGE-L of the answers.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from qaforge.dataset import read_records
from qaforge.evaluate.collect import Answer, Collection
from qaforge.evaluate.endpoint import TokenCounter
from qaforge.evaluate.exam import exam_items
from qaforge.evaluate.scoring import reference_tokens_of, score_samples, summarize

HEALTH_BUDGET_S = 420.0
PREDICT_BUDGET_S = 360.0
_NOT_PLAIN = re.compile(r"<think>|</think>|<\|[a-z_]+\|>")


def api_key_headers() -> dict[str, str]:
    """The bearer header a `qaforge serve --api-key` (with --protect-grader for the grader routes) wants,
    from the same QAFORGE_API_KEY the server reads; none when it is unset."""
    import os

    key = os.environ.get("QAFORGE_API_KEY", "")
    return {"Authorization": f"Bearer {key}"} if key else {}


class GraderFailure(RuntimeError):
    """The server broke the grader contract (wrong type, length, status)."""


def wait_until_ready(client: httpx.Client, url: str, budget_s: float, poll_s: float) -> tuple[str, float, int]:
    """(status, seconds waited, polls) once GET / says batch or ok; GraderFailure when the budget runs out."""
    started, polls, last = time.perf_counter(), 0, "no answer"
    while True:
        polls += 1
        try:
            reply = client.get(url + "/", timeout=max(1.0, poll_s * 5))
            if reply.status_code in (401, 403):  # waiting cannot help: the server wants a key
                raise GraderFailure(f"GET / answered {reply.status_code}: the server wants an API key "
                                    "(set QAFORGE_API_KEY to the server's --api-key)")
            status = reply.json().get("status") if reply.status_code == 200 else None
            if status in ("batch", "ok"):
                return status, time.perf_counter() - started, polls
            last = f"HTTP {reply.status_code}, status={status!r}"
        except (httpx.HTTPError, ValueError, AttributeError) as exc:  # not up yet, or not JSON yet
            last = type(exc).__name__
        if time.perf_counter() - started + poll_s > budget_s:
            raise GraderFailure(f"GET / never said batch/ok within {budget_s:.0f} s (last: {last})")
        time.sleep(poll_s)


def _post(client: httpx.Client, url: str, prompt: Any, deadline: float) -> Any:
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise GraderFailure("predict budget exhausted before all questions were sent")
    reply = client.post(url + "/predict", json={"prompt": prompt}, timeout=remaining)
    if reply.status_code != 200:
        raise GraderFailure(f"POST /predict returned HTTP {reply.status_code}: {reply.text[:200]}")
    body = reply.json()
    if not isinstance(body, dict) or "response" not in body:
        raise GraderFailure(f"POST /predict body has no 'response': {str(body)[:200]}")
    return body["response"]


def _ask_all(client: httpx.Client, url: str, mode: str, questions: list[str], chunk_size: int | None,
             deadline: float) -> tuple[list[str], list[float]]:
    """Answers in question order and the latency of every request."""
    answers: list[str] = []
    latencies: list[float] = []
    if mode == "ok":
        for question in questions:
            started = time.perf_counter()
            response = _post(client, url, question, deadline)
            latencies.append(time.perf_counter() - started)
            if not isinstance(response, str):
                raise GraderFailure(f"single mode: 'response' must be a string, got {type(response).__name__}")
            answers.append(response)
        return answers, latencies
    size = chunk_size or len(questions)
    for start in range(0, len(questions), size):
        chunk = questions[start:start + size]
        started = time.perf_counter()
        response = _post(client, url, chunk, deadline)
        latencies.append(time.perf_counter() - started)
        if not isinstance(response, list) or not all(isinstance(a, str) for a in response):
            raise GraderFailure(f"batch mode: 'response' must be a list of strings, got {str(response)[:200]}")
        if len(response) != len(chunk):
            raise GraderFailure(f"batch mode: sent {len(chunk)} questions, got {len(response)} answers")
        answers.extend(response)
    return answers, latencies


def _order_probe(client: httpx.Client, url: str, mode: str, questions: list[str], deadline: float) -> tuple[str, str]:
    """Send two different questions forward and reversed; the answers must swap with them."""
    if mode != "batch" or len(set(questions[:2])) < 2:
        return "pass", "single mode: one question per request, order cannot be mixed up"
    forward = _post(client, url, questions[:2], deadline)
    backward = _post(client, url, questions[:2][::-1], deadline)
    if backward == forward[::-1]:
        return "pass", "reversed questions came back with reversed answers"
    if forward[0] != forward[1] and backward == forward:
        return "fail", "answers did not follow the order of the questions"
    return "warn", "answers changed between identical requests (non-deterministic), order not provable"


def simulate_grader(url: str, data: Path, limit: int | None = None, chunk_size: int | None = None,
                    repeat: int = 1, mode: str = "auto", tokenizer: str | None = None, health_budget_s: float = HEALTH_BUDGET_S,
                    predict_budget_s: float = PREDICT_BUDGET_S, poll_s: float = 1.0, out_dir: Path | None = None,
                    console: Console | None = None) -> dict[str, Any]:
    """Run the grader's protocol against `url`; returns (and writes to out_dir/grader_results.json) the verdict.

    `mode="auto"` sends questions the way GET / asks; "batch" or "ok" forces one way (to exercise a
    server's single-question path although it announces batch).
    """
    if mode not in ("auto", "batch", "ok"):
        raise ValueError(f"mode must be auto, batch or ok, got {mode!r}")
    console = console or Console()
    url = url.rstrip("/")
    items = exam_items(read_records(data), limit)
    questions = [item.question for item in items]
    checks: list[dict[str, str]] = []
    result: dict[str, Any] = {"url": url, "data": str(data), "n": len(items), "repeat": repeat, "checks": checks}
    with httpx.Client(headers=api_key_headers()) as client:
        try:
            status, health_s, polls = wait_until_ready(client, url, health_budget_s, poll_s)
            mode = status if mode == "auto" else mode
            result |= {"status": status, "mode": mode, "health_s": health_s, "health_polls": polls}
            checks.append({"check": f"GET / status within {health_budget_s:.0f} s", "verdict": "pass",
                           "detail": f"status {status!r} after {health_s:.1f} s ({polls} polls)"})
            started = time.perf_counter()
            deadline = started + predict_budget_s
            all_latencies: list[float] = []
            for _ in range(repeat):
                answers, latencies = _ask_all(client, url, mode, questions, chunk_size, deadline)
                all_latencies += latencies
            predict_s = time.perf_counter() - started
            checks.append({"check": "response types and lengths", "verdict": "pass",
                           "detail": f"{len(answers)} strings for {len(questions)} questions x {repeat}"})
            verdict, detail = _order_probe(client, url, mode, questions, deadline)
            checks.append({"check": "answer order", "verdict": verdict, "detail": detail})
        except GraderFailure as exc:
            checks.append({"check": "protocol", "verdict": "fail", "detail": str(exc)})
            return _finish(result, console, out_dir)
    unclean = [i for i, a in enumerate(answers) if _NOT_PLAIN.search(a)]
    checks.append({"check": "plain-text answers", "verdict": "fail" if unclean else "pass",
                   "detail": f"{len(unclean)} answers carry <think> or special tokens" + (f" (first: #{unclean[0]})" if unclean else "")})
    checks.append({"check": f"predict stage within {predict_budget_s:.0f} s",
                   "verdict": "pass" if predict_s <= predict_budget_s else "fail", "detail": f"{predict_s:.1f} s"})
    count = TokenCounter(tokenizer)
    token_counts = [count(a) for a in answers]
    collection = Collection("server", url, [Answer(a, t, None) for a, t in zip(answers, token_counts)], predict_s / repeat)
    summary = summarize(items, collection, score_samples(items, collection, reference_tokens_of(items)))
    tokens = sum(t for t in token_counts if t is not None) * repeat if tokenizer else None
    result |= {
        "predict_s": predict_s, "requests": len(all_latencies),
        "latency_s": _latency_spread(all_latencies),
        "output_tokens": tokens, "output_tokens_per_s": tokens / predict_s if tokens else None,
        "output_chars_per_s": sum(map(len, answers)) * repeat / predict_s,
        "rouge_l": summary["metrics"]["rouge_l"], "course_rouge_l": summary["metrics"]["course_rouge_l"],
        "summary": summary,
        "answers": answers,  # the last round's, in question order: engines are compared answer by answer
    }
    return _finish(result, console, out_dir)


def _latency_spread(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"mean": sum(ordered) / len(ordered), "p50": ordered[len(ordered) // 2], "max": ordered[-1]} if ordered else {}


def _finish(result: dict[str, Any], console: Console, out_dir: Path | None) -> dict[str, Any]:
    result["passed"] = all(c["verdict"] != "fail" for c in result["checks"])
    table = Table(title=f"grader simulation: {result['url']} ({result['n']} questions, mode {result.get('mode', '?')})")
    for column in ("check", "verdict", "detail"):
        table.add_column(column)
    colours = {"pass": "green", "warn": "yellow", "fail": "bold red"}
    for c in result["checks"]:
        table.add_row(c["check"], f"[{colours[c['verdict']]}]{c['verdict']}[/]", c["detail"])
    console.print(table)
    if "rouge_l" in result:
        tps = result["output_tokens_per_s"]
        console.print(f"ROUGE-L {result['rouge_l']:.4f} | course ROUGE-L {result['course_rouge_l']:.4f} | "
                      f"health {result['health_s']:.1f} s | predict {result['predict_s']:.1f} s | "
                      + (f"{tps:.1f} output tokens/s" if tps else f"{result['output_chars_per_s']:.0f} chars/s "
                         "(pass --tokenizer for tokens/s)"))
    console.print("[bold green]PASS[/]" if result["passed"] else "[bold red]FAIL[/]")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / "grader_results.json"
        path.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
        result["output"] = str(path)
    return result
