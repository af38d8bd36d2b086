"""Markdown renderings of the three judge reports (the JSON files hold the same numbers and more)."""

from __future__ import annotations

from typing import Any


def _f(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + "…"


def _ci(p: dict[str, Any]) -> str:
    low, high = p["ci95"]
    return f"{p['rate']:.1%} [{low:.1%}, {high:.1%}] ({p['count']}/{p['n']})"


def _histogram(scores: dict[str, dict]) -> list[str]:
    lines = ["| criterion | mean | 1 | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|---|---|"]
    for name, row in scores.items():
        d = row["distribution"]
        lines.append(f"| {name} | {_f(row['mean'], 2)} | " + " | ".join(str(d[k]) for k in "12345") + " |")
    return lines


def _footer(report: dict[str, Any]) -> list[str]:
    u, f, r = report["usage"], report["failures"], report["run"]
    lines = ["", "## Calls, tokens, cost", "",
             f"- calls: {u['calls']} ({r['calls_reused']} reused from the journal, {r['calls_asked']} asked now), "
             f"HTTP attempts {u['attempts']}, retries this run {r['retries']}",
             f"- tokens: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion; cost {u['cost']:.4f} "
             f"(prices per 1k: {u['price_per_1k']['input']} in / {u['price_per_1k']['output']} out)",
             f"- response_format fallbacks: {r['response_format_fallbacks'] or 'none'}; wall time {r['wall_s']:.1f} s",
             "", "## Failures", "",
             f"- {f['total']} not judged: {f['parse']} unparseable replies (after one re-ask), {f['call']} failed calls; "
             f"{f['reasked']} re-asked, {f['repaired']} repaired with json-repair"]
    for item in f["items"][:10]:
        lines.append(f"  - `{item['item']}` ({item['kind']}): {_short(item['error'], 120)}")
    return lines + [""]


def render_dataset_report(report: dict[str, Any]) -> str:
    lines = [f"# Judge report: {report['dataset']}", "",
             f"Judge `{report['judge_model']}` scored {report['judged']} of {report['items']} QA pairs 1-5 "
             f"against their source chunks (prompts: `{report['prompts']}`).", "", "## Scores", ""]
    lines += _histogram(report["scores"])
    for key, title in (("by_difficulty", "difficulty"), ("by_chapter", "chapter")):
        lines += ["", f"| {title} | n | overall mean |", "|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['overall_mean']:.2f} |" for k, v in report[key].items()]
    lines += ["", "## Lowest-scored pairs", "", "| id | overall | reason |", "|---|---|---|"]
    lines += [f"| {x['id']} | {x['overall']:.2f} | {_short(x['reason'])} |" for x in report["lowest"]]
    return "\n".join(lines + _footer(report))


def render_answers_report(report: dict[str, Any]) -> str:
    lines = [f"# Judge report (answers): {report['eval_results']}", "",
             f"Judge `{report['judge_model']}` scored each system's answers 1-5 against the reference on "
             f"{report['questions']} questions.", "",
             "| system | judged | overall mean | " + " | ".join(f"{c} mean" for c in report["criteria"])
             + " | ROUGE-L mean | Spearman (judge vs ROUGE-L) | Kendall tau-b |",
             "|---|---|---|" + "---|" * len(report["criteria"]) + "---|---|---|"]
    for label, s in report["summary"].items():
        rc = s["rank_correlation"]
        lines.append(f"| {label} | {s['judged']} | {_f(s['scores']['overall']['mean'], 2)} | "
                     + " | ".join(_f(s["scores"][c]["mean"], 2) for c in report["criteria"])
                     + f" | {_f(s['rouge_l_mean'], 4)} | {_f(rc['spearman'])} | {_f(rc['kendall_tau_b'])} |")
    pooled = report["rank_correlation_pooled"]
    lines += ["", f"Pooled over systems (n = {pooled['n']}): Spearman {_f(pooled['spearman'])}, "
                  f"Kendall tau-b {_f(pooled['kendall_tau_b'])}.", ""]
    for label, s in report["summary"].items():
        lines += [f"### {label}", ""] + _histogram(s["scores"]) + [""]
    return "\n".join(lines + _footer(report))


def render_pairwise_report(report: dict[str, Any]) -> str:
    v, bias = report["a_vs_b"], report["position_bias"]
    lines = [f"# Judge report (pairwise): {report['a']} vs {report['b']}", "",
             f"Judge `{report['judge_model']}` compared the answers on {report['n']} of {report['questions']} "
             f"questions; {report['b']} was shown first on {report['swapped']} of them. "
             f"Intervals: {report['interval']}.", "",
             f"| {report['a']} vs {report['b']} | rate [95 % CI] (count/n) |", "|---|---|",
             f"| win | {_ci(v['win'])} |", f"| tie | {_ci(v['tie'])} |", f"| loss | {_ci(v['loss'])} |",
             f"| win among decisive | {_ci(report['a_win_rate_among_decisive'])} |", "",
             "## Position bias", "",
             f"- first-shown answer wins: {_ci(bias['first_position_wins'])} of decisive verdicts "
             f"({bias['note']})",
             f"- {report['a']} wins when shown first: {_ci(bias['a_wins_when_first'])}; "
             f"when shown second: {_ci(bias['a_wins_when_second'])}"]
    return "\n".join(lines + _footer(report))
