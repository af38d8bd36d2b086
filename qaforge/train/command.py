"""`qaforge train`: LoRA fine-tuning with a named profile plus command-line overrides.

Only stdlib and typer at module level: `qaforge --help` must not import torch.

Examples:
    qaforge train --profile fast_v7 --model Qwen/Qwen3-0.6B --data out/train.jsonl --exam out/exam.jsonl
    TRAIN_PROFILE=fast_v7_final qaforge train --data out/train.jsonl --exam out/exam.jsonl
    qaforge train --profile tiny --model tiny --data out/train.jsonl --epochs 2 --lr 1e-3
    qaforge train --profile fast_v7 ... --output-dir outputs/run1 --resume      # continue a killed run
    torchrun --nproc_per_node 2 -m qaforge.train --profile fast_v7 ...           # DDP, one process per GPU
"""

from __future__ import annotations

from typing import Optional

import typer


def train(
    profile: Optional[str] = typer.Option(
        None, "--profile", "-p",
        help="Profile name in profiles/ (fast_v1, fast_v5, fast_v7, fast_v7_final, tiny) or a YAML path. "
             "Default: $TRAIN_PROFILE, else fast_v7."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model: HF id (from the local cache), "
                                        "local HF directory, or 'tiny'."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Train split: alpaca jsonl "
                                       "(instruction, input, output; optional difficulty)."),
    exam: Optional[str] = typer.Option(None, "--exam", "-e", help="Exam split: eval_loss per epoch and "
                                       "ROUGE-L at the end. Without it 5% of train is held out for eval_loss."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Run directory "
                                             "(default outputs/<profile>_<model>)."),
    resume: bool = typer.Option(False, "--resume", help="Resume from the newest checkpoint in --output-dir."),
    resume_from: Optional[str] = typer.Option(None, "--resume-from", help="Resume from this checkpoint dir."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Override num_epochs."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override learning_rate."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="Override LoRA rank."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="Override LoRA alpha."),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", help="Override LoRA dropout."),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="Override max sequence length."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Samples per forward pass."),
    grad_accum_steps: Optional[int] = typer.Option(None, "--grad-accum", help="Gradient accumulation steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help="Padding-free packing."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile decoder layers "
                                           "(default: on CUDA only). The run's end says when it did not pay off."),
    compile_cache: Optional[str] = typer.Option(
        None, "--compile-cache", help="Folder for torch.compile's caches, kept between runs (default "
                                      "~/.cache/qaforge/compile; 'off': torch's own /tmp default). Also "
                                      "$QAFORGE_COMPILE_CACHE."),
    fused_loss: Optional[bool] = typer.Option(None, "--fused-loss/--no-fused-loss",
                                              help="Chunked linear+cross-entropy on labelled tokens."),
    fused_layers: Optional[bool] = typer.Option(None, "--fused-layers/--no-fused-layers",
                                                help="Qwen3 layers as one fused function on packed rows."),
    cuda_graphs: Optional[bool] = typer.Option(None, "--cuda-graphs/--no-cuda-graphs",
                                               help="Replay the compiled layers as CUDA graphs (CUDA only; "
                                                    "rows padded to --set pad_to_multiple_of=N tokens). "
                                                    "Default: on for runs of >= 1000 forward passes."),
    rouge_eval: Optional[bool] = typer.Option(None, "--rouge/--no-rouge", help="ROUGE-L on the exam split."),
    compare_base: Optional[bool] = typer.Option(None, "--compare-base/--no-compare-base",
                                                help="Also score the untuned base model."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    set_: list[str] = typer.Option([], "--set", help="Any other TrainConfig field: --set key=value (YAML value)."),
) -> None:
    """LoRA fine-tune a Qwen3 or Qwen2 model on a QA dataset; writes adapter, merged_model/ and eval_results.json."""
    import yaml

    from qaforge.train.profiles import load_profile

    overrides = {"model": model, "data": data, "exam": exam, "output_dir": output_dir, "num_epochs": epochs,
                 "max_steps": max_steps, "learning_rate": lr, "lora_r": lora_r, "lora_alpha": lora_alpha,
                 "lora_dropout": lora_dropout, "max_seq_len": max_seq_len, "micro_batch_size": micro_batch_size,
                 "grad_accum_steps": grad_accum_steps, "seed": seed, "packing": packing, "compile": compile,
                 "fused_loss": fused_loss, "fused_layers": fused_layers, "cuda_graphs": cuda_graphs,
                 "rouge_eval": rouge_eval, "eval_compare_base": compare_base,
                 "device": device}
    for item in set_:
        if "=" not in item:
            raise typer.BadParameter(f"--set needs key=value, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        config = load_profile(profile, **overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None

    if compile_cache is not None:  # read by qaforge.train.compile_cache (TrainConfig has no field for it)
        import os

        from qaforge.train.compile_cache import ENV_VAR
        os.environ[ENV_VAR] = compile_cache

    from qaforge.train.trainer import train as run_training

    run_training(config, resume=resume_from or resume or None)


def main() -> None:  # `python -m qaforge.train` and torchrun entry
    typer.run(train)
