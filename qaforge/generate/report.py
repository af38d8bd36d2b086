"""report.json / report.md and the final rich summary table: the statistics the original course project
gave for its dataset (counts per chapter x difficulty, average lengths), plus rejections per rule,
duplicates, tokens, cost and time.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

from qaforge.dataset import DIFFICULTIES, QARecord, write_atomic, write_json


def dataset_stats(records: list[QARecord], titles: dict[int, str],
                  targets: dict[int, int] | None = None) -> dict[str, Any]:
    by_chapter: dict[str, dict[str, Any]] = {}
    grid: dict[int, Counter] = defaultdict(Counter)
    for r in records:
        grid[r.chapter][r.difficulty] += 1
    for number in sorted(set(grid) | set(titles)):
        row = {"title": titles.get(number, ""), **{d: grid[number][d] for d in DIFFICULTIES}}
        row["total"] = sum(grid[number].values())
        if targets and number in targets:
            row["target"] = targets[number]
        by_chapter[str(number)] = row
    total = len(records)
    by_difficulty = {d: sum(1 for r in records if r.difficulty == d) for d in DIFFICULTIES}
    return {
        "total": total,
        "by_chapter": by_chapter,
        "by_difficulty": by_difficulty,
        "difficulty_share": {d: round(n / total, 4) if total else 0.0 for d, n in by_difficulty.items()},
        "avg_answer_chars": {d: round(mean(len(r.answer) for r in records if r.difficulty == d), 1)
                             for d in DIFFICULTIES if by_difficulty[d]},
        "avg_question_chars": {d: round(mean(len(r.question) for r in records if r.difficulty == d), 1)
                               for d in DIFFICULTIES if by_difficulty[d]},
    }


def render_markdown(report: dict[str, Any]) -> str:
    s = report["dataset"]
    lines = [f"# Dataset report ({report['generator']}{', ' + report['model'] if report.get('model') else ''})", "",
             f"- QA pairs: **{s['total']}** (train {report['split']['train']}, exam {report['split']['exam']}, "
             f"dropped from train as exam look-alikes {report['split']['dropped_from_train']})",
             f"- wall time: {report['wall_time_s']:.1f} s", ""]
    has_target = any("target" in row for row in s["by_chapter"].values())
    lines += ["| chapter | title | easy | medium | hard | total |" + (" target |" if has_target else ""),
              "|---|---|---|---|---|---|" + ("---|" if has_target else "")]
    for number, row in s["by_chapter"].items():
        lines.append(f"| {number} | {row['title']} | {row['easy']} | {row['medium']} | {row['hard']} | {row['total']} |"
                     + (f" {row.get('target', '')} |" if has_target else ""))
    lines += ["", "| difficulty | count | share | avg answer chars | avg question chars |", "|---|---|---|---|---|"]
    for d in DIFFICULTIES:
        lines.append(f"| {d} | {s['by_difficulty'][d]} | {s['difficulty_share'][d]:.1%} | "
                     f"{s['avg_answer_chars'].get(d, 0)} | {s['avg_question_chars'].get(d, 0)} |")
    for title, key in (("Rules that produced items", "rules_fired"), ("Rejections per filter rule", "rejections"),
                       ("Duplicates dropped", "duplicates")):
        if report.get(key):
            lines += ["", f"## {title}", "", "| rule | count |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in report[key].items()]
    usage = report.get("usage")
    if usage:
        lines += ["", "## Tokens and cost", "", "| chapter | calls | prompt tokens | completion tokens | cost |",
                  "|---|---|---|---|---|"]
        for number, u in usage["by_chapter"].items():
            lines.append(f"| {number} | {u['calls']} | {u['prompt_tokens']} | {u['completion_tokens']} | {u['cost']:.4f} |")
        t = usage["total"]
        lines.append(f"| total | {t['calls']} | {t['prompt_tokens']} | {t['completion_tokens']} | {t['cost']:.4f} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    write_json(out_dir / "report.json", report)
    write_atomic(out_dir / "report.md", render_markdown(report))


def print_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["dataset"]
    table = Table(title=f"qaforge generate — {report['generator']}: {s['total']} QA pairs "
                        f"(train {report['split']['train']}, exam {report['split']['exam']})")
    for col in ("chapter", "title", "easy", "medium", "hard", "total", "target"):
        table.add_column(col, justify="left" if col == "title" else "right")
    for number, row in s["by_chapter"].items():
        table.add_row(number, row["title"][:40], *(str(row[d]) for d in DIFFICULTIES), str(row["total"]),
                      str(row.get("target", "")))
    table.add_row("all", "", *(str(s["by_difficulty"][d]) for d in DIFFICULTIES), str(s["total"]), "")
    console = Console(stderr=True)
    console.print(table)
    for key in ("rejections", "duplicates"):
        if report.get(key):
            console.print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in report[key].items()))
    if report.get("usage"):
        t = report["usage"]["total"]
        console.print(f"calls={t['calls']} prompt_tokens={t['prompt_tokens']} "
                      f"completion_tokens={t['completion_tokens']} cost={t['cost']:.4f}")
    console.print(f"wall time {report['wall_time_s']:.1f} s; report: {report['files']['report']}")
