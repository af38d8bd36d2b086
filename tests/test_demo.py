"""`qaforge demo` end to end on the tiny model: every stage runs and the tuned model beats its base."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from qaforge.demo import run_demo


def test_demo_end_to_end(tiny_model_dir, tmp_path):
    summary = run_demo(out=tmp_path / "demo", model=str(tiny_model_dir), exam_size=24, max_tokens=64)
    assert [s["stage"] for s in summary["stages"]] == [
        "generate (rules)", "LoRA fine-tune", "evaluate (ROUGE-L)", "serve + bench"]
    assert summary["tuned_beats_base"], summary["rouge_l"]
    assert summary["server"]["status"] == {"status": "batch"}
    assert isinstance(summary["server"]["predict_one"]["response"], str)
    merged = tmp_path / "demo" / "merged_model"
    AutoModelForCausalLM.from_pretrained(merged)
    assert "<|im_start|>assistant" in AutoTokenizer.from_pretrained(merged).apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
    on_disk = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert on_disk["rouge_l"] == summary["rouge_l"]
    for name in ("eval_results.json", "eval_report.md", "eval_rouge.png"):
        assert (tmp_path / "demo" / "eval" / name).exists()
