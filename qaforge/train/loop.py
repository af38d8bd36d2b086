"""The training loop: transformers' Trainer (one per-step GPU sync less), its TrainingArguments, and
`fit`, which runs it and measures the run (tokens trained, time, peak memory)."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

from qaforge.train.callbacks import StepProfiler, StepTimer, TokenCounter
from qaforge.train.data import SampleDataset, SFTCollator
from qaforge.train.dist import is_main_process, world_size
from qaforge.train.profiles import TrainConfig


class QaforgeTrainer(Trainer):
    """transformers' Trainer, minus one per-step GPU sync.

    Trainer counts input tokens with `gather(tensor).sum().item()` after every backward: the CPU
    then waits for the GPU to drain before it may collate and launch the next step, and the GPU
    idles meanwhile. In one process the count is a host integer (packed rows hold no padding).
    """

    def _track_num_input_tokens(self, inputs):
        if world_size() > 1 or self.args.include_num_input_tokens_seen in ("no", "non_padding", False) \
                or "input_ids" not in inputs:
            return super()._track_num_input_tokens(inputs)
        self.state.num_input_tokens_seen += int(inputs["input_ids"].numel())

    def _get_num_items_in_batch(self, batch_samples, device):
        """The loss's token count from the collator's host-side `label_positions` (exactly the labelled next
        tokens Trainer counts): a Python int, so no count kernels and no blocking host-to-GPU copy per step."""
        if world_size() > 1 or not batch_samples or any("label_positions" not in b for b in batch_samples):
            return super()._get_num_items_in_batch(batch_samples, device)
        return sum(int(b["label_positions"].numel()) for b in batch_samples)


@dataclass
class StepPlan:
    steps_per_epoch: int
    total_steps: int  # optimizer steps of the whole run
    forward_passes: int  # what the CUDA-graph decision weighs


def plan_steps(config: TrainConfig, n_train_samples: int) -> StepPlan:
    samples_per_step = config.micro_batch_size * config.grad_accum_steps * world_size()
    steps_per_epoch = max(1, math.ceil(n_train_samples / samples_per_step))
    total = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.num_epochs)
    return StepPlan(steps_per_epoch, total, total * config.grad_accum_steps)


def training_arguments(config: TrainConfig, out_dir: Path, device: str, dtype: torch.dtype, total_steps: int,
                       has_eval: bool) -> TrainingArguments:
    on_cuda = device.startswith("cuda")
    return TrainingArguments(
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
        bf16=on_cuda and dtype == torch.bfloat16,
        use_cpu=device == "cpu",
        ddp_backend=("nccl" if on_cuda else "gloo") if world_size() > 1 else None,
        ddp_find_unused_parameters=False,
        optim="adamw_torch_fused" if on_cuda else "adamw_torch",
        report_to="none",  # TensorBoard through our callback: one log dir for all versions
        remove_unused_columns=False,  # our batches carry packing metadata the model takes as kwargs
        label_names=["labels"],
        prediction_loss_only=True,
        include_num_input_tokens_seen=True,
        dataloader_num_workers=config.dataloader_workers,
        dataloader_pin_memory=on_cuda,
        # pinned batches copied to the GPU asynchronously: a blocking copy waits for the previous step's
        # kernels to finish before the next step may launch anything
        accelerator_config={"non_blocking": on_cuda},
        disable_tqdm=not is_main_process(),
    )


@dataclass
class Fit:
    """A finished trainer.train() and what it measured."""
    trainer: QaforgeTrainer
    train_loss: float
    train_runtime_s: float
    tokens_seen: int  # trained by this process (a resumed run does not count the tokens before its checkpoint)
    timing: dict[str, Any]
    peak_memory: dict[str, float]


def peak_memory_gib(device: str) -> dict[str, float]:
    out = {"peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.startswith("cuda"):
        out["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        out["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    return out


def fit(config: TrainConfig, model: Any, tokenizer: Any, train_samples: list, eval_samples: list, *,
        out_dir: Path, device: str, dtype: torch.dtype, total_steps: int,
        resume: bool | str | None = None, callbacks: list[TrainerCallback] | None = None) -> Fit:
    """Train `model` (PEFT) on the encoded samples, eval per epoch when there are eval samples.

    `resume`: True continues from the newest checkpoint in `out_dir`, a path from that checkpoint.
    """
    started = time.time()
    extra = list(callbacks or [])
    if config.tensorboard and is_main_process():
        extra.append(TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "tensorboard"))))
    has_eval = bool(eval_samples)
    counter, step_timer = TokenCounter(), StepTimer()
    if config.profile_window and is_main_process():
        extra.append(StepProfiler(*config.profile_window, out_dir))
    trainer = QaforgeTrainer(
        model=model, args=training_arguments(config, out_dir, device, dtype, total_steps, has_eval),
        train_dataset=SampleDataset(train_samples),
        eval_dataset=SampleDataset(eval_samples) if has_eval else None,
        data_collator=SFTCollator(tokenizer.pad_token_id, packing=config.packing, label_positions=config.fused_loss),
        callbacks=[counter, step_timer, *extra])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    output = trainer.train(resume_from_checkpoint=resume or None)
    return Fit(trainer=trainer, train_loss=float(output.training_loss),
               train_runtime_s=float(output.metrics.get("train_runtime", time.time() - started)),
               tokens_seen=counter.trained_since_start(trainer.state), timing=step_timer.summary(),
               peak_memory=peak_memory_gib(device))
