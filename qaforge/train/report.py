"""What a training run reports: ROUGE-L on the exam (through `qaforge.evaluate`), the loss plot,
`eval_results.json`, the summary table, and the warning a contaminated run carries everywhere."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from qaforge.train.dist import world_size
from qaforge.train.loop import Fit, StepPlan
from qaforge.train.profiles import TrainConfig
from qaforge.train.speed import time_split, verdict

log = logging.getLogger("qaforge.train")
CONTAMINATION_WARNING = (
    "THIS RUN TRAINS ON THE EXAM SPLIT (train_on_exam=true, e.g. profile fast_v7_final). "
    "Its eval_loss and ROUGE-L are measured on data it has seen: they are CONTAMINATED and say "
    "nothing about held-out quality. Use fast_v7 numbers to compare models."
)


def banner(text: str) -> None:
    Console(stderr=True).print(Panel(text, title="WARNING: CONTAMINATED RUN", style="bold red"))
    log.warning(text)


def rouge_eval(config: TrainConfig, merged_dir: Path | None, model_path: Path, out_dir: Path) -> dict[str, Any]:
    """Generation-based ROUGE-L of the merged model on the exam split; a failure is reported, not raised."""
    if merged_dir is None:
        return {"status": "skipped", "reason": "merge=false"}
    if not config.rouge_eval:
        return {"status": "skipped", "reason": "rouge_eval=false"}
    if not config.exam:
        return {"status": "skipped", "reason": "no exam split given"}
    try:
        # here, not at the top: the evaluation stack (jieba, nltk, matplotlib) loads only for runs that evaluate
        from qaforge.evaluate.run import evaluate

        report = evaluate(Path(config.exam), out_dir / "eval", model=str(merged_dir),
                          base_model=str(model_path) if config.eval_compare_base else None,
                          train_data=Path(config.data) if config.data else None,
                          system_prompt=config.system_prompt, max_tokens=config.max_new_tokens,
                          repetition_penalty=config.repetition_penalty,
                          limit=config.rouge_max_samples, model_label="fine-tuned")
    except Exception as exc:  # noqa: BLE001 - training results must survive an evaluation failure
        log.exception("ROUGE-L evaluation failed")
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    rouge = {"status": "ok", **summarize_rouge_report(report)}
    if config.train_on_exam:
        rouge["contaminated"] = True
    return rouge


def summarize_rouge_report(report: dict[str, Any], label: str = "fine-tuned") -> dict[str, Any]:
    """Overall and per-difficulty ROUGE-L of each system in a qaforge.evaluate report (no per-sample data)."""
    systems = {}
    for system in report.get("systems", []):
        metrics = system.get("metrics", {})
        systems[system.get("label", "?")] = {
            "n": system.get("n"), "rouge_l": metrics.get("rouge_l"),
            "course_rouge_l": metrics.get("course_rouge_l"),
            "rouge_l_by_difficulty": {d: v.get("rouge_l") for d, v in (system.get("by_difficulty") or {}).items()}}
    mine = systems.get(label, {})
    return {"rouge_l": mine.get("rouge_l"), "rouge_l_by_difficulty": mine.get("rouge_l_by_difficulty"),
            "course_rouge_l": mine.get("course_rouge_l"), "systems": systems,
            "exam_overlaps_train": report.get("contaminated"),
            "report_files": report.get("outputs", {})}


def plot_loss(log_history: list[dict], path: Path) -> Path | None:
    """Train loss per logged step and eval loss per epoch; None when matplotlib is absent (the serving image)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss (per epoch)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (assistant tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_results(config: TrainConfig, fitted: Fit, plan: StepPlan, *, data_stats: dict[str, Any],
                  rouge: dict[str, Any], fast_info: dict[str, Any], params: tuple[int, int], device: str,
                  out_dir: Path, merged_dir: Path | None, loss_png: Path | None, started: float) -> dict[str, Any]:
    """The content of eval_results.json."""
    state = fitted.trainer.state
    split = time_split(fitted.timing, fitted.train_runtime_s, bool(fast_info.get("compile")))
    eval_history = [h for h in state.log_history if "eval_loss" in h]
    return {
        "contaminated": config.train_on_exam,
        "warning": CONTAMINATION_WARNING if config.train_on_exam else None,
        "eval_loss": eval_history[-1]["eval_loss"] if eval_history else None,
        "eval_loss_per_epoch": [{"epoch": h.get("epoch"), "step": h.get("step"), "eval_loss": h["eval_loss"]}
                                for h in eval_history],
        "eval_split": data_stats["eval_split"],
        "rouge": rouge,
        "rouge_l": rouge.get("rouge_l"),
        "rouge_l_by_difficulty": rouge.get("rouge_l_by_difficulty"),
        "train": {"global_step": state.global_step, "train_loss": fitted.train_loss,
                  "train_runtime_s": round(fitted.train_runtime_s, 2), "planned_steps": plan.total_steps,
                  "steps_per_epoch": plan.steps_per_epoch, "trainable_params": params[0],
                  "total_params": params[1], "tokens_seen": fitted.tokens_seen,
                  "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in state.log_history if "loss" in h]},
        "data": data_stats,
        "fast_path": fast_info,
        "tokens_per_second": fitted.tokens_seen / max(fitted.train_runtime_s, 1e-9),
        "timing": fitted.timing,
        "speed": {"time_split": split, **verdict(split, fast_info)},
        "peak_memory": fitted.peak_memory,
        "wall_time_s": round(time.time() - started, 2),
        "device": device,
        "world_size": world_size(),
        "output_dir": str(out_dir),
        "adapter_dir": str(out_dir),
        "merged_model_dir": str(merged_dir) if merged_dir else None,
        "loss_curve_png": str(loss_png) if loss_png else None,
        "config": config.to_dict(),
        "versions": versions(),
    }


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    """eval_results.json, then the summary table (and the warning again, last, where it is seen)."""
    (out_dir / "eval_results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    print_summary(results)
    if results["contaminated"]:
        banner(CONTAMINATION_WARNING)


def print_summary(results: dict[str, Any]) -> None:
    rows = [("profile", results["config"]["profile"]), ("model", results["config"]["model"]),
            ("samples (train / eval)", f"{results['data']['train'].get('samples')} / "
                                       f"{results['data']['eval'].get('samples', 0)}"),
            ("optimizer steps", results["train"]["global_step"]),
            ("final train loss", f"{results['train']['train_loss']:.4f}"),
            ("eval_loss", "-" if results.get("eval_loss") is None else f"{results['eval_loss']:.4f}"),
            ("ROUGE-L", results["rouge"].get("rouge_l", results["rouge"].get("status"))),
            ("tokens/s (train)", f"{results['tokens_per_second']:,.0f}"),
            ("wall time", f"{results['wall_time_s']:.1f} s"),
            ("time split", _split_text(results.get("speed", {}).get("time_split") or {})),
            ("peak memory", ", ".join(f"{k}={v}" for k, v in results["peak_memory"].items())),
            ("contaminated", results["contaminated"]),
            ("output", results["output_dir"])]
    table = Table(title="qaforge train: summary")
    table.add_column("metric")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, str(value), style="bold red" if key == "contaminated" and value else None)
    console = Console(stderr=True)
    console.print(table)
    for notice in results.get("speed", {}).get("notices", []):
        console.print(f"[bold yellow]NOTE:[/] {notice}")
        log.warning(notice)


def _split_text(split: dict[str, Any]) -> str:
    if not split:
        return "-"
    return (f"compile {split['compile_s']:.1f} s, steady {split['steady_s']:.1f} s ({split['steps']} steps, median "
            f"{split['median_step_ms']} ms), eval+save {split['eval_and_save_s']:.1f} s")


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def write_model_cards(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """A Hugging Face model card (README.md) in the adapter folder and in the merged model's folder, with the
    run's held-out scores and contamination status (qaforge/cards.py)."""
    from qaforge.cards import write_model_card

    eval_file = Path(out_dir) / "eval" / "eval_results.json"
    evaluation = json.loads(eval_file.read_text(encoding="utf-8")) if eval_file.is_file() else None
    data = results.get("data", {})
    counts = {"train": data.get("train_records", "?"), "exam": data.get("exam_records", "?")}
    folders = [Path(out_dir)] + ([Path(results["merged_model_dir"])] if results.get("merged_model_dir") else [])
    return [write_model_card(folder, results["config"], evaluation, counts=counts,
                             train_s=results["train"]["train_runtime_s"], eval_loss=results.get("eval_loss"))
            for folder in folders]
