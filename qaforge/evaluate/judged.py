"""`qaforge eval --judge URL`: LLM-judge scores beside ROUGE-L in the same eval run.

The judge (qaforge/judge/answers.py, over any OpenAI-compatible server) scores each system's answers against
the reference; its mean scores, per-question overall score and rank correlation with ROUGE-L go into
eval_results.json, a section of eval_report.md and a panel of eval_rouge.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def add_judge_scores(results: dict[str, Any], out_dir: Path, *, base_url: str, model: str, api_key: str = "",
                     systems: list[str] | None = None, concurrency: int = 8, show_progress: bool = True) -> dict:
    """Judge `results` (what `evaluate()` returned), write the run's files again with the scores; returns them."""
    from qaforge.evaluate.plot import plot_rouge
    from qaforge.evaluate.report import render_report
    from qaforge.generate.llm_client import LLMOptions
    from qaforge.judge.answers import judge_answers

    out_dir = Path(out_dir)
    options = LLMOptions(concurrency=concurrency, temperature=0.0, max_tokens=512)
    options.base_url, options.model, options.api_key = base_url, model, api_key or options.api_key or "none"
    report = judge_answers(results, options, systems=systems, out_dir=out_dir, show_progress=show_progress)
    for label, rows in report["per_question"].items():
        for sample, row in zip(results["samples"], rows):
            if row is not None:
                sample["predictions"][label]["judge_overall"] = row["overall"]
    results["judge"] = {"model": model, "summary": report["summary"],
                        "report": str(out_dir / "judge_answers_report.json")}
    outputs = results["outputs"]
    Path(outputs["results"]).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    Path(outputs["report"]).write_text(render_report(results) + judge_section(results), encoding="utf-8")
    plot_rouge(results, Path(outputs["plot"]))
    return results


def judge_section(results: dict[str, Any]) -> str:
    judge = results.get("judge")
    if not judge:
        return ""
    lines = ["", f"## LLM judge ({judge['model']})", "",
             "| system | judged | overall (1-5) | Spearman vs ROUGE-L | Kendall tau-b |", "|---|---|---|---|---|"]
    for label, s in judge["summary"].items():
        rank = s.get("rank_correlation") or {}
        lines.append(f"| {label} | {s.get('judged', 0)} | {s['scores']['overall']['mean']:.2f} | "
                     f"{_num(rank.get('spearman'))} | {_num(rank.get('kendall_tau_b'))} |")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
