"""Hugging Face dataset and model cards (README.md with YAML metadata), written with huggingface_hub's
own card classes so `DatasetCard.load` / `ModelCard.load` and the Hub read them as they read any card.

The figures come from the run's own reports (report.json of `generate`, eval_results.json and
train_config.json of `train`); nothing is typed in by hand.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qaforge.paths import TEMPLATES_DIR

_CJK = re.compile(r"[\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]{3,}")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name; a local path is not a base_model the Hub can link


def size_category(n: int) -> str:
    """The Hub's size bucket for n rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def languages_of(texts: list[str]) -> list[str]:
    """ISO codes of the languages a dataset's text is written in: Chinese when CJK characters make up a
    visible share, English when Latin words do (CUDA textbooks in Chinese carry English keywords)."""
    joined = "".join(texts)
    if not joined:
        return []
    langs = []
    if len(_CJK.findall(joined)) / len(joined) > 0.05:
        langs.append("zh")
    if len(_LATIN.findall(joined)) * 5 / len(joined) > 0.05:
        langs.append("en")
    return langs or ["en"]


def _render(template: str, card_cls, card_data, **values: Any):
    return card_cls.from_template(card_data, template_path=str(TEMPLATES_DIR / template), **values)


def write_dataset_card(out_dir: Path, report: dict[str, Any], texts: list[str], name: str = "qaforge",
                       license: str = "other", corpus: str = "") -> Path:
    """README.md in a dataset folder from its report.json content; returns the path."""
    from huggingface_hub import DatasetCard, DatasetCardData

    stats, split = report["dataset"], report.get("split", {})
    usage = (report.get("usage") or {}).get("total")
    data = DatasetCardData(
        license=license, language=languages_of(texts), pretty_name=name,
        size_categories=[size_category(stats["total"])],
        task_categories=["question-answering", "text-generation"], tags=["qaforge", "synthetic", "sft"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": "train", "path": "train.jsonl"}, {"split": "exam", "path": "exam.jsonl"}]}],
        dataset_info={"splits": [{"name": "train", "num_examples": int(split.get("train", 0))},
                                 {"name": "exam", "num_examples": int(split.get("exam", 0))}]},
    )
    card = _render("dataset_card.md", DatasetCard, data, pretty_name=name, corpus=corpus or report.get("corpus", ""),
                   generator=report.get("generator", ""), model=report.get("model", ""),
                   n_train=split.get("train", 0), n_exam=split.get("exam", 0),
                   dropped=split.get("dropped_from_train", 0), total=stats["total"],
                   by_difficulty=stats["by_difficulty"], by_chapter=stats["by_chapter"],
                   wall_time_s=round(float(report.get("wall_time_s", 0.0)), 1),
                   rejections=report.get("rejections") or {}, duplicates=report.get("duplicates") or {},
                   usage=usage)
    path = Path(out_dir) / "README.md"
    card.save(path)
    return path


def _system_scores(eval_results: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not eval_results:
        return []
    return [{"label": s["label"], "rouge_l": round(s["metrics"]["rouge_l"], 4),
             "course_rouge_l": round(s["metrics"]["course_rouge_l"], 4)} for s in eval_results.get("systems", [])]


def contamination_status(eval_results: dict[str, Any] | None, train_on_exam: bool = False) -> str:
    if train_on_exam:
        return "CONTAMINATED (the exam split was trained on)"
    c = (eval_results or {}).get("contamination")
    if c is None:
        return "not checked"
    return "CONTAMINATED" if c.get("contaminated") else "clean (no exact or near-duplicate exam item in train)"


def write_model_card(model_dir: Path, config: dict[str, Any], eval_results: dict[str, Any] | None = None,
                     counts: dict[str, int] | None = None, train_s: float | None = None,
                     eval_loss: float | None = None, dataset_name: str = "qaforge") -> Path:
    """README.md in a trained model's folder from its train config and held-out eval results."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    counts = counts or {}
    scores = _system_scores(eval_results)
    tuned = [s for s in scores if s["label"] not in ("question-as-answer", "base (untuned)")]
    results = [EvalResult(task_type="text-generation", dataset_type="json", dataset_name=f"{dataset_name} (held out)",
                          metric_type=metric, metric_name=label, metric_value=s[key])
               for s in tuned[:1] for metric, key, label in (("rougeL", "rouge_l", "ROUGE-L (rouge-chinese)"),
                                                            ("rougeL", "course_rouge_l", "course ROUGE-L"))]
    base = str(config.get("model", ""))
    data = ModelCardData(
        base_model=base if _HUB_ID.match(base) and not Path(base).exists() else None, library_name="transformers",
        license=config.get("license"), tags=[t for t in ("qaforge", "lora", "sft", config.get("profile")) if t],
        model_name=Path(model_dir).name, eval_results=results or None,
    )
    batch = int(config.get("micro_batch_size", 1)) * int(config.get("grad_accum_steps", 1))
    card = _render("model_card.md", ModelCard, data, model_name=Path(model_dir).name, base_model=base,
                   profile=config.get("profile", ""), data=config.get("data", ""), exam=config.get("exam"),
                   n_train=counts.get("train", "?"), n_exam=counts.get("exam", "?"),
                   lora_r=config.get("lora_r"), lora_alpha=config.get("lora_alpha"),
                   lora_dropout=config.get("lora_dropout"), target_modules=", ".join(config.get("target_modules", [])),
                   learning_rate=config.get("learning_rate"), num_epochs=config.get("num_epochs"), batch=batch,
                   max_seq_len=config.get("max_seq_len"), train_s=None if train_s is None else round(train_s, 1),
                   eval_loss=None if eval_loss is None else round(float(eval_loss), 4),
                   contamination=contamination_status(eval_results, bool(config.get("train_on_exam"))),
                   scores=scores)
    path = Path(model_dir) / "README.md"
    card.save(path)
    return path
