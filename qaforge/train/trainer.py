"""LoRA SFT of a Qwen3 model: `train(config) -> dict`, writing the seed's output layout.

    <output_dir>/                adapter_config.json, adapter_model.safetensors, tokenizer files
    <output_dir>/merged_model/   full HF model (weights merged), tokenizer + chat template, generation_config
    <output_dir>/checkpoint-N/   Trainer checkpoints (resume with `resume=True` or a path)
    <output_dir>/tensorboard/    TensorBoard event files
    <output_dir>/train_config.json, eval_results.json, loss_curve.png

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
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from qaforge.train.profiles import TrainConfig

log = logging.getLogger("qaforge.train")
CONTAMINATION_WARNING = (
    "THIS RUN TRAINS ON THE EXAM SPLIT (train_on_exam=true, e.g. profile fast_v7_final). "
    "Its eval_loss and ROUGE-L are measured on data it has seen: they are CONTAMINATED and say "
    "nothing about held-out quality. Use fast_v7 numbers to compare models."
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def resolve_model_path(name: str) -> Path:
    """A local HF directory for `name` (path, `tiny`, or a cached hub id). Never downloads."""
    from qaforge.modeling import resolve_model_path as project_resolver

    return Path(project_resolver(name))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device_dtype(config: TrainConfig):
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is visible")
    dtype_name = config.dtype
    if dtype_name == "auto":  # bf16 on GPU (the seed's setting), fp32 on CPU (bf16 matmuls are slow there)
        dtype_name = "bfloat16" if device == "cuda" else "float32"
    return device, getattr(torch, dtype_name)


def _banner(text: str) -> None:
    try:
        from rich.console import Console
        from rich.panel import Panel
        Console(stderr=True).print(Panel(text, title="WARNING: CONTAMINATED RUN", style="bold red"))
    except ImportError:
        print("!" * 80 + f"\n{text}\n" + "!" * 80, file=sys.stderr)
    log.warning(text)


def _peak_memory_gib(device: str) -> dict[str, float]:
    import torch

    out = {"peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device == "cuda":
        out["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        out["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    return out


# CUDA graphs' one-off cost on the H200 (2026-12-01, docs/benchmarks.md): ~35 s more compilation than
# the plain compile plus ~5 s of recording per padded row length (~6 lengths in fast_v7): ~65 s. They
# save ~70 ms per forward+backward (157 -> 79 ms at T1; launch-bound steps cost ~150 ms at any length).
# Break-even: 65 s / 0.07 s ≈ 900 passes; fast_v7 (388) stays below it, long runs are far above.
CUDA_GRAPHS_MIN_STEPS = 1000


def use_cuda_graphs(config: TrainConfig, device: str, use_compile: bool, forward_passes: int | None) -> bool:
    """config.cuda_graphs, with None decided by the run's length; never without CUDA + compile or under DDP."""
    if not (use_compile and device == "cuda"):
        return False
    wanted = config.cuda_graphs
    if wanted is None:
        wanted = forward_passes is not None and forward_passes >= CUDA_GRAPHS_MIN_STEPS
        log.info("cuda_graphs auto: %s (%s forward passes planned, threshold %d)", wanted, forward_passes,
                 CUDA_GRAPHS_MIN_STEPS)
    if wanted and _world_size() > 1:
        # not yet measured with DDP's gradient hooks on several GPUs: the fused layers still run
        log.warning("cuda_graphs is off under DDP (world size %d): untested there", _world_size())
        return False
    return bool(wanted)


