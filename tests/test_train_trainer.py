"""End to end on CPU: output layout, eval_loss per epoch, merge == adapter, exact resume, contamination."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import qa_files, random_model_dir  # noqa: F401 - fixtures

from qaforge.train.profiles import load_profile
from qaforge.train.trainer import train


def _config(model_dir, qa, out, **overrides):
    values = dict(model=str(model_dir), data=str(qa[0]), exam=str(qa[1]), output_dir=str(out), num_epochs=2,
                  micro_batch_size=8, grad_accum_steps=2, max_seq_len=192, logging_steps=1,
                  rouge_eval=False, tensorboard=True, learning_rate=5e-3, lora_r=8, lora_alpha=16)
    values.update(overrides)
    return load_profile("tiny", **values)


@pytest.fixture(scope="module")
def finished_run(random_model_dir, qa_files, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run")
    return out, train(_config(random_model_dir, qa_files, out, profile_steps="2-4"))


def test_output_layout_and_results(finished_run):
    out, results = finished_run
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.json", "eval_results.json",
                 "loss_curve.png"):
        assert (out / name).exists(), name
    merged = out / "merged_model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (merged / name).exists(), name
    tokenizer_config = json.loads((merged / "tokenizer_config.json").read_text())
    assert (merged / "chat_template.jinja").exists() or "chat_template" in tokenizer_config
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["contaminated"] is False
    assert len(saved["eval_loss_per_epoch"]) == 2  # one eval per epoch
    assert saved["eval_loss"] == saved["eval_loss_per_epoch"][-1]["eval_loss"]
    assert saved["config"]["lora_r"] == 8 and saved["tokens_per_second"] > 0
    assert saved["rouge"]["status"] == "skipped" and "peak_host_rss_gib" in saved["peak_memory"]
    # 48 samples, 8 x 2 per step -> 3 steps per epoch, 2 epochs
    assert results["train"]["global_step"] == 6
    losses = [h["loss"] for h in results["train"]["loss_history"]]
    assert losses[-1] < losses[0]  # it learns
    # the host-side token count (no per-step GPU sync) counts every real token of both epochs
    assert results["train"]["tokens_seen"] == 2 * results["data"]["train"]["tokens"]
    assert results["fast_path"]["fused_layers"] > 0 and results["fast_path"]["cuda_graphs"] is False  # CPU
    # profile_steps "2-4": torch.profiler over the 3rd and 4th steps, tables and a summary beside the results
    profile = json.loads((out / "step_profile.json").read_text())
    assert profile["steps"] == [2, 4] and profile["wall_ms_per_step"] > 0
    assert profile["device_busy_ms_per_step"] is None and profile["top_host_ms_per_step"]  # CPU: host ops only
    assert "Self CPU" in (out / "step_profile.txt").read_text()
    timing = results["timing"]
    assert timing["steps_timed"] == 6 and timing["median_step_ms"] > 0 and len(timing["eval_s"]) == 2


def test_model_cards_carry_the_run(finished_run):
    from huggingface_hub import ModelCard

    out, results = finished_run
    for folder in (out, out / "merged_model"):
        card = ModelCard.load(folder / "README.md")
        assert "qaforge" in card.data.tags and "lora" in card.data.tags
        assert "48 pairs" in card.text and "held-out exam" in card.text
        assert f"final eval_loss {round(results['eval_loss'], 4)}" in card.text
        assert "Contamination: **not checked**" in card.text  # rouge_eval=False: no held-out generation


def test_merged_logits_equal_adapter_logits(finished_run, random_model_dir):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = finished_run
    base = AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32)
    base_ids = torch.tensor([[3, 17, 99, 250, 7, 42, 500, 11]])
    with torch.no_grad():
        base_logits = base(input_ids=base_ids).logits
        adapter = PeftModel.from_pretrained(base, out).eval()
        adapter_logits = adapter(input_ids=base_ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged_model", dtype=torch.float32).eval()
        merged_logits = merged(input_ids=base_ids).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # the adapter changed the model
    assert (merged_logits - adapter_logits).abs().max() < 1e-3
    assert merged.config._attn_implementation != "qaforge_varlen"


def test_stop_and_resume_gives_the_same_loss_curve(random_model_dir, qa_files, tmp_path):  # noqa: F811
    from transformers import TrainerCallback

    common = dict(max_steps=6, save_steps=3, merge=False, tensorboard=False, lora_dropout=0.1,
                  grad_accum_steps=1, num_epochs=1)
    straight = train(_config(random_model_dir, qa_files, tmp_path / "a", **common))

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True
                control.should_save = True
            return control

    out_b = tmp_path / "b"
    train(_config(random_model_dir, qa_files, out_b, **common), callbacks=[StopAt3()])
    assert (out_b / "checkpoint-3").exists()
    resumed = train(_config(random_model_dir, qa_files, out_b, **common), resume=True)
    curve_a = [(h["step"], h["loss"]) for h in straight["train"]["loss_history"]]
    curve_b = [(h["step"], h["loss"]) for h in resumed["train"]["loss_history"]]
    assert [s for s, _ in curve_a] == [s for s, _ in curve_b] == [1, 2, 3, 4, 5, 6]
    for (_, la), (_, lb) in zip(curve_a, curve_b):
        assert abs(la - lb) < 1e-4, (curve_a, curve_b)


def test_training_on_the_exam_is_marked_contaminated(random_model_dir, qa_files, tmp_path, capsys):  # noqa: F811
    results = train(_config(random_model_dir, qa_files, tmp_path, train_on_exam=True, max_steps=1,
                            merge=False, tensorboard=False))
    assert results["contaminated"] is True and "CONTAMINATED" in results["warning"]
    assert results["data"]["train_records"] == 48 + 9
    assert "CONTAMINATED" in capsys.readouterr().err
    from huggingface_hub import ModelCard
    assert "CONTAMINATED (the exam split was trained on)" in ModelCard.load(tmp_path / "README.md").text
    with pytest.raises(ValueError, match="exam"):
        train(_config(random_model_dir, qa_files, tmp_path / "x", exam=None, train_on_exam=True))


def test_missing_model_and_data_fail_clearly(qa_files, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="not-a-model"):
        train(load_profile("tiny", model="not-a-model/x",
                           data=str(qa_files[0]), output_dir=str(tmp_path)))


def test_unsupported_architecture_fails_before_loading_weights(random_model_dir, qa_files, tmp_path):  # noqa: F811
    import shutil

    model_dir = tmp_path / "llama"
    shutil.copytree(random_model_dir, model_dir)
    (model_dir / "model.safetensors").unlink()  # had the weights been read, this would be a missing-file error
    hf_config = json.loads((model_dir / "config.json").read_text())
    hf_config.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (model_dir / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ValueError, match="unsupported architecture LlamaForCausalLM.*Qwen3ForCausalLM"):
        train(_config(model_dir, qa_files, tmp_path / "out", max_steps=1))
    assert not (tmp_path / "out" / "adapter_config.json").exists()


def test_qwen2_and_qwen3_configs_are_supported(random_model_dir, tmp_path):  # noqa: F811
    from transformers import Qwen2Config

    from qaforge.train.model import check_architecture

    Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, architectures=["Qwen2ForCausalLM"]).save_pretrained(tmp_path)
    assert check_architecture(tmp_path) == "qwen2"
    assert check_architecture(random_model_dir) == "qwen3"


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun gloo test runs on Linux CI")
def test_ddp_two_cpu_processes_with_gloo(random_model_dir, qa_files, tmp_path):  # noqa: F811
    """`torchrun --nproc_per_node 2 -m qaforge.train` trains with DDP and writes one result set."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "qaforge.train", "--profile", "tiny", "--model", str(random_model_dir), "--data", str(qa_files[0]),
           "--exam", str(qa_files[1]), "--output-dir", str(tmp_path), "--max-steps", "2", "--micro-batch-size", "4",
           "--no-rouge", "--device", "cpu", "--set", "tensorboard=false", "--set", "max_seq_len=192"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["world_size"] == 2 and results["train"]["global_step"] == 2
    assert (tmp_path / "merged_model" / "model.safetensors").exists()


def test_cli_fast_v7_on_cpu_writes_the_seed_layout(random_model_dir, qa_files, tmp_path):  # noqa: F811
    """`qaforge train --profile fast_v7` end to end on CPU (the issue's acceptance command), ROUGE-L included."""
    out = tmp_path / "fast_v7"
    proc = subprocess.run([sys.executable, "-m", "qaforge.cli", "train", "--profile", "fast_v7",
                           "--model", str(random_model_dir), "--data", str(qa_files[0]), "--exam", str(qa_files[1]),
                           "--output-dir", str(out), "--set", "max_new_tokens=16"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["config"]["profile"] == "fast_v7" and results["config"]["lora_r"] == 32
    assert results["train"]["global_step"] == 6  # 48 samples / 16 per step, 2 epochs
    assert len(results["eval_loss_per_epoch"]) == 2 and results["contaminated"] is False
    assert results["rouge"]["status"] == "ok" and 0.0 <= results["rouge_l"] <= 1.0
    assert set(results["rouge_l_by_difficulty"])  # per-difficulty ROUGE-L from the exam split
    for name in ("adapter_model.safetensors", "merged_model/model.safetensors", "train_config.json", "loss_curve.png"):
        assert (out / name).exists(), name
