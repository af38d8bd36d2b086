"""Two different LoRA adapters of one base model, saved with PEFT as `qaforge train` saves them, and each
adapter merged with PEFT (`merge_and_unload`): the references that served adapters must reproduce."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

# a: every projection the engine fuses, rsLoRA scaling; b: another rank, alpha and a subset of modules
ADAPTERS = {
    "a": dict(r=8, lora_alpha=16, use_rslora=True, seed=1,
              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "b": dict(r=4, lora_alpha=32, use_rslora=False, seed=2, target_modules=["q_proj", "v_proj", "down_proj"]),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def make_adapter(base: Path, out: Path, *, r: int, lora_alpha: int, use_rslora: bool, seed: int,
                 target_modules: list[str], b_std: float = 0.05) -> Path:
    """A PEFT adapter whose B matrices are random (PEFT initializes B to 0, which would change nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=lora_alpha, use_rslora=use_rslora, target_modules=target_modules,
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, b_std)
    peft_model.save_pretrained(out)
    return out


def merge(base: Path, adapter: Path, out: Path) -> Path:
    """The adapter merged into the base weights with PEFT, saved as a normal HF model directory."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    return out


def adapters_and_merged(base: Path, root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """name -> adapter directory and name -> merged model directory, built once under `root`."""
    adapters, merged = {}, {}
    for name, spec in ADAPTERS.items():
        adapters[name] = root / f"adapter_{name}"
        merged[name] = root / f"merged_{name}"
        if not (merged[name] / "config.json").is_file():
            make_adapter(base, adapters[name], **spec)
            merge(base, adapters[name], merged[name])
    return adapters, merged
