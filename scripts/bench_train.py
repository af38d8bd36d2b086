"""GPU training benchmark: workload T1 (docs/benchmarks.md defines it) with plain HF + PEFT and with
qaforge's training path, in ONE process on one GPU, plus the full fast_v7 profile end to end.

T1: Qwen3-0.6B architecture (random bf16 weights: real ones cannot be downloaded there and speed does
not depend on them), LoRA r 32 / alpha 64 / dropout 0.1 on q,k,v,o,gate,up,down, 16 sequences per
step, AdamW; tokens/s over 20 steps after 5 warm-up steps. Two data shapes:

* synthetic: 16 x 512 tokens, every token real (the anchor's shape; packing cannot help here);
* real-length: 16 samples per step drawn from the length distribution of the original course project's
  dataset (3,099 pairs, Qwen3 token counts estimated from characters, capped at 512; mean ~268), prompt tokens unlabelled.
  The baseline pads each batch to its longest sample (dynamic padding, the stronger baseline);
  tokens/s counts real tokens only, for both.

Then `fast_v7` through `qaforge.train.trainer.train` (Trainer, eval per epoch, checkpoints, merge)
on a synthetic 3,099 + 193 sample dataset with the same length distribution: wall time.

Usage (device, from the repository root):  PYTHONUNBUFFERED=1 python3 -m scripts.bench_train --out $OUT
Options: --skip-profile, --steps N, --warmup N, --cold, --only baseline,qaforge,...

Any HF model directory instead (e.g. the real Qwen2.5-Coder-0.5B-Instruct), same process, same batches:
    python3 -m scripts.bench_train --model DIR [--data train.jsonl [--exam exam.jsonl]] --out $OUT
fast_v7's workload (LoRA r 32 / alpha 64 / dropout 0.1 on all 7 projections, 16 samples per step, lr
1.5e-4, grad clipping 1.0) as four variants: `model_hf_peft` (a user's plain script: from_pretrained
in bf16 with transformers' default attention, get_peft_model, dynamically padded batches with an
attention mask, `model(**batch).loss`, torch's default AdamW), `model_hf_peft_compile` (the same model
wrapped in `torch.compile`), `model_qaforge` (the model exactly as `qaforge train` builds it:
trainer.build_model with the fast_v7 profile, packed rows, bf16 autocast, fused AdamW like the Trainer)
and `model_qaforge_graphs` (+ CUDA graphs); then `model_profile_fast_v7`, the whole `qaforge train`
run on --data (else synthetic text at the course dataset's lengths). Batches come from --data through the
model's chat template, else random ids at the course dataset's lengths. `--device cpu` is a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time
import traceback
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The course project's dataset (pmpp_qa_v2.jsonl, 3,099 pairs): histogram of estimated Qwen3 token lengths of the
# full chat sample (system + question + answer + template), 8-token bins (lower edge, count),
# 512 = truncated. Estimate: 0.7 tokens per CJK character, 0.3 per other character.
SEED_LENGTH_HISTOGRAM = [
    [104, 1], [112, 3], [120, 5], [128, 9], [136, 21], [144, 56], [152, 75], [160, 118], [168, 169],
    [176, 171], [184, 192], [192, 192], [200, 143], [208, 120], [216, 117], [224, 79], [232, 99],
    [240, 80], [248, 92], [256, 78], [264, 77], [272, 93], [280, 74], [288, 64], [296, 59], [304, 67],
    [312, 76], [320, 53], [328, 62], [336, 60], [344, 37], [352, 32], [360, 36], [368, 26], [376, 29],
    [384, 21], [392, 25], [400, 24], [408, 22], [416, 15], [424, 30], [432, 18], [440, 12], [448, 13],
    [456, 9], [464, 7], [472, 7], [480, 11], [488, 9], [496, 8], [504, 12], [512, 191]]
SEED_PROMPT_TOKENS = 87  # mean estimated prompt length (system + question + template)


def sample_lengths(n: int, rng: random.Random) -> list[int]:
    edges = [e for e, _ in SEED_LENGTH_HISTOGRAM]
    weights = [c for _, c in SEED_LENGTH_HISTOGRAM]
    return [min(512, e + (rng.randrange(8) if e < 512 else 0)) for e in rng.choices(edges, weights, k=n)]


def qwen3_06b_config():
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, eos_token_id=151645, bos_token_id=151643,
                       pad_token_id=151643)


def make_batches(kind: str, n: int, seed: int = 0):
    """n steps of 16 samples: list of (input_ids list, labels list) per step."""
    rng = random.Random(seed)
    steps = []
    for _ in range(n):
        samples = []
        lengths = [512] * 16 if kind == "synthetic" else sample_lengths(16, rng)
        for length in lengths:
            ids = [rng.randrange(1000, 150000) for _ in range(length)]
            if kind == "synthetic":
                labels = list(ids)
                labels[0] = -100  # so the packed row never predicts across samples (same count as padded)
            else:
                prompt = min(length - 8, max(40, int(rng.gauss(SEED_PROMPT_TOKENS, 15))))
                labels = [-100] * prompt + ids[prompt:]
            samples.append((ids, labels))
        steps.append(samples)
    return steps


def padded(samples, device, pad_id: int = 151643):
    longest = max(len(i) for i, _ in samples)
    ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, (i, lab) in enumerate(samples):
        ids[row, :len(i)] = torch.tensor(i)
        labels[row, :len(i)] = torch.tensor(lab)
        mask[row, :len(i)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def packed(samples, device):
    from qaforge.train.data import SFTCollator
    # what the Trainer's collator makes: packed row + host-side label positions (no nonzero() sync)
    batch = SFTCollator(0, packing=True, label_positions=True)([{"input_ids": i, "labels": lab} for i, lab in samples])
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def build(path: str, compile_layers: bool = True, fused_loss: bool = True, dropout: float = 0.1,
          variant: str = "graphs"):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3ForCausalLM

    from qaforge.train import fast

    attn = "sdpa" if path == "baseline" else fast.register_varlen_attention()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM._from_config(qwen3_06b_config(), attn_implementation=attn, dtype=torch.bfloat16)
    model.train()
    peft_model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=dropout,
                                                  target_modules=TARGETS, task_type="CAUSAL_LM"))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if path == "baseline":  # exactly the anchors' plain HF + PEFT step (docs/benchmarks.md)
        return peft_model, torch.optim.AdamW(params, lr=1.5e-4, weight_decay=0.01)
    causal_lm = peft_model.get_base_model()
    if fused_loss:
        fast.install_fused_loss(causal_lm, chunk_size=4096)
    if variant in ("fused", "graphs"):  # qaforge.train.fused_layer; "graphs" (+ CUDA graphs) is the Trainer's default
        from qaforge.train.fused_layer import install_fused_layers
        install_fused_layers(causal_lm, compile=compile_layers, cuda_graphs=variant == "graphs")
    elif compile_layers:  # regional compile of HF's own layers
        fast.compile_decoder_layers(causal_lm)
    return peft_model, torch.optim.AdamW(params, lr=1.5e-4, weight_decay=0.01, fused=True)


def measure(name, path, kind, steps=25, warmup=5, compile_layers=True, fused_loss=True, dropout=0.1,
            variant="graphs"):
    torch.cuda.empty_cache()
    model, opt = build(path, compile_layers, fused_loss, dropout, variant)
    batches = make_batches(kind, steps)
    real_tokens = [sum(len(i) for i, _ in s) for s in batches]
    to_device = padded if path == "baseline" else packed
    first_loss = None
    grad_norms: list[float] = []

    def step(samples):
        batch = to_device(samples, "cuda")
        if path == "baseline":
            loss = model(**batch).loss
        else:  # what qaforge's Trainer does: bf16 autocast over fp32 LoRA weights, grad clipping
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**batch).loss
        loss.backward()
        if grad_norms is not None and not grad_norms:  # proof that backward reached the adapters
            grads = [p.grad.float().norm() for p in model.parameters() if p.requires_grad and p.grad is not None]
            grad_norms.append(torch.stack(grads).norm().item() if grads else 0.0)
        if path != "baseline":
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t_compile = time.time()
    warmup_steps_s = []
    for i in range(warmup):
        t_step = time.time()
        loss = step(batches[i])
        if i == 0:
            first_loss = loss.item()
        torch.cuda.synchronize()
        warmup_steps_s.append(round(time.time() - t_step, 2))
    warmup_s = time.time() - t_compile
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    for samples in batches[warmup:]:
        loss = step(samples)
    torch.cuda.synchronize()
    elapsed = time.time() - start
    if path != "baseline":
        from torch._dynamo.utils import compile_times
        print(f"[{name}] compile phases:\n{compile_times()}"[:1500], flush=True)
    n = steps - warmup
    result = {"name": name, "tok_s": round(sum(real_tokens[warmup:]) / elapsed),
              "step_ms": round(elapsed / n * 1000, 1),
              "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
              "first_step_loss": round(first_loss, 5), "first_step_grad_norm": grad_norms[0], "last_loss": round(loss.item(), 4),
              "real_tokens_per_step": round(sum(real_tokens[warmup:]) / n),
              "warmup_s": round(warmup_s, 1), "warmup_steps_s": warmup_steps_s,
              "peak_reserved_GiB": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    # The same batches once more: every row shape has been seen (and, with CUDA graphs, recorded), so
    # this pass is the steady state a long run converges to. Same pass for the baseline.
    start = time.time()
    for samples in batches[warmup:]:
        loss = step(samples)
    torch.cuda.synchronize()
    result["tok_s_second_pass"] = round(sum(real_tokens[warmup:]) / (time.time() - start))
    del model, opt
    gc.collect()
    torch.cuda.empty_cache()
    return result


def check_varlen_attention():
    """varlen kernel vs per-sample causal SDPA on bf16 GQA inputs: relative error."""
    from qaforge.train import fast
    torch.manual_seed(1)
    lengths = [100, 512, 37, 300]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device="cuda")
    empty_tail = torch.cat([cu, cu[-1:].repeat(3)])  # the empty trailing segments fused_layer pads with
    q = torch.randn(1, 16, sum(lengths), 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, sum(lengths), 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    out, _ = fast.varlen_attention_forward(None, q, k, v, None, scaling=128 ** -0.5, cu_seq_lens_q=cu,
                                           cu_seq_lens_k=cu, max_length_q=512, max_length_k=512)
    ref = fast._segment_sdpa(q.double(), k.double(), v.double(), cu, 128 ** -0.5).transpose(1, 2)
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    q.requires_grad_()
    padded, _ = fast.varlen_attention_forward(None, q, k, v, None, scaling=128 ** -0.5, cu_seq_lens_q=empty_tail,
                                              cu_seq_lens_k=empty_tail, max_length_q=512, max_length_k=512)
    (grad_padded,) = torch.autograd.grad(padded.float().square().sum(), q)
    out, _ = fast.varlen_attention_forward(None, q, k, v, None, scaling=128 ** -0.5, cu_seq_lens_q=cu,
                                           cu_seq_lens_k=cu, max_length_q=512, max_length_k=512)
    (grad,) = torch.autograd.grad(out.float().square().sum(), q)
    return {"varlen_kwargs": {k_: str(v_) for k_, v_ in (fast._VARLEN_KW or {}).items()}, "rel_err_vs_fp64": rel,
            "empty_segments_max_diff_out": (padded - out).abs().max().item(),
            "empty_segments_max_diff_grad": (grad_padded - grad).abs().max().item()}


def synthetic_profile_dataset(out_dir: Path, n_train=3099, n_exam=193):
    """Tokenizer from the project's corpus + QA texts whose token lengths follow that dataset's histogram."""
    from qaforge.chat import DEFAULT_SYSTEM_PROMPT
    from qaforge.paths import DEFAULT_CORPUS_DIR
    from qaforge.tiny import read_corpus_text, train_tokenizer

    texts = read_corpus_text(DEFAULT_CORPUS_DIR)
    tokenizer = train_tokenizer(texts, vocab_size=8192)
    corpus = "".join(texts).replace("\n", " ")
    chars_per_token = len(corpus) / len(tokenizer(corpus, add_special_tokens=False)["input_ids"])
    overhead = len(tokenizer(DEFAULT_SYSTEM_PROMPT)["input_ids"]) + 16
    rng = random.Random(0)

    def snippet(tokens):
        n_chars = max(4, int(tokens * chars_per_token))
        start = rng.randrange(0, len(corpus) - n_chars - 1)
        return corpus[start:start + n_chars]

    def write(path, n):
        with open(path, "w", encoding="utf-8") as f:
            for length in sample_lengths(n, rng):
                q_tokens = max(8, int(rng.gauss(SEED_PROMPT_TOKENS, 15)) - overhead)
                a_tokens = max(8, length - overhead - q_tokens)
                f.write(json.dumps({"instruction": snippet(q_tokens) + "？", "input": "",
                                    "output": snippet(a_tokens), "difficulty": rng.choice(["easy", "medium", "hard"])},
                                   ensure_ascii=False) + "\n")

    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir / "train.jsonl", n_train)
    write(out_dir / "exam.jsonl", n_exam)
    return tokenizer


def run_profile(work: Path, cuda_graphs: bool | None = None):
    """fast_v7 end to end through qaforge.train.trainer.train on a random Qwen3-0.6B."""
    from transformers import GenerationConfig, Qwen3ForCausalLM

    from qaforge.train.profiles import load_profile
    from qaforge.train.trainer import train

    t0 = time.time()
    tokenizer = synthetic_profile_dataset(work / "data")
    cfg = qwen3_06b_config()
    cfg.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg.pad_token_id = cfg.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model_dir = work / "qwen3_0.6b_random"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    GenerationConfig(eos_token_id=[cfg.eos_token_id], pad_token_id=cfg.pad_token_id).save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()
    setup_s = time.time() - t0
    config = load_profile("fast_v7", model=str(model_dir), data=str(work / "data/train.jsonl"),
                          exam=str(work / "data/exam.jsonl"), output_dir=str(work / "run"),
                          rouge_eval=False, logging_steps=20, cuda_graphs=cuda_graphs)
    t1 = time.time()
    results = train(config)
    wall = time.time() - t1
    return {"profile": "fast_v7", "wall_s_train_call": round(wall, 1), "setup_s (data+model, not counted)": round(setup_s, 1),
            "train_runtime_s": results["train"]["train_runtime_s"], "global_step": results["train"]["global_step"],
            "tokens_seen": results["train"]["tokens_seen"], "tokens_per_second": round(results["tokens_per_second"]),
            "eval_loss_per_epoch": results["eval_loss_per_epoch"], "train_loss": results["train"]["train_loss"],
            "peak_memory": results["peak_memory"], "data": results["data"], "fast_path": results["fast_path"],
            "timing": results.get("timing")}


# --------------------------------------------------------------------------------------------
# --model DIR: the same comparison on any HF model directory
# --------------------------------------------------------------------------------------------
MODEL_VARIANTS = ("model_hf_peft", "model_hf_peft_compile", "model_qaforge", "model_qaforge_graphs")


def model_batches(model_dir: str, data: str | None, n: int, seed: int = 0):
    """(n steps of 16 (input_ids, labels) samples, pad id): --data encoded with the model's chat template
    (fast_v7's max_seq_len 512, assistant-only labels), else random ids at the course dataset's lengths."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rng = random.Random(seed)
    if data:
        from qaforge.dataset import read_records
        from qaforge.train.data import ChatEncoder

        samples, _ = ChatEncoder(tokenizer, max_seq_len=512).encode_records(read_records(data))
        pool, order = [(s.input_ids, s.labels) for s in samples], []
        while len(order) < 16 * n:  # epochs of shuffled samples, as a DataLoader with shuffle=True draws them
            rng.shuffle(pool)
            order += pool
        return [order[i * 16:(i + 1) * 16] for i in range(n)], pad_id
    vocab = len(tokenizer)
    steps = []
    for _ in range(n):
        samples = []
        for length in sample_lengths(16, rng):
            ids = [rng.randrange(vocab // 10, vocab) for _ in range(length)]
            prompt = min(length - 8, max(40, int(rng.gauss(SEED_PROMPT_TOKENS, 15))))
            samples.append((ids, [-100] * prompt + ids[prompt:]))
        steps.append(samples)
    return steps, pad_id


def build_model_variant(model_dir: str, variant: str, device: str, planned_passes: int):
    """(callable model, the PEFT model, optimizer, info) for one --model variant."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if variant.startswith("model_hf_peft"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
        model.train()
        peft_model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.1,
                                                      target_modules=TARGETS, task_type="CAUSAL_LM"))
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1.5e-4,
                                weight_decay=0.01)
        call = torch.compile(peft_model) if variant == "model_hf_peft_compile" else peft_model
        return call, peft_model, opt, {"attn_implementation": model.config._attn_implementation}
    from qaforge.train.profiles import load_profile
    from qaforge.train.trainer import build_model

    config = load_profile("fast_v7", model=model_dir, cuda_graphs=variant == "model_qaforge_graphs",
                          device=device)
    peft_model, info = build_model(config, Path(model_dir), device, dtype, forward_passes=planned_passes)
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1.5e-4,
                            weight_decay=0.01, fused=device == "cuda")  # the Trainer's adamw_torch_fused
    return peft_model, peft_model, opt, info


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_model(model_dir: str, variant: str, batches, pad_id: int, warmup: int, device: str):
    """tokens/s (real tokens) of one variant on the given batches, after `warmup` timed warm-up steps."""
    if device == "cuda":
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    call, peft_model, opt, info = build_model_variant(model_dir, variant, device, planned_passes=len(batches))
    plain = variant.startswith("model_hf_peft")
    params = [p for p in peft_model.parameters() if p.requires_grad]

    def step(samples):
        if plain:
            batch = padded(samples, device, pad_id)
            loss = call(**batch).loss
        else:
            batch = packed(samples, device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = call(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    warmup_steps_s, first_loss = [], None
    for i in range(warmup):
        t = time.time()
        loss = step(batches[i])
        first_loss = loss.item() if first_loss is None else first_loss
        _sync(device)
        warmup_steps_s.append(round(time.time() - t, 2))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    passes = []
    for _ in range(2):  # the second pass: every row shape seen (and with CUDA graphs recorded) once
        start = time.time()
        for samples in batches[warmup:]:
            loss = step(samples)
        _sync(device)
        passes.append(time.time() - start)
    real = sum(len(i) for s in batches[warmup:] for i, _ in s)
    n = len(batches) - warmup
    result = {"name": variant, "tok_s": round(real / passes[0]), "step_ms": round(passes[0] / n * 1000, 1),
              "tok_s_second_pass": round(real / passes[1]), "first_step_s": warmup_steps_s[0],
              "warmup_steps_s": warmup_steps_s, "first_step_loss": round(first_loss, 5),
              "last_loss": round(loss.item(), 4), "real_tokens_per_step": round(real / n),
              "padded_tokens_per_step": round(sum(16 * max(len(i) for i, _ in s) for s in batches[warmup:]) / n),
              "fast_path": info}
    if device == "cuda":
        result["peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del call, peft_model, opt
    gc.collect()
    import torch._dynamo as dynamo
    dynamo.reset()  # each variant pays its own compilation, as in a fresh process
    return result


def run_model_profile(model_dir: str, data: str | None, exam: str | None, work: Path, device: str):
    """`qaforge train --profile fast_v7 --no-rouge` on the model: the Trainer call's wall time."""
    from qaforge.train.profiles import load_profile
    from qaforge.train.trainer import train

    if not data:
        synthetic_profile_dataset(work / "data")
        data, exam = str(work / "data/train.jsonl"), str(work / "data/exam.jsonl")
    config = load_profile("fast_v7", model=model_dir, data=data, exam=exam, output_dir=str(work / "run"),
                          rouge_eval=False, logging_steps=20, device=device)
    t = time.time()
    results = train(config)
    return {"profile": "fast_v7", "wall_s_train_call": round(time.time() - t, 1),
            "train_runtime_s": results["train"]["train_runtime_s"], "global_step": results["train"]["global_step"],
            "tokens_per_second": round(results["tokens_per_second"]), "eval_loss": results["eval_loss"],
            "fast_path": results["fast_path"], "timing": results.get("timing"), "peak_memory": results["peak_memory"]}


def run_model_bench(args, section, runs: dict) -> None:
    batches, pad_id = model_batches(args.model, args.data, args.steps)
    for variant in MODEL_VARIANTS:
        section(variant, lambda variant=variant: measure_model(args.model, variant, batches, pad_id, args.warmup,
                                                               args.device))
    if not args.skip_profile:
        section("model_profile_fast_v7", lambda: run_model_profile(args.model, args.data, args.exam,
                                                                   Path("/tmp/qaforge_bench_model"), args.device))
    base = runs.get("model_hf_peft", {}).get("tok_s")
    print(f"\n{'variant':24} {'tok/s':>9} {'ratio':>6} {'step ms':>8} {'1st step s':>10} {'2nd pass':>9}")
    for key in MODEL_VARIANTS:
        r = runs.get(key, {})
        if "tok_s" in r:
            ratio = r["tok_s"] / base if base else float("nan")
            print(f"{key:24} {r['tok_s']:>9,} {ratio:>6.2f} {r['step_ms']:>8} {r['first_step_s']:>10} "
                  f"{r['tok_s_second_pass']:>9,}")
    if "model_profile_fast_v7" in runs:
        print("fast_v7 profile:", json.dumps(runs["model_profile_fast_v7"])[:600])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--cold", action="store_true",
                        help="fresh, empty torch.compile caches (what a user's first run pays)")
    parser.add_argument("--model", help="an HF model directory: benchmark it (plain HF+PEFT, + torch.compile, "
                                        "qaforge, + CUDA graphs, the fast_v7 run) instead of the random Qwen3-0.6B")
    parser.add_argument("--data", help="with --model: alpaca jsonl for the batches and the fast_v7 run")
    parser.add_argument("--exam", help="with --model and --data: the fast_v7 run's eval split")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run of --model")
    args = parser.parse_args()
    for flag, path in (("--model", args.model), ("--data", args.data), ("--exam", args.exam)):
        if path and not Path(path).exists():
            parser.error(f"{flag} {path}: no such file or directory")
    if (args.data or args.exam or args.device != "cuda") and not args.model:
        parser.error("--data, --exam and --device cpu go with --model")
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    if args.cold:  # before torch compiles anything: Inductor reads these when it first needs a cache
        import tempfile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="qaforge_cold_inductor_")
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="qaforge_cold_triton_")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import peft
    import transformers
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    res = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu, "torch": torch.__version__, "model": args.model,
           "transformers": transformers.__version__, "peft": peft.__version__, "runs": {}}
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}), flush=True)

    def section(key, fn):
        if args.only and key not in args.only.split(","):
            return
        t = time.time()
        try:
            res["runs"][key] = fn()
        except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others
            traceback.print_exc()
            res["runs"][key] = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"[{key}] {json.dumps(res['runs'][key])} ({time.time() - t:.0f}s)", flush=True)
        (out / "bench_train.json").write_text(json.dumps(res, indent=1))

    if args.model:
        run_model_bench(args, section, res["runs"])
        return
    section("varlen_check", check_varlen_attention)
    section("baseline_synthetic", lambda: measure("HF+PEFT 16x512", "baseline", "synthetic", args.steps))
    section("qaforge_synthetic", lambda: measure("qaforge 16x512 packed", "qaforge", "synthetic", args.steps))
    section("qaforge_synthetic_fused", lambda: measure("qaforge fused, no CUDA graphs", "qaforge", "synthetic",
                                                       args.steps, variant="fused"))
    section("qaforge_synthetic_layers", lambda: measure("qaforge, HF layers compiled", "qaforge", "synthetic",
                                                        args.steps, variant="layers"))
    section("qaforge_synthetic_nocompile", lambda: measure("qaforge fused, no compile", "qaforge", "synthetic",
                                                           args.steps, compile_layers=False))
    section("baseline_reallen", lambda: measure("HF+PEFT seed lengths (dyn. pad)", "baseline", "real", args.steps,
                                                                      warmup=args.warmup))
    section("qaforge_reallen", lambda: measure("qaforge seed lengths (packed)", "qaforge", "real", args.steps,
                                                                     warmup=args.warmup))
    if not args.skip_profile:
        section("profile_fast_v7", lambda: run_profile(Path("/tmp/qaforge_bench")))  # default: graphs auto (off)
    if args.only and "profile_fast_v7_graphs" in args.only.split(","):
        section("profile_fast_v7_graphs", lambda: run_profile(Path("/tmp/qaforge_bench_graphs"), cuda_graphs=True))

    runs = res["runs"]
    rows = []
    for kind in ("synthetic", "reallen"):
        base = runs.get(f"baseline_{kind}", {})
        for key in (f"baseline_{kind}", f"qaforge_{kind}", f"qaforge_{kind}_fused", f"qaforge_{kind}_layers",
                    f"qaforge_{kind}_nocompile"):
            r = runs.get(key)
            if not r or "tok_s" not in r:
                continue
            ratio = r["tok_s"] / base["tok_s"] if "tok_s" in base else float("nan")
            second = r.get("tok_s_second_pass", float("nan")) / base.get("tok_s_second_pass", float("nan"))
            rows.append((r["name"], r["tok_s"], r["step_ms"], r["peak_GiB"], r["first_step_loss"], ratio,
                         r.get("tok_s_second_pass"), second))
    res["summary"] = rows
    (out / "bench_train.json").write_text(json.dumps(res, indent=1))
    print(f"\n{'variant':36} {'tok/s':>9} {'step ms':>8} {'peak GiB':>9} {'loss@0':>9} {'ratio':>6} "
          f"{'2nd pass':>9} {'ratio':>6}")
    for name, tok_s, ms, peak, loss0, ratio, tok_s2, ratio2 in rows:
        print(f"{name:36} {tok_s:>9,} {ms:>8} {peak:>9} {loss0:>9} {ratio:>6.2f} {tok_s2 or 0:>9,} {ratio2:>6.2f}")
    if "profile_fast_v7" in runs:
        print("fast_v7 profile:", json.dumps(runs["profile_fast_v7"])[:600])


if __name__ == "__main__":
    main()
