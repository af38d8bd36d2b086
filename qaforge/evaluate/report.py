"""eval_report.md: every system beside the baselines, breakdowns, lengths, timings, worst samples.

The first line states contamination when the exam overlaps the train file, so a contaminated number
cannot be quoted without its warning.
"""

from __future__ import annotations

from typing import Any

from qaforge.evaluate.contamination import contamination_headline
from qaforge.evaluate.course_metric import WHAT_IT_IGNORES

METRIC_NOTE = (
    "ROUGE-L / ROUGE-1 / ROUGE-2 are LLaMA-Factory's `ComputeSimilarity` numbers (jieba words, rouge-chinese "
    "F-measure, per sample then averaged), as fractions (LLaMA-Factory prints them x100); BLEU-4 is its "
    "character BLEU-4. "
)


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + "…"


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("—" if value is None else str(value))


def _breakdown_table(systems: list[dict[str, Any]], key: str, title: str) -> list[str]:
    groups: list[str] = []
    for system in systems:
        groups += [g for g in system[key] if g not in groups]
    header = f"| {title} | n | " + " | ".join(f"{s['label']} ROUGE-L / course" for s in systems) + " |"
    lines = [header, "|" + "---|" * (len(systems) + 2)]
    for group in groups:
        n = next(s[key][group]["n"] for s in systems if group in s[key])
        cells = [f"{s[key][group]['rouge_l']:.4f} / {s[key][group]['course_rouge_l']:.4f}"
                 if group in s[key] else "—" for s in systems]
        lines.append(f"| {group} | {n} | " + " | ".join(cells) + " |")
    return lines


def render_report(results: dict[str, Any]) -> str:
    systems: list[dict[str, Any]] = results["systems"]
    contamination = results.get("contamination")
    headline = contamination_headline(contamination)
    if contamination and contamination["contaminated"]:
        lines = [f"# {headline}", ""]
    else:
        lines = [f"# Evaluation report: {results['data']}", "", headline, ""]
    lines += [f"Exam: `{results['data']}` ({results['n']} questions). Evaluated: **{systems[-1]['label']}** "
              f"(`{systems[-1]['source']}`).", "", "## Scores", "",
              "| system | ROUGE-L (rouge-chinese) | course ROUGE-L (rouge_score) | ROUGE-1 | ROUGE-2 | BLEU-4 |",
              "|---|---|---|---|---|---|"]
    for s in systems:
        m = s["metrics"]
        lines.append(f"| {s['label']} | {m['rouge_l']:.4f} | {m['course_rouge_l']:.4f} | {m['rouge_1']:.4f} | "
                     f"{m['rouge_2']:.4f} | {m['bleu_4']:.4f} |")
    lines += ["", METRIC_NOTE + WHAT_IT_IGNORES, "", "## By difficulty", ""]
    lines += _breakdown_table(systems, "by_difficulty", "difficulty")
    lines += ["", "## By chapter", ""]
    lines += _breakdown_table(systems, "by_chapter", "chapter")
    lines += ["", "## Answer lengths and timing", "",
              "| system | answer chars mean / p50 / p90 / max | output tokens mean | truncated | empty | "
              "wall s | latency p50 / p90 s | output tokens/s |", "|---|---|---|---|---|---|---|---|"]
    for s in systems:
        ln, tm = s["lengths"], s["timing"]
        chars = ln["answer_chars"]
        latency = tm.get("latency_s")
        latency_cell = f"{latency['p50']:.2f} / {latency['p90']:.2f}" if latency else "—"
        lines.append(
            f"| {s['label']} | {chars['mean']:.0f} / {chars['p50']:.0f} / {chars['p90']:.0f} / {chars['max']:.0f} | "
            f"{_fmt(ln.get('output_tokens', {}).get('mean'), 1)} | {ln['truncated_share']:.0%} | {ln['empty_answers']} | "
            f"{tm['wall_s']:.1f} | {latency_cell} | "
            f"{_fmt(tm.get('output_tokens_per_s'), 1)} |")
    lines += ["", f"Reference answers average {systems[0]['lengths']['reference_chars_mean']:.0f} characters.", ""]
    if contamination and contamination["overlaps"]:
        lines += ["## Contamination details", "", "| exam # | train # | field | kind | similarity | exam text |",
                  "|---|---|---|---|---|---|"]
        for o in contamination["overlaps"][:20]:
            lines.append(f"| {o['exam_index']} | {o['train_index']} | {o['field']} | {o['kind']} | "
                         f"{o['similarity']:.2f} | {_short(o['exam_text'], 80)} |")
        lines.append("")
    primary = systems[-1]
    lines += [f"## {len(primary['worst'])} worst samples of {primary['label']} (by ROUGE-L)", "",
              "| # | ROUGE-L | course | question | reference | prediction |", "|---|---|---|---|---|---|"]
    for w in primary["worst"]:
        lines.append(f"| {w['index']} | {w['rouge_l']:.4f} | {w['course_rouge_l']:.4f} | {_short(w['question'], 80)} | "
                     f"{_short(w['reference'])} | {_short(w['prediction'])} |")
    return "\n".join(lines) + "\n"
