"""LoRA SFT of a Qwen3 or Qwen2 model: `train(config) -> dict`, as `setup -> main -> fit`.

    <output_dir>/                adapter_config.json, adapter_model.safetensors, tokenizer files
    <output_dir>/merged_model/   full HF model (weights merged), tokenizer + chat template, generation_config
    <output_dir>/checkpoint-N/   Trainer checkpoints (resume with `resume=True` or a path)
    <output_dir>/tensorboard/    TensorBoard event files
    <output_dir>/train_config.json, eval_results.json, loss_curve.png      (docs/training.md, "Outputs")

The parts: `data.py` (chat-template samples, packing), `model.py` (base model + LoRA + fast path,
merge), `loop.py` (the Trainer, its arguments, `fit`), `callbacks.py`, `report.py` (ROUGE-L through
`qaforge.evaluate`, plot, eval_results.json, summary). This module resolves the run and chains them.

Why transformers' `Trainer` + PEFT and not TRL's `SFTTrainer`: (1) the GPU image has no TRL (and
no `datasets`), and (2) every piece that SFTTrainer would add is one we need to control exactly:
its assistant-only loss needs `{% generation %}` markers that Qwen3's template lacks, its
padding-free mode relies on flash-attn, which is not installed there, and its tokenisation
differs between releases. Trainer gives us gradient accumulation with correct token-level loss
normalisation, DDP via torchrun/accelerate, checkpoints with RNG state (exact resume), eval per
epoch, TensorBoard and a progress bar; our data collator and fused loss plug into it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, TrainerCallback, set_seed

from qaforge.modeling import pick_device, pick_dtype, resolve_model_path, torch_dtype
from qaforge.dataset import read_records
from qaforge.train.data import ChatEncoder, split_validation
from qaforge.train import compile_cache
from qaforge.train.dist import world_size
from qaforge.train.loop import fit, plan_steps
from qaforge.train.model import build_model, save_merged
from qaforge.train.profiles import TrainConfig
from qaforge.train.report import (CONTAMINATION_WARNING, banner, build_results, plot_loss, rouge_eval,
                                  write_model_cards, write_results)


@dataclass
class Run:
    """What `setup` resolved: where the run writes, on what it runs, and its encoded data."""
    config: TrainConfig
    out_dir: Path
    device: str
    dtype: torch.dtype
    model_path: Path
    tokenizer: Any
    train_samples: list
    eval_samples: list
    data_stats: dict[str, Any]
    started: float


def train(config: TrainConfig, resume: bool | str | None = None,
          callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Train one LoRA adapter as `config` says; returns (and writes) eval_results.json's content.

    `resume`: True resumes from the newest checkpoint in the output directory, a path from that
    checkpoint. `callbacks`: extra transformers TrainerCallbacks (tests use one to stop early).
    Under DDP only rank 0 writes results; the other ranks return {}.
    """
    return main(setup(config), resume=resume, callbacks=callbacks)


def setup(config: TrainConfig) -> Run:
    """Output directory, seed, device and dtype, model path, tokenizer, encoded splits, train_config.json."""
    started = time.time()
    out_dir = config.resolved_output_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.train_on_exam:
        banner(CONTAMINATION_WARNING)
    set_seed(config.seed)
    device = pick_device(config.device)
    dtype = torch_dtype(pick_dtype(config.dtype, device))
    model_path = resolve_model_path(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer of {model_path} has no pad token")
    train_samples, eval_samples, data_stats = encode_splits(config, tokenizer)
    (out_dir / "train_config.json").write_text(json.dumps(
        {**config.to_dict(), "resolved_model_path": str(model_path), "device": device,
         "world_size": world_size()}, indent=2, ensure_ascii=False))
    return Run(config, out_dir, device, dtype, model_path, tokenizer, train_samples, eval_samples, data_stats,
               started)


def encode_splits(config: TrainConfig, tokenizer: Any) -> tuple[list, list, dict[str, Any]]:
    """Train and eval samples: eval is the exam split when given (also trained on with train_on_exam),
    else `val_fraction` of train."""
    if not config.data:
        raise ValueError("no training data: set `data` (a train.jsonl in alpaca format)")
    train_records = read_records(config.data)
    exam_records = read_records(config.exam) if config.exam else []
    if config.train_on_exam:
        if not exam_records:
            raise ValueError("train_on_exam=true needs an exam split (--exam)")
        train_records = train_records + exam_records
        eval_records, eval_name = exam_records, "exam (TRAINED ON: contaminated)"
    elif exam_records:
        eval_records, eval_name = exam_records, "exam"
    else:
        train_records, eval_records = split_validation(train_records, config.val_fraction, config.seed)
        eval_name = f"validation ({config.val_fraction:.0%} of train)"
    encoder = ChatEncoder(tokenizer, config.system_prompt, config.max_seq_len)
    train_samples, train_stats = encoder.encode_records(train_records)
    eval_samples, eval_stats = encoder.encode_records(eval_records) if eval_records else ([], {})
    return train_samples, eval_samples, {"train": train_stats, "eval": eval_stats, "eval_split": eval_name,
                                          "train_records": len(train_records), "exam_records": len(exam_records)}


def main(run: Run, resume: bool | str | None = None,
         callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Model, fit, then (rank 0) adapter, merged model, ROUGE-L, plot and eval_results.json."""
    config, out_dir = run.config, run.out_dir
    plan = plan_steps(config, len(run.train_samples))
    peft_model, fast_info = build_model(config, run.model_path, run.device, run.dtype,
                                        forward_passes=plan.forward_passes)
    cache = fast_info.pop("_compile_cache", None)
    params = (sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
              sum(p.numel() for p in peft_model.parameters()))
    fitted = fit(config, peft_model, run.tokenizer, run.train_samples, run.eval_samples, out_dir=out_dir,
                 device=run.device, dtype=run.dtype, total_steps=plan.total_steps, resume=resume,
                 callbacks=callbacks)
    if not fitted.trainer.is_world_process_zero():
        return {}
    if fast_info.get("compile"):  # what torch.compile did in this run: cache hits, graphs, recompiles, phases
        fast_info["compile_stats"] = compile_cache.stats()
    compile_cache.finish(cache, fitted.timing)  # the next run of this model compiles from the cache
    fitted.trainer.save_model(str(out_dir))  # adapter_config.json + adapter_model.safetensors
    run.tokenizer.save_pretrained(out_dir)
    merged_dir = save_merged(peft_model, run.tokenizer, run.model_path, out_dir) if config.merge else None
    rouge = rouge_eval(config, merged_dir, run.model_path, out_dir)
    loss_png = plot_loss(fitted.trainer.state.log_history, out_dir / "loss_curve.png")
    results = build_results(config, fitted, plan, data_stats=run.data_stats, rouge=rouge, fast_info=fast_info,
                            params=params, device=run.device, out_dir=out_dir, merged_dir=merged_dir,
                            loss_png=loss_png, started=run.started)
    write_results(results, out_dir)
    write_model_cards(results, out_dir)
    return results