def build_model(config: TrainConfig, model_path: Path, device: str, dtype, for_training: bool = True,
                forward_passes: int | None = None):
    """Base model + LoRA adapters + the fast path pieces the config asks for."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qaforge.train import fast

    attention = config.attention
    if attention == "auto":
        attention = "varlen" if config.packing else "sdpa"
    attn_impl = fast.register_varlen_attention() if attention == "varlen" else attention
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=attn_impl)
    model.to(device)
    model.config.use_cache = False
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", bias="none")
    # PEFT keeps the adapter weights in fp32 (autocast_adapter_dtype): fp32 master weights for AdamW,
    # bf16 compute under autocast.
    peft_model = get_peft_model(model, lora)
    causal_lm = peft_model.get_base_model()
    if config.fused_loss:
        fast.install_fused_loss(causal_lm, config.loss_chunk_size)
    use_compile = bool(config.compile if config.compile is not None else device == "cuda") and for_training
    fused_layers = 0
    if config.fused_layers and attention == "varlen":
        from qaforge.train.fused_layer import install_fused_layers
        cuda_graphs = use_cuda_graphs(config, device, use_compile, forward_passes)
        fused_layers = install_fused_layers(causal_lm, compile=use_compile, cuda_graphs=cuda_graphs,
                                            pad_to_multiple_of=config.pad_to_multiple_of if cuda_graphs else None)
    if use_compile and not fused_layers:
        fast.compile_decoder_layers(causal_lm)
    return peft_model, {"attn_implementation": attn_impl, "compile": use_compile, "fused_layers": fused_layers,
                        "cuda_graphs": bool(getattr(causal_lm, "_qaforge_cuda_graphs", False)),
                        "fused_loss": config.fused_loss, "dtype": str(dtype).replace("torch.", "")}


def _encode_splits(config: TrainConfig, tokenizer):
    from qaforge.dataset import read_records
    from qaforge.train.data import ChatEncoder, split_validation

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


def _save_merged(peft_model, tokenizer, model_path: Path, out_dir: Path) -> Path:
    """Merge LoRA into the base weights and save a self-contained HF directory."""
    import torch
    from transformers import AutoConfig, GenerationConfig

    from qaforge.train import fast
    from qaforge.train.fused_layer import uninstall_fused_layers

    causal_lm = peft_model.get_base_model()
    fast.uninstall_fused_loss(causal_lm)
    uninstall_fused_layers(causal_lm)
    merged = peft_model.merge_and_unload()
    try:  # the custom varlen name means nothing to other loaders
        merged.set_attn_implementation("sdpa")
    except (AttributeError, ValueError):
        merged.config._attn_implementation = "sdpa"
    merged.config.use_cache = True
    base_dtype = getattr(AutoConfig.from_pretrained(model_path), "dtype", None)
    if isinstance(base_dtype, str):
        base_dtype = getattr(torch, base_dtype, None)
    if isinstance(base_dtype, torch.dtype) and base_dtype.is_floating_point:
        merged = merged.to(base_dtype)  # same dtype as the base checkpoint (Qwen3-0.6B ships bf16)
    merged_dir = out_dir / "merged_model"
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    try:
        generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        generation_config = GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                             pad_token_id=tokenizer.pad_token_id)
    generation_config.save_pretrained(merged_dir)
    return merged_dir


def _run_rouge_eval(config: TrainConfig, merged_dir: Path, model_path: Path, out_dir: Path) -> dict[str, Any]:
    """Generation-based ROUGE-L on the exam split through qaforge.evaluate (if it is installed)."""
    if not config.rouge_eval:
        return {"status": "skipped", "reason": "rouge_eval=false"}
    if not config.exam:
        return {"status": "skipped", "reason": "no exam split given"}
    try:
        from qaforge.evaluate.run import evaluate
    except ImportError as exc:
        return {"status": "skipped", "reason": f"qaforge.evaluate.run.evaluate not importable: {exc}"}
    import inspect

    candidates = {"data": config.exam, "out_dir": str(out_dir / "eval"), "model": str(merged_dir),
                  "base_model": str(model_path) if config.eval_compare_base else None,
                  "train_data": config.data, "system_prompt": config.system_prompt,
                  "max_tokens": config.max_new_tokens, "limit": config.rouge_max_samples,
                  "model_label": "fine-tuned"}
    params = inspect.signature(evaluate).parameters
    kwargs = {k: v for k, v in candidates.items() if k in params and v is not None}
    try:
        report = evaluate(**kwargs)
    except Exception as exc:  # noqa: BLE001 - training results must survive an evaluation failure
        log.exception("ROUGE-L evaluation failed")
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", **summarize_rouge_report(report)}


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


def _plot_loss(log_history: list[dict], path: Path) -> Path | None:
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


def _print_summary(results: dict[str, Any]) -> None:
    rows = [("profile", results["config"]["profile"]), ("model", results["config"]["model"]),
            ("samples (train / eval)", f"{results['data']['train'].get('samples')} / "
                                       f"{results['data']['eval'].get('samples', 0)}"),
            ("optimizer steps", results["train"]["global_step"]),
            ("final train loss", f"{results['train']['train_loss']:.4f}"),
            ("eval_loss", "-" if results.get("eval_loss") is None else f"{results['eval_loss']:.4f}"),
            ("ROUGE-L", results["rouge"].get("rouge_l", results["rouge"].get("status"))),
            ("tokens/s (train)", f"{results['tokens_per_second']:,.0f}"),
            ("wall time", f"{results['wall_time_s']:.1f} s"),
            ("peak memory", ", ".join(f"{k}={v}" for k, v in results["peak_memory"].items())),
            ("contaminated", results["contaminated"]),
            ("output", results["output_dir"])]
    try:
        from rich.console import Console
        from rich.table import Table
        table = Table(title="qaforge train: summary")
        table.add_column("metric")
        table.add_column("value")
        for key, value in rows:
            table.add_row(key, str(value), style="bold red" if key == "contaminated" and value else None)
        Console(stderr=True).print(table)
    except ImportError:
        for key, value in rows:
            print(f"{key:>24}: {value}", file=sys.stderr)


def _step_timer_callback():
    """Where the wall time of trainer.train() goes: first step (compilation), steady steps, eval, saves."""
    import statistics

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin = self.epoch_end = self.evaluated = None
            self.step_ends: list[float] = []
            self.eval_s: list[float] = []
            self.save_s: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())

        def on_epoch_end(self, args, state, control, **kwargs):
            self.epoch_end = time.perf_counter()

        def on_evaluate(self, args, state, control, **kwargs):
            self.evaluated = time.perf_counter()
            if self.epoch_end is not None:
                self.eval_s.append(round(self.evaluated - self.epoch_end, 2))

        def on_save(self, args, state, control, **kwargs):
            start = self.evaluated or self.epoch_end
            if start is not None:
                self.save_s.append(round(time.perf_counter() - start, 2))
            self.evaluated = None

        def summary(self) -> dict[str, Any]:
            if self.begin is None or not self.step_ends:
                return {}
            gaps = [b - a for a, b in zip(self.step_ends, self.step_ends[1:])]
            median = statistics.median(gaps) if gaps else 0.0
            return {"steps_timed": len(self.step_ends),
                    "first_step_s (includes compilation)": round(self.step_ends[0] - self.begin, 2),
                    "median_step_ms": round(median * 1e3, 1),
                    "sum_of_steps_over_3x_median_s": round(sum(g for g in gaps if g > 3 * median), 2),
                    "eval_s": self.eval_s, "eval_plus_save_s": self.save_s}

    return StepTimer()


def _trainer_class():
    from transformers import Trainer

    class QaforgeTrainer(Trainer):
        """transformers' Trainer, minus one per-step GPU sync.

        Trainer counts input tokens with `gather(tensor).sum().item()` after every backward: the CPU
        then waits for the GPU to drain before it may collate and launch the next step, and the GPU
        idles meanwhile. In one process the count is a host integer (packed rows hold no padding).
        """

        def _track_num_input_tokens(self, inputs):
            if _world_size() > 1 or self.args.include_num_input_tokens_seen in ("no", "non_padding", False) \
                    or "input_ids" not in inputs:
                return super()._track_num_input_tokens(inputs)
            self.state.num_input_tokens_seen += int(inputs["input_ids"].numel())

    return QaforgeTrainer


class _TokenCounter:
    """Real (unpadded) input tokens seen at the start of this process's training (non-zero on resume)."""

    def __init__(self) -> None:
        self.tokens_at_start = 0


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------
def train(config: TrainConfig, resume: bool | str | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Train one LoRA adapter as `config` says; returns (and writes) eval_results.json's content.

    `resume`: True resumes from the newest checkpoint in the output directory, a path from that
    checkpoint. `callbacks`: extra transformers TrainerCallbacks (tests use one to stop early).
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from transformers import AutoTokenizer, TrainerCallback, TrainingArguments, set_seed
    from transformers.integrations import TensorBoardCallback

    from qaforge.train.data import SampleDataset, SFTCollator

    started = time.time()
    out_dir = config.resolved_output_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.train_on_exam:
        _banner(CONTAMINATION_WARNING)
    set_seed(config.seed)
    device, dtype = resolve_device_dtype(config)
    model_path = resolve_model_path(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer of {model_path} has no pad token")
    train_samples, eval_samples, data_stats = _encode_splits(config, tokenizer)
    (out_dir / "train_config.json").write_text(json.dumps(
        {**config.to_dict(), "resolved_model_path": str(model_path), "device": device,
         "world_size": _world_size()}, indent=2, ensure_ascii=False))

    samples_per_step = config.micro_batch_size * config.grad_accum_steps * _world_size()
    steps_per_epoch = max(1, math.ceil(len(train_samples) / samples_per_step))
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.num_epochs)

    peft_model, fast_info = build_model(config, model_path, device, dtype,
                                        forward_passes=total_steps * config.grad_accum_steps)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in peft_model.parameters())
    counter = _TokenCounter()
    extra_callbacks = list(callbacks or [])

    class _CountTokens(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # state is restored by now on resume
            counter.tokens_at_start = int(state.num_input_tokens_seen or 0)

    if config.tensorboard and _is_main_process():
        extra_callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "tensorboard"))))
    has_eval = bool(eval_samples)
    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.grad_accum_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=int(round(config.warmup_ratio * total_steps)),
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        bf16=device == "cuda" and dtype == torch.bfloat16,
        use_cpu=device == "cpu",
        ddp_backend=("nccl" if device == "cuda" else "gloo") if _world_size() > 1 else None,
        ddp_find_unused_parameters=False,
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
        report_to="none",  # TensorBoard through our callback: one log dir for all versions
        remove_unused_columns=False,  # our batches carry packing metadata the model takes as kwargs
        label_names=["labels"],
        prediction_loss_only=True,
        include_num_input_tokens_seen=True,
        dataloader_num_workers=config.dataloader_workers,
        dataloader_pin_memory=device == "cuda",
        disable_tqdm=not _is_main_process(),
    )
    step_timer = _step_timer_callback()
    trainer = _trainer_class()(model=peft_model, args=args, train_dataset=SampleDataset(train_samples),
                      eval_dataset=SampleDataset(eval_samples) if has_eval else None,
                      data_collator=SFTCollator(tokenizer.pad_token_id, packing=config.packing,
                                                label_positions=config.fused_loss),
                      callbacks=[_CountTokens(), step_timer, *extra_callbacks])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_output = trainer.train(resume_from_checkpoint=resume or None)
    train_runtime = float(train_output.metrics.get("train_runtime", time.time() - started))
    # tokens before a resume point were not trained within this process's train_runtime
    tokens_seen = int(trainer.state.num_input_tokens_seen or 0) - counter.tokens_at_start
    eval_history = [h for h in trainer.state.log_history if "eval_loss" in h]
    peak_memory = _peak_memory_gib(device)

    results: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        trainer.save_model(str(out_dir))  # adapter_config.json + adapter_model.safetensors
        tokenizer.save_pretrained(out_dir)
        merged_dir = _save_merged(peft_model, tokenizer, model_path, out_dir) if config.merge else None
        rouge = (_run_rouge_eval(config, merged_dir, model_path, out_dir) if merged_dir is not None
                 else {"status": "skipped", "reason": "merge=false"})
        if config.train_on_exam and rouge.get("status") == "ok":
            rouge["contaminated"] = True
        loss_png = _plot_loss(trainer.state.log_history, out_dir / "loss_curve.png")
        results = {
            "contaminated": config.train_on_exam,
            "warning": CONTAMINATION_WARNING if config.train_on_exam else None,
            "eval_loss": eval_history[-1]["eval_loss"] if eval_history else None,
            "eval_loss_per_epoch": [{"epoch": h.get("epoch"), "step": h.get("step"),
                                     "eval_loss": h["eval_loss"]} for h in eval_history],
            "eval_split": data_stats["eval_split"],
            "rouge": rouge,
            "rouge_l": rouge.get("rouge_l"),
            "rouge_l_by_difficulty": rouge.get("rouge_l_by_difficulty"),
            "train": {"global_step": trainer.state.global_step, "train_loss": float(train_output.training_loss),
                      "train_runtime_s": round(train_runtime, 2), "planned_steps": total_steps,
                      "steps_per_epoch": steps_per_epoch, "trainable_params": trainable,
                      "total_params": total_params, "tokens_seen": tokens_seen,
                      "loss_history": [{"step": h["step"], "loss": h["loss"]}
                                       for h in trainer.state.log_history if "loss" in h]},
            "data": data_stats,
            "fast_path": fast_info,
            "tokens_per_second": tokens_seen / max(train_runtime, 1e-9),
            "timing": step_timer.summary(),
            "peak_memory": peak_memory,
            "wall_time_s": round(time.time() - started, 2),
            "device": device,
            "world_size": _world_size(),
            "output_dir": str(out_dir),
            "adapter_dir": str(out_dir),
            "merged_model_dir": str(merged_dir) if merged_dir else None,
            "loss_curve_png": str(loss_png) if loss_png else None,
            "config": config.to_dict(),
            "versions": _versions(),
        }
        (out_dir / "eval_results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
        _print_summary(results)
        if config.train_on_exam:
            _banner(CONTAMINATION_WARNING)
    return results


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
