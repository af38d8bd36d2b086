"""The model side of a training run: base model + LoRA adapters + the fast-path pieces the config
asks for, and at the end the merged, self-contained model.

The pieces themselves live in `fast.py` (varlen attention, fused loss, per-layer compile) and
`fused_layer.py` (fused decoder layers, CUDA graphs); this module decides which of them a run gets.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from qaforge.modeling import model_family
from qaforge.train import compile_cache, fast
from qaforge.train.dist import world_size
from qaforge.train.fused_layer import install_fused_layers, uninstall_fused_layers
from qaforge.train.profiles import TrainConfig

log = logging.getLogger("qaforge.train")

# Break-even of CUDA graphs: their one-off cost (extra compilation + one recording per padded row length)
# divided by what they save per forward+backward. The measurements: docs/benchmarks.md, "Training defaults".
CUDA_GRAPHS_MIN_STEPS = 1000
DDP_CUDA_GRAPHS_ENV = "QAFORGE_DDP_CUDA_GRAPHS"  # "1": CUDA graphs under DDP too (for the 2-GPU measurement only)


def use_cuda_graphs(config: TrainConfig, device: str, use_compile: bool, forward_passes: int | None) -> bool:
    """config.cuda_graphs, with None decided by the run's length; never without CUDA + compile or under DDP."""
    if not (use_compile and device.startswith("cuda")):
        return False
    wanted = config.cuda_graphs
    if wanted is None:
        wanted = forward_passes is not None and forward_passes >= CUDA_GRAPHS_MIN_STEPS
        log.info("cuda_graphs auto: %s (%s forward passes planned, threshold %d)", wanted, forward_passes,
                 CUDA_GRAPHS_MIN_STEPS)
    if wanted and world_size() > 1 and os.environ.get(DDP_CUDA_GRAPHS_ENV) != "1":
        # the graphs' pooled outputs are overwritten at the next replay while DDP's all-reduce reads gradients
        # on its own stream: unsafe until measured on 2 GPUs (docs/scaling.md); the fused layers still run
        log.warning("cuda_graphs is off under DDP (world size %d): docs/scaling.md says why; %s=1 forces it "
                    "for the measurement", world_size(), DDP_CUDA_GRAPHS_ENV)
        return False
    return bool(wanted)


def check_architecture(model_path: Path) -> str:
    """The model's family ('qwen3', 'qwen2') from its config alone: an unsupported architecture fails
    here, with the supported list, before any weights are read."""
    return model_family(AutoConfig.from_pretrained(model_path))


def build_model(config: TrainConfig, model_path: Path, device: str, dtype: torch.dtype, for_training: bool = True,
                forward_passes: int | None = None) -> tuple[PeftModel, dict[str, Any]]:
    """Base model + LoRA adapters + the fast path pieces the config asks for, and what was switched on."""
    check_architecture(model_path)
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
    on_cuda = device.startswith("cuda")
    use_compile = bool(config.compile if config.compile is not None else on_cuda) and for_training
    cuda_graphs = use_cuda_graphs(config, device, use_compile, forward_passes)
    cache = setup_compile_cache(config, causal_lm.config, dtype, cuda_graphs) if use_compile else None
    if config.fused_loss:
        fast.install_fused_loss(causal_lm, config.loss_chunk_size, compile=use_compile)
    fused_layers = 0
    if config.fused_layers and attention == "varlen":
        fused_layers = install_fused_layers(causal_lm, compile=use_compile, cuda_graphs=cuda_graphs,
                                            pad_to_multiple_of=config.pad_to_multiple_of if cuda_graphs else None)
    if use_compile and not fused_layers:
        fast.compile_decoder_layers(causal_lm)
    layers = len(causal_lm.model.layers)
    return peft_model, {"attn_implementation": attn_impl, "compile": use_compile, "fused_layers": fused_layers,
                        "layers": layers, "fallback": fallback_reason(config, attention, fused_layers, layers,
                                                                      use_compile),
                        "cuda_graphs": bool(getattr(causal_lm, "_qaforge_cuda_graphs", False)),
                        "fused_loss": config.fused_loss, "dtype": str(dtype).replace("torch.", ""),
                        "compile_cache": cache.to_dict() if cache else None, "_compile_cache": cache}


def setup_compile_cache(config: TrainConfig, hf_config: Any, dtype: torch.dtype,
                        cuda_graphs: bool) -> compile_cache.CompileCache:
    """The run's stable compile-cache folder (qaforge.train.compile_cache), active before the first compile."""
    key = compile_cache.cache_key(hf_config, {
        "dtype": str(dtype), "lora_r": config.lora_r, "targets": sorted(config.target_modules),
        "cuda_graphs": cuda_graphs, "pad": config.pad_to_multiple_of if cuda_graphs else None,
        "fused_layers": config.fused_layers, "loss_chunk": config.loss_chunk_size})
    cache = compile_cache.peek(compile_cache.resolve(getattr(config, "compile_cache", None), key))
    return compile_cache.activate(cache)


def fallback_reason(config: TrainConfig, attention: str, fused_layers: int, layers: int,
                    use_compile: bool) -> str | None:
    """Why this run does not get the fused fast path on every layer (None when it does)."""
    if not config.fused_layers:
        return None  # asked for by the user: not a fallback
    if attention != "varlen":
        return f"attention={attention!r}: the fused layers need packed rows with varlen attention"
    if fused_layers < layers:
        how = "compiled" if use_compile else "eager"
        return (f"only {fused_layers} of {layers} decoder layers run the fused function; the others run HF's own "
                f"layer forward ({how}), measured slower")
    return None


def save_merged(peft_model: PeftModel, tokenizer: Any, model_path: Path, out_dir: Path) -> Path:
    """Merge LoRA into the base weights and save a self-contained HF directory (`<out_dir>/merged_model`)."""
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
