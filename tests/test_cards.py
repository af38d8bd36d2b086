"""Dataset and model cards load with huggingface_hub and carry their run's figures."""

from __future__ import annotations

from huggingface_hub import DatasetCard, ModelCard

from qaforge.cards import languages_of, size_category, write_dataset_card, write_model_card

REPORT = {
    "generator": "llm", "model": "qwen-max", "wall_time_s": 12.34,
    "dataset": {"total": 1234, "by_difficulty": {"easy": 600, "medium": 400, "hard": 234},
                "by_chapter": {"1": {"title": "Introduction", "easy": 10, "medium": 5, "hard": 2, "total": 17}}},
    "split": {"train": 1000, "exam": 193, "dropped_from_train": 41},
    "rejections": {"too_short": 7}, "duplicates": {"near": 3},
    "usage": {"total": {"calls": 250, "prompt_tokens": 90000, "completion_tokens": 40000, "cost": 1.5}},
}


def test_dataset_card_loads_with_the_reports_figures(tmp_path):
    path = write_dataset_card(tmp_path, REPORT, ["什么是warp？warp是GPU调度的基本单位 scheduling unit"], name="pmpp-qa",
                              license="cc-by-4.0", corpus="qaforge/data/corpus")
    card = DatasetCard.load(path)
    assert card.data.license == "cc-by-4.0"
    assert card.data.language == ["zh", "en"]
    assert card.data.size_categories == ["1K<n<10K"]
    splits = {s["name"]: s["num_examples"] for s in card.data.dataset_info["splits"]}
    assert splits == {"train": 1000, "exam": 193}
    assert "| exam (held out) | `exam.jsonl` | 193 |" in card.text
    assert "41 train candidates were dropped" in card.text
    assert "too_short 7" in card.text and "completion tokens 40000" in card.text
    assert "| 1 | Introduction | 10 | 5 | 2 | 17 |" in card.text


def test_model_card_loads_with_held_out_scores_and_contamination(tmp_path):
    results = {"contamination": {"contaminated": False},
               "systems": [{"label": "question-as-answer", "metrics": {"rouge_l": 0.1328, "course_rouge_l": 0.19}},
                           {"label": "fine-tuned", "metrics": {"rouge_l": 0.31234, "course_rouge_l": 0.25}}]}
    config = {"model": "Qwen/Qwen3-0.6B", "profile": "fast_v7", "data": "runs/x/train.jsonl", "exam": "runs/x/exam.jsonl",
              "lora_r": 32, "lora_alpha": 64, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
              "learning_rate": 1.5e-4, "num_epochs": 2, "micro_batch_size": 16, "grad_accum_steps": 1,
              "max_seq_len": 512}
    path = write_model_card(tmp_path, config, results, counts={"train": 2625, "exam": 300}, train_s=61.23,
                            eval_loss=1.01811)
    card = ModelCard.load(path)
    assert card.data.base_model == "Qwen/Qwen3-0.6B"
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert values == {"ROUGE-L (rouge-chinese)": 0.3123, "course ROUGE-L": 0.25}
    assert "clean (no exact or near-duplicate" in card.text
    assert "| fine-tuned | 0.3123 | 0.25 |" in card.text and "2625 pairs" in card.text
    assert "final eval_loss 1.0181" in card.text


def test_contaminated_run_says_so(tmp_path):
    config = {"model": "/local/base", "train_on_exam": True, "target_modules": []}
    card = ModelCard.load(write_model_card(tmp_path, config, None))
    assert "CONTAMINATED" in card.text and card.data.base_model is None


def test_size_and_language_rules():
    assert [size_category(n) for n in (5, 999, 1000, 20_000)] == ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K"]
    assert languages_of(["only english words here"]) == ["en"]
    assert languages_of(["全是中文的句子没有英文"]) == ["zh"]


def test_generate_writes_a_dataset_card_with_its_figures(tmp_path):
    import json

    from qaforge.generate.pipeline import generate_dataset
    from qaforge.paths import DEFAULT_CORPUS_DIR

    report = generate_dataset(DEFAULT_CORPUS_DIR, tmp_path, exam_size=10, print_table=False, show_progress=False)
    card = DatasetCard.load(tmp_path / "README.md")
    assert card.data.language == ["zh", "en"]
    assert {s["name"]: s["num_examples"] for s in card.data.dataset_info["splits"]} == {
        "train": report["split"]["train"], "exam": 10}
    assert f"QA pairs: **{report['dataset']['total']}**" in card.text
    assert json.loads((tmp_path / "report.json").read_text())["files"]["card"].endswith("README.md")
