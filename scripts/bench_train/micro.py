"""T1 micro-benchmarks (docs/benchmarks.md defines T1): plain HF + PEFT and qaforge's training step on random
Qwen3-0.6B weights, 16 sequences per step, synthetic 16 x 512 rows or the seed's length distribution.

T1: LoRA r 32 / alpha 64 / dropout 0.1 on q,k,v,o,gate,up,down, AdamW; tokens/s over the measured steps after
warm-up. The baseline pads each batch to its longest sample (dynamic padding, the stronger baseline); tokens/s
counts real tokens only, for both. Each variant runs in its own process (scripts/bench_train/worker.py).
"""

from __future__ import annotations

import gc
import time

import torch

from scripts.bench_train.workload import TARGETS, make_batches, packed, padded, qwen3_06b_config

# variant name -> measure() arguments
VARIANTS = {
    "baseline_synthetic": ("HF+PEFT 16x512", "baseline", "synthetic", {}),
    "qaforge_synthetic": ("qaforge 16x512 packed", "qaforge", "synthetic", {}),
    "qaforge_synthetic_fused": ("qaforge fused, no CUDA graphs", "qaforge", "synthetic", {"variant": "fused"}),
    "qaforge_synthetic_layers": ("qaforge, HF layers compiled", "qaforge", "synthetic", {"variant": "layers"}),
    "qaforge_synthetic_nocompile": ("qaforge fused, no compile", "qaforge", "synthetic", {"compile_layers": False}),
    "baseline_reallen": ("HF+PEFT seed lengths (dyn. pad)", "baseline", "real", {}),
    "qaforge_reallen": ("qaforge seed lengths (packed)", "qaforge", "real", {}),
}


def run_micro(name: str, steps: int, warmup: int) -> dict:
    if name == "varlen_check":
        return check_varlen_attention()
    label, path, kind, kwargs = VARIANTS[name]
    return measure(label, path, kind, steps, warmup, **kwargs)


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
