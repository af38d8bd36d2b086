"""`evaluate(...)`: the eval stage end to end — collect answers, score, compare with baselines, write reports.

Systems, in report order: question-as-answer (always), the untuned base model (when given), the
model under test (`model`, a local directory) and/or a running server (`endpoint`).
Writes `eval_results.json`, `eval_report.md` and `eval_rouge.png` into `out_dir`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qaforge.chat import DEFAULT_SYSTEM_PROMPT
from qaforge.dataset import read_records
from qaforge.evaluate.collect import Backend, Collection, collect_from_model, question_as_answer
from qaforge.evaluate.contamination import check_contamination, contamination_headline
from qaforge.evaluate.course_metric import WHAT_IT_IGNORES
from qaforge.evaluate.endpoint import Api, collect_from_endpoint
from qaforge.evaluate.exam import exam_items
from qaforge.evaluate.plot import plot_rouge
from qaforge.evaluate.report import METRIC_NOTE, render_report
from qaforge.evaluate.scoring import reference_tokens_of, score_samples, summarize
from qaforge.modeling import resolve_model_path


def find_train_file(data: Path, train_data: Path | None) -> tuple[Path | None, str]:
    """The train file to check against: the given one, else a `train.jsonl` beside the exam file."""
    if train_data is not None:
        if not Path(train_data).is_file():
            raise FileNotFoundError(f"train file not found: {train_data}")
        return Path(train_data), "given"
    sibling = Path(data).parent / "train.jsonl"
    if sibling.is_file() and sibling.resolve() != Path(data).resolve():
        return sibling, "auto-detected (train.jsonl beside the exam file)"
    return None, "none"


def print_summary(results: dict[str, Any], console: Console) -> None:
    contamination = results.get("contamination")
    style = "bold red" if contamination and contamination["contaminated"] else "green" if contamination else "yellow"
    console.print(contamination_headline(contamination), style=style)
    table = Table(title=f"ROUGE on {results['data']} ({results['n']} questions)")
    table.add_column("system", no_wrap=True)
    for column in ("ROUGE-L", "course R-L", "BLEU-4", "chars", "tok/s", "wall s"):
        table.add_column(column, justify="right")
    for s in results["systems"]:
        m, tm = s["metrics"], s["timing"]
        tps = tm.get("output_tokens_per_s")
        table.add_row(s["label"], *(f"{m[k]:.4f}" for k in ("rouge_l", "course_rouge_l", "bleu_4")),
                      f"{s['lengths']['answer_chars']['mean']:.0f}", "—" if tps is None else f"{tps:.1f}",
                      f"{tm['wall_s']:.1f}")
    console.print(table)
    console.print("ROUGE-L: rouge-chinese over jieba words (LLaMA-Factory). course R-L: " + WHAT_IT_IGNORES,
                  style="dim", markup=False)
    for name, path in results["outputs"].items():
        console.print(f"{name}: {path}", markup=False)


def evaluate(data: Path, out_dir: Path, model: str | None = None, endpoint: str | None = None,
             base_model: str | None = None, train_data: Path | None = None, max_tokens: int = 384,
             limit: int | None = None, backend: Backend = "auto", batch_size: int | None = None, device: str = "auto",
             endpoint_api: Api = "auto", endpoint_model: str | None = None, tokenizer: str | None = None,
             concurrency: int = 8, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
             model_label: str = "fine-tuned", progress: bool = True, console: Console | None = None,
             repetition_penalty: float = 1.0) -> dict:
    """Evaluate `model` and/or `endpoint` on the exam in `data`; returns what eval_results.json holds."""
    console = console or Console()
    data, out_dir = Path(data), Path(out_dir)
    items = exam_items(read_records(data), limit)
    questions = [item.question for item in items]
    out_dir.mkdir(parents=True, exist_ok=True)

    train_file, train_source = find_train_file(data, train_data)
    contamination = check_contamination(items, train_file) if train_file else None
    if contamination:
        contamination["train_file_source"] = train_source

    collections: list[Collection] = [question_as_answer(questions)]
    local = dict(max_tokens=max_tokens, backend=backend, batch_size=batch_size, device=device,
                 system_prompt=system_prompt, progress=progress, repetition_penalty=repetition_penalty)
    if base_model:
        collections.append(collect_from_model(base_model, questions, "base (untuned)", **local))
    if model:
        collections.append(collect_from_model(model, questions, model_label, **local))
    if endpoint:
        # /predict reports no token counts; count them with the given tokenizer, else the local model's.
        count_with = tokenizer or (str(resolve_model_path(model)) if model else None)
        collections.append(collect_from_endpoint(
            endpoint, questions, "endpoint", max_tokens=max_tokens, api=endpoint_api, concurrency=concurrency,
            model_name=endpoint_model, tokenizer=count_with, system_prompt=system_prompt, progress=progress))

    reference_tokens = reference_tokens_of(items)
    per_system = [(c, score_samples(items, c, reference_tokens)) for c in collections]
    systems = [summarize(items, c, samples) for c, samples in per_system]
    outputs = {"results": str(out_dir / "eval_results.json"), "report": str(out_dir / "eval_report.md"),
               "plot": str(out_dir / "eval_rouge.png")}
    results: dict[str, Any] = {
        "data": str(data), "n": len(items), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "contaminated": bool(contamination and contamination["contaminated"]),
        "contamination": contamination,
        "metric_notes": {"rouge": METRIC_NOTE.strip(), "course_rouge_l": WHAT_IT_IGNORES},
        "systems": systems,
        "samples": [{"index": item.index, "question": item.question, "reference": item.reference,
                     "difficulty": item.difficulty, "chapter": item.chapter, "topic": item.topic,
                     "predictions": {c.label: {k: v for k, v in samples[item.index].items()
                                               if k not in ("index", "difficulty", "chapter")}
                                     for c, samples in per_system}} for item in items],
        "outputs": outputs,
    }
    Path(outputs["results"]).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    Path(outputs["report"]).write_text(render_report(results), encoding="utf-8")
    plot_rouge(results, Path(outputs["plot"]))
    print_summary(results, console)
    return results
