"""Pairwise mode: two systems of an eval run compared on the same questions by the judge.

Each question is judged once; on a seeded half of the questions system B is shown first. That split
gives the judge's position bias for free: an order-blind judge picks the first-shown answer in about
half of its decisive verdicts whichever system is better, so the first-position win rate (with its
Wilson 95 % interval) and the gap between "A wins when shown first" and "A wins when shown second"
measure how much the order sways it. Win/tie/loss of A against B carry Wilson 95 % intervals, one
per proportion (the score interval of a binomial proportion, sound at small n).

Writes judge_pairwise.jsonl and judge_pairwise_report.json/.md into the output folder.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from qaforge.dataset import write_jsonl
from qaforge.generate.llm_client import LLMOptions
from qaforge.judge.answers import resolve_results, pick_systems
from qaforge.judge.report import render_pairwise_report
from qaforge.judge.rubric import load_rubric
from qaforge.judge.runner import Task, run_tasks, write_report
from qaforge.judge.sources import InputError
from qaforge.judge.stats import proportion

PAIRWISE_FILE = "judge_pairwise.jsonl"


def swapped_indices(n: int, seed: int) -> set[int]:
    """Exactly n // 2 positions, drawn with the seed, where the second system is shown first."""
    return set(random.Random(f"pairwise-swap:{seed}").sample(range(n), n // 2))


def summarize_pairwise(rows: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    n = len(rows)
    outcome = {k: sum(1 for r in rows if r["outcome"] == k) for k in ("win", "tie", "loss")}
    decisive = [r for r in rows if r["verdict"] != "tie"]
    first_wins = sum(1 for r in decisive if r["verdict"] == "1")
    a_first = [r for r in rows if r["first"] == a]
    a_second = [r for r in rows if r["first"] == b]
    return {
        "a": a, "b": b, "n": n,
        "a_vs_b": {k: proportion(v, n) for k, v in outcome.items()},
        "a_win_rate_among_decisive": proportion(outcome["win"], outcome["win"] + outcome["loss"]),
        "position_bias": {
            "first_position_wins": proportion(first_wins, len(decisive)),
            "a_wins_when_first": proportion(sum(1 for r in a_first if r["outcome"] == "win"), len(a_first)),
            "a_wins_when_second": proportion(sum(1 for r in a_second if r["outcome"] == "win"), len(a_second)),
            "note": "0.5 first-position wins = order-blind; above 0.5 favours the first answer shown",
        },
        "interval": "Wilson score interval, 95 %, per proportion",
    }


def judge_pairwise(results: dict[str, Any] | Path, options: LLMOptions, systems: tuple[str, str] | None = None, *,
                   out_dir: Path | None = None, prompt_dir: Path | None = None, limit: int | None = None,
                   seed: int = 0, retry_failed: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Compare systems A and B (default: the last two systems of the run, e.g. base vs fine-tuned)."""
    started = time.monotonic()
    results, out_dir = resolve_results(results, out_dir)
    labels = pick_systems(results, list(systems) if systems else None, "--systems")
    if systems is None:
        labels = labels[-2:]
    if len(labels) != 2 or labels[0] == labels[1]:
        raise InputError(f"--systems: pairwise needs two different systems, got {labels}")
    a, b = labels
    samples = [s for s in (results["samples"][:limit] if limit else results["samples"])
               if a in s["predictions"] and b in s["predictions"]]
    rubric = load_rubric("pairwise", prompt_dir)
    swapped = swapped_indices(len(samples), seed)
    tasks, order = [], []
    for i, sample in enumerate(samples):
        first, second = (b, a) if i in swapped else (a, b)
        tasks.append(Task(f"{sample.get('index')}/{first}|{second}", rubric.messages(
            question=sample["question"], reference=sample["reference"],
            answer_1=sample["predictions"][first]["prediction"],
            answer_2=sample["predictions"][second]["prediction"])))
        order.append((first, second))
    run = run_tasks(tasks, options, rubric, out_dir, seed, retry_failed, show_progress)

    rows = []
    for sample, (first, second), entry in zip(samples, order, run.entries):
        if "verdict" not in entry:
            continue
        verdict = entry["verdict"]["winner"]
        winner = {"1": first, "2": second}.get(verdict, "tie")
        rows.append({"index": sample.get("index"), "a": a, "b": b, "first": first, "verdict": verdict,
                     "winner": winner, "outcome": "tie" if winner == "tie" else "win" if winner == a else "loss",
                     "reason": entry["verdict"]["reason"], "judge_model": options.model})
    write_jsonl(out_dir / PAIRWISE_FILE, rows)
    report = {
        "mode": "pairwise", "eval_results": results.get("data", ""), "judge_model": options.model,
        "questions": len(samples), "swapped": len(swapped), **summarize_pairwise(rows, a, b),
    }
    write_report(report, run, options, started, out_dir, PAIRWISE_FILE, "judge_pairwise_report", render_pairwise_report)
    return {**report, "rows": rows}
