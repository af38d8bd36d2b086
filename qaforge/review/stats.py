"""The review's results: human-verified accuracy and relevance with Wilson 95 % intervals, and how well
the LLM judge agrees with the people (when judge.jsonl exists), written to review_report.json / .md.

Definitions (also printed in the report): an item counts as *accurate* when its verdict is "accurate";
it is *relevant* unless its verdict is "off-topic" (an inaccurate answer to an on-topic question is still
relevant). The judge "passes" an item when its accuracy score is >= the pass mark (default 4 of 5).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from qaforge.dataset import write_atomic, write_json
from qaforge.review.journal import VERDICTS, ReviewState

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> dict[str, float | int | None]:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1] and is sane at n < 30."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "low": None, "high": None}
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"k": successes, "n": n, "rate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half)}


def judge_agreement(verdicts: dict[str, str], judge: dict[str, dict[str, Any]], pass_mark: float) -> dict | None:
    """Agreement of the judge's pass/fail on accuracy with people's accurate / not accurate, with Cohen's kappa."""
    pairs = []
    for item_id, verdict in verdicts.items():
        row = judge.get(item_id)
        score = (row or {}).get("scores", {}).get("accuracy")
        if isinstance(score, (int, float)):
            pairs.append((verdict == "accurate", score >= pass_mark))
    if not pairs:
        return None
    n = len(pairs)
    table = {"both_accept": sum(h and j for h, j in pairs), "both_reject": sum(not h and not j for h, j in pairs),
             "judge_only_accepts": sum(j and not h for h, j in pairs),
             "judge_only_rejects": sum(h and not j for h, j in pairs)}
    agree = table["both_accept"] + table["both_reject"]
    human_yes, judge_yes = sum(h for h, _ in pairs) / n, sum(j for _, j in pairs) / n
    chance = human_yes * judge_yes + (1 - human_yes) * (1 - judge_yes)
    kappa = None if chance >= 1 else (agree / n - chance) / (1 - chance)
    return {"n": n, "pass_mark": pass_mark, "agreement": wilson(agree, n), "cohen_kappa": kappa, "table": table}


def review_results(state: ReviewState, known_ids: set[str], sample: list[str],
                   judge: dict[str, dict[str, Any]], pass_mark: float = 4.0) -> dict[str, Any]:
    # Every judged item of this dataset counts, also ones outside today's sample (an earlier --sample).
    verdicts = {i: s.verdict for i, s in state.items.items() if s.verdict and i in known_ids}
    counts = {v: sum(1 for x in verdicts.values() if x == v) for v in VERDICTS}
    n = len(verdicts)
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reviewed": n, "sample_size": len(sample),
        "sample_reviewed": sum(1 for i in sample if i in verdicts), "counts": counts,
        "edited": sum(1 for i, s in state.items.items() if i in known_ids and (s.question or s.answer) is not None),
        "accuracy": wilson(counts["accurate"], n),
        "relevance": wilson(n - counts["off-topic"], n),
        "judge_agreement": judge_agreement(verdicts, judge, pass_mark) if judge else None,
        "definitions": __doc__.split("Definitions (also printed in the report): ")[1].strip(),
    }


def _pct(interval: dict[str, Any]) -> str:
    if interval["rate"] is None:
        return "— (nothing reviewed yet)"
    return (f"{100 * interval['rate']:.1f} % ({interval['k']}/{interval['n']}; Wilson 95 % "
            f"{100 * interval['low']:.1f}–{100 * interval['high']:.1f} %)")


def render_markdown(results: dict[str, Any], folder: Path) -> str:
    c = results["counts"]
    lines = [f"# Human review of `{folder}`", "",
             f"Reviewed {results['reviewed']} items ({results['sample_reviewed']} of the {results['sample_size']}-item "
             f"stratified sample); {results['edited']} edited.", "",
             "| measure | value |", "|---|---|",
             f"| human-verified accuracy | {_pct(results['accuracy'])} |",
             f"| human-verified relevance | {_pct(results['relevance'])} |",
             f"| verdicts | accurate {c['accurate']}, inaccurate {c['inaccurate']}, off-topic {c['off-topic']} |"]
    agreement = results["judge_agreement"]
    if agreement:
        t, kappa = agreement["table"], agreement["cohen_kappa"]
        lines += [f"| judge agreement (accuracy >= {agreement['pass_mark']:g}) | {_pct(agreement['agreement'])}, "
                  f"Cohen's kappa {'—' if kappa is None else f'{kappa:.2f}'} |",
                  f"| judge vs people | both accept {t['both_accept']}, both reject {t['both_reject']}, "
                  f"judge alone accepts {t['judge_only_accepts']}, judge alone rejects {t['judge_only_rejects']} |"]
    else:
        lines.append("| judge agreement | — (no judge.jsonl, or no reviewed item was judged) |")
    return "\n".join(lines + ["", results["definitions"], ""])


def write_report(results: dict[str, Any], folder: Path) -> dict[str, str]:
    paths = {"json": folder / "review_report.json", "md": folder / "review_report.md"}
    write_json(paths["json"], results)
    write_atomic(paths["md"], render_markdown(results, folder))
    return {k: str(v) for k, v in paths.items()}
