"""`qaforge bench` output: a rich comparison table, bench.json and bench.png."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

# (row label, key, sub-key, scale, format): latencies are shown in milliseconds.
_ROWS = [
    ("completed / requests", None, None, 1, ""),
    ("requests/s", "requests_per_second", None, 1, "{:.2f}"),
    ("output tokens/s", "output_tokens_per_second", None, 1, "{:.1f}"),
    ("output tokens", "output_tokens", None, 1, "{:d}"),
    ("wall s", "wall_seconds", None, 1, "{:.2f}"),
] + [(f"{name} {p} ms", key, p, 1000, "{:.1f}")
     for name, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("e2e", "e2e_s"))
     for p in ("p50", "p90", "p99")]


def _value(result: dict[str, Any], key: str | None, sub: str | None, scale: float) -> float | None:
    if key is None:
        return None
    value = result.get(key)
    if sub is not None:
        value = (value or {}).get(sub)
    return None if value is None else value * scale


def _cell(result: dict[str, Any], row: tuple) -> str:
    label, key, sub, scale, fmt = row
    if key is None:
        return f"{result['completed']} / {result['requests']}"
    value = _value(result, key, sub, scale)
    if value is None:
        return "–"
    return fmt.format(int(value)) if fmt == "{:d}" else fmt.format(value)


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    results = report["results"]
    cfg = report["config"]
    title = (f"qaforge bench: {cfg['api']}, {cfg['num_requests']} requests, max_tokens "
             f"{cfg['max_tokens']}, rate {cfg['request_rate'] or 'inf'}, concurrency "
             f"{cfg['concurrency'] or 'unbounded'}")
    table = Table(title=title)
    table.add_column("metric")
    for r in results:
        table.add_column(r["label"], justify="right")
    if len(results) == 2:
        table.add_column(f"{results[1]['label']} / {results[0]['label']}", justify="right")
    for row in _ROWS:
        cells = [_cell(r, row) for r in results]
        if len(results) == 2:
            a, b = (_value(r, row[1], row[2], row[3]) for r in results)
            cells.append(f"{b / a:.2f}×" if a and b is not None else "–")
        table.add_row(row[0], *cells)
    Console().print(table)
    for r in results:
        if r["failed"]:
            Console().print(f"[red]{r['label']}: {r['failed']} failed, statuses {r['statuses']}, "
                            f"e.g. {r['errors'][:2]}[/red]")


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def write_outputs(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "bench.json", out_dir / "bench.png"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plot(report, png_path)
    return {"json": str(json_path), "png": str(png_path)}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    labels = [r["label"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.bar(labels, [r["output_tokens_per_second"] for r in results], color="tab:blue")
    ax.set_title("output tokens/s (higher is better)")
    for i, r in enumerate(results):
        ax.annotate(f"{r['output_tokens_per_second']:.0f}", (i, r["output_tokens_per_second"]),
                    ha="center", va="bottom")
    ax = axes[1]
    metrics = [("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("e2e", "e2e_s")]
    width = 0.8 / max(1, len(results))
    for j, r in enumerate(results):
        xs = [i + j * width for i in range(len(metrics))]
        ys = [((r.get(key) or {}).get("p50") or 0) * 1000 for _, key in metrics]
        errs = [max(0.0, ((r.get(key) or {}).get("p90") or 0) * 1000 - y)
                for (_, key), y in zip(metrics, ys)]
        ax.bar(xs, ys, width, yerr=[[0] * len(ys), errs], capsize=3, label=r["label"])
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(metrics))])
    ax.set_xticklabels([m for m, _ in metrics])
    ax.set_yscale("log")
    ax.set_title("latency p50 (bar) to p90 (whisker), ms")
    ax.legend()
    ax = axes[2]
    for r in results:
        xs = sorted(r["e2e_samples"])
        if xs:
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=r["label"])
    ax.set_title("end-to-end latency CDF")
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of requests")
    ax.legend()
    fig.suptitle(f"qaforge bench ({report['config']['api']}, {report['config']['num_requests']} requests)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- grader mode (qaforge.bench.grader_mode) -------------------------------------------------
def _grader_rows(report: dict[str, Any]) -> list[tuple[str, list[float | None], str]]:
    results = report["results"]
    rows = [(f"round {k + 1} s", [r["round_s"][k] for r in results], "{:.3f}")
            for k in range(report["config"]["rounds"])]
    rows.append(("mean round s", [r["mean_round_s"] for r in results], "{:.3f}"))
    rows.append(("output tokens / round", [r["output_tokens_per_round"][-1] for r in results], "{:.0f}"))
    rows.append(("output tokens/s", [r["output_tokens_per_second"] for r in results], "{:.1f}"))
    rows.append(("output chars/s", [r["output_chars_per_second"] for r in results], "{:.1f}"))
    return rows


def print_grader_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    results, cfg = report["results"], report["config"]
    table = Table(title=f"qaforge bench --grader: {cfg['questions']} questions in one /predict x "
                        f"{cfg['rounds']} rounds, tokens by {cfg['tokenizer'] or '(no tokenizer: chars only)'}")
    table.add_column("metric")
    for r in results:
        table.add_column(r["label"], justify="right")
    pair = len(results) == 2
    if pair:
        table.add_column(f"{results[1]['label']} / {results[0]['label']}", justify="right")
    for name, values, fmt in _grader_rows(report):
        cells = ["–" if v is None else fmt.format(v) for v in values]
        if pair:
            a, b = values
            cells.append(f"{b / a:.2f}×" if a and b is not None else "–")
        table.add_row(name, *cells)
    Console().print(table)
    if pair:
        Console().print(f"same answers as {results[0]['label']}: {results[1]['same_answers_as_first']:.1%}")


def write_grader_outputs(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "bench.json", out_dir / "bench.png"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    results = report["results"]
    labels = [r["label"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / max(1, len(results))
    for j, r in enumerate(results):
        xs = [k + j * width for k in range(len(r["round_s"]))]
        left.bar(xs, r["round_s"], width, label=r["label"])
    left.set_xticks([k + width * (len(results) - 1) / 2 for k in range(report["config"]["rounds"])])
    left.set_xticklabels([f"round {k + 1}" for k in range(report["config"]["rounds"])])
    left.set_title("seconds per /predict round (lower is better)")
    left.legend()
    key = "output_tokens_per_second" if all(r["output_tokens_per_second"] for r in results) \
        else "output_chars_per_second"
    right.bar(labels, [r[key] for r in results], color="tab:blue")
    right.set_title(key.replace("_", " ") + " (higher is better)")
    fig.suptitle(f"qaforge bench --grader ({report['config']['questions']} questions)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return {"json": str(json_path), "png": str(png_path)}
