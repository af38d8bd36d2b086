"""eval_rouge.png: ROUGE-L overall, by difficulty and by chapter, every system beside the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window (CI, servers, the device machine)
import matplotlib.pyplot as plt  # noqa: E402


def _grouped_bars(ax, groups: list[str], systems: list[dict[str, Any]], values) -> None:
    width = 0.8 / len(systems)
    for k, system in enumerate(systems):
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(groups))]
        heights = [values(system, g) for g in groups]
        bars = ax.bar(xs, [h or 0.0 for h in heights], width, label=system["label"])
        ax.bar_label(bars, labels=["" if h is None else f"{h:.3f}" for h in heights], fontsize=7, rotation=90,
                     padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.15 * max([values(s, g) or 0.0 for s in systems for g in groups] + [0.1]))


def _groups(systems: list[dict[str, Any]], key: str) -> list[str]:
    names: list[str] = []
    for system in systems:
        names += [g for g in system[key] if g not in names]
    return names


def build_figure(results: dict[str, Any]) -> plt.Figure:
    """Three panels of grouped, value-labelled bars: overall (both metrics), by difficulty, by chapter."""
    systems = results["systems"]
    judge = (results.get("judge") or {}).get("summary") or {}
    ratios = [1.2, 1.5, 3] + ([1.0] if judge else [])
    fig, axes = plt.subplots(1, len(ratios), figsize=(16 + 3 * bool(judge), 5), gridspec_kw={"width_ratios": ratios})
    metric_names = {"rouge_l": "ROUGE-L\n(rouge-chinese)", "course_rouge_l": "course ROUGE-L\n(Latin tokens only)"}
    _grouped_bars(axes[0], list(metric_names), systems, lambda s, m: s["metrics"][m])
    axes[0].set_xticks(range(len(metric_names)), list(metric_names.values()))
    axes[0].set_title("Overall")
    axes[0].set_ylabel("F-measure")
    for ax, key, title in ((axes[1], "by_difficulty", "ROUGE-L by difficulty"),
                           (axes[2], "by_chapter", "ROUGE-L by chapter")):
        _grouped_bars(ax, _groups(systems, key), systems,
                      lambda s, g, key=key: s[key][g]["rouge_l"] if g in s[key] else None)
        ax.set_title(title)
    axes[2].set_xlabel("chapter")
    if judge:  # `qaforge eval --judge`: the judge's mean overall score beside ROUGE-L
        labels = list(judge)
        bars = axes[3].bar(labels, [judge[k]["scores"]["overall"]["mean"] for k in labels], color="tab:purple")
        axes[3].bar_label(bars, fmt="%.2f", fontsize=8)
        axes[3].set_ylim(0, 5.5)
        axes[3].set_title(f"LLM judge ({results['judge']['model']})")
        axes[3].tick_params(axis="x", labelrotation=30)
    axes[0].legend(fontsize=8, loc="upper left")
    headline = "CONTAMINATED exam — " if (results.get("contamination") or {}).get("contaminated") else ""
    fig.suptitle(f"{headline}{Path(results['data']).name}: {results['n']} questions")
    fig.tight_layout()
    return fig


def plot_rouge(results: dict[str, Any], path: Path) -> Path:
    fig = build_figure(results)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
