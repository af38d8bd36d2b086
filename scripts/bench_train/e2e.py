"""fast_v7 end to end, the way a user runs it, one variant per process (scripts/bench_train/worker.py):

* `hf_peft`: a plain HF + PEFT script with fast_v7's settings: from_pretrained in bf16 with transformers'
  default attention, LoRA r 32 / alpha 64 / dropout 0.1 on all 7 projections, 16 shuffled samples per step,
  dynamically padded batches with an attention mask, `model(**batch).loss`, torch's AdamW (lr 1.5e-4, weight
  decay 0.01), cosine schedule with 3 % warm-up, grad clipping 1.0, 2 epochs, eval loss after each epoch,
  the adapter saved at the end;
* `hf_peft_compile`: the same script with the PEFT model wrapped in `torch.compile` (the best off-the-shelf peer);
  `hf_peft_compile_dynamic` the same with `dynamic=True` (one symbolic-shape graph instead of a recompile per
  new batch shape, which kept the default from finishing its second step at the seed's lengths on 2026-12-04);
* `qaforge_cold` / `qaforge_warm` / `qaforge_eager`: `qaforge.train.trainer.train` with the fast_v7 profile
  (`--no-rouge`: Trainer, eval per epoch, checkpoints, merge and save). Cold starts from an empty compile cache,
  warm reuses the cache the cold run left (a user's second run), eager is `--no-compile`.

Every variant reports the same figures: wall time of the training call (model load to saved output, compile
included), first step, median step, steady tokens/s (real tokens over the step gaps that are not one-offs:
gaps over 3x the median, i.e. compilation, evaluation, CUDA-graph recordings, are left out), the number of
distinct batch shapes (padded [rows, longest] for plain HF, packed row lengths for qaforge), what torch.compile
did (`compile_stats`: cache hits and misses, recompiles, slowest phases; qaforge.train.compile_cache.stats)
and peak memory.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path

import torch

from qaforge.train import compile_cache
from scripts.bench_train.workload import TARGETS, padded


class Progress:
    """Appends one JSON line per event to a file, so a variant killed at its timeout still reports."""

    def __init__(self, path: Path | None):
        self.path = path
        self.step_ends: list[float] = []
        self.tokens: list[int] = []
        self.shapes: set = set()  # distinct batch shapes: what a static compile or a CUDA graph is made per
        self.begin = time.perf_counter()

    def write(self, **event) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"t": round(time.perf_counter() - self.begin, 3), **event}) + "\n")

    def step(self, tokens: int, shape=None, every: int = 10) -> None:
        self.step_ends.append(time.perf_counter())
        self.tokens.append(tokens)
        self.shapes.add(shape if shape is not None else tokens)
        n = len(self.step_ends)
        if n == 1 or n % every == 0:
            self.write(event="step", step=n, **self.summary())

    def summary(self) -> dict:
        return {**step_summary(self.begin, self.step_ends, self.tokens), "distinct_shapes": len(self.shapes)}


def step_summary(begin: float, ends: list[float], tokens: list[int]) -> dict:
    """First step (compilation), median step, steady tokens/s over the gaps that are not one-offs."""
    if not ends:
        return {"steps": 0}
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    out = {"steps": len(ends), "first_step_s": round(ends[0] - begin, 2)}
    if gaps:
        median = statistics.median(gaps)
        steady = [(g, t) for g, t in zip(gaps, tokens[1:]) if g <= 3 * median]
        out.update({"median_step_ms": round(median * 1e3, 1),
                    "one_off_gaps_s": round(sum(g for g in gaps if g > 3 * median), 2),
                    "steady_tok_s": round(sum(t for _, t in steady) / max(sum(g for g, _ in steady), 1e-9))})
    return out


def peak_memory(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    return {"peak_alloc_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_GiB": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encode(model_dir: str, path: str):
    from transformers import AutoTokenizer

    from qaforge.dataset import read_records
    from qaforge.train.data import ChatEncoder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples, _ = ChatEncoder(tokenizer, max_seq_len=512).encode_records(read_records(path))
    return tokenizer, [(s.input_ids, s.labels) for s in samples]


def run_plain(files: dict, device: str, max_steps: int, progress: Progress, compiled: str | None,
              out_dir: Path) -> dict:
    """The plain HF + PEFT script (module docstring); `compiled` wraps the model in torch.compile: "default"
    (shapes static until a new one recompiles, then dynamic) or "dynamic" (`dynamic=True` from the start)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    start = time.perf_counter()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokenizer, train = encode(files["model"], files["train"])
    _, exam = encode(files["model"], files["exam"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = AutoModelForCausalLM.from_pretrained(files["model"], dtype=dtype).to(device)
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.1, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    call = model if compiled is None else torch.compile(model, dynamic=True if compiled == "dynamic" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1.5e-4, weight_decay=0.01)
    per_epoch = math.ceil(len(train) / 16)
    total = min(max_steps, 2 * per_epoch) if max_steps > 0 else 2 * per_epoch
    sched = get_cosine_schedule_with_warmup(opt, round(0.03 * total), total)
    rng, step, eval_losses = random.Random(42), 0, []
    progress.begin = time.perf_counter()
    while step < total:
        model.train()
        order = list(train)
        rng.shuffle(order)
        for i in range(0, len(order), 16):
            batch = order[i:i + 16]
            loss = call(**padded(batch, device, pad_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == 1 or step % 10 == 0:  # a plain script prints its loss now and then (a GPU sync)
                last_loss = loss.item()
            progress.step(sum(len(ids) for ids, _ in batch), (len(batch), max(len(ids) for ids, _ in batch)))
            if step >= total:
                break
        eval_losses.append(plain_eval(call, model, exam, device, pad_id))
    _sync(device)
    model.save_pretrained(out_dir / "adapter")
    return {"wall_s": round(time.perf_counter() - start, 1), **progress.summary(), "planned_steps": total,
            "eval_loss": eval_losses, "last_logged_loss": round(last_loss, 4),
            "compile_stats": compile_cache.stats() if compiled else None, **peak_memory(device)}


@torch.no_grad()
def plain_eval(call, model, exam, device: str, pad_id: int) -> float:
    model.eval()
    losses = [call(**padded(exam[i:i + 16], device, pad_id)).loss.item() for i in range(0, len(exam), 16)]
    return round(sum(losses) / max(len(losses), 1), 4)


def run_qaforge(files: dict, device: str, max_steps: int, progress: Progress, compile_: bool | None,
                out_dir: Path) -> dict:
    """`qaforge train --profile fast_v7 --no-rouge` on the shared files (compile cache from the environment)."""
    from transformers import TrainerCallback

    from qaforge.train.profiles import load_profile
    from qaforge.train.trainer import train

    class Steps(TrainerCallback):
        seen = 0

        def on_train_begin(self, args, state, control, **kwargs):
            progress.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = int(state.num_input_tokens_seen or 0)
            progress.step(now - Steps.seen)  # a packed row of this many tokens: its shape
            Steps.seen = now

    start = time.perf_counter()
    config = load_profile("fast_v7", model=files["model"], data=files["train"], exam=files["exam"],
                          output_dir=str(out_dir), rouge_eval=False, logging_steps=20, device=device,
                          max_steps=max_steps if max_steps > 0 else None, compile=compile_)
    results = train(config, callbacks=[Steps()])
    speed = results.get("speed", {})
    return {"wall_s": round(time.perf_counter() - start, 1), **progress.summary(),
            "planned_steps": results["train"]["planned_steps"], "train_runtime_s": results["train"]["train_runtime_s"],
            "eval_loss": [e["eval_loss"] for e in results["eval_loss_per_epoch"]],
            "time_split": speed.get("time_split"), "notices": speed.get("notices"),
            "compile_paid_off": speed.get("compile_paid_off"), "fast_path": results["fast_path"],
            "timing": results["timing"], "compile_stats": results["fast_path"].get("compile_stats"),
            **peak_memory(device)}
