"""The model families qaforge supports in every stage (train's fused path, the native engine, evaluate,
serve). Its own module so that loaders below `modeling` (qaforge/gguf.py) can check a family without
importing `modeling`, which imports them."""

from __future__ import annotations

# HF architecture name -> family. One home: stages ask `model_family` instead of testing names themselves.
SUPPORTED_ARCHITECTURES = {"Qwen3ForCausalLM": "qwen3", "Qwen2ForCausalLM": "qwen2"}


def model_family(hf_config) -> str:
    """'qwen3' or 'qwen2' for a config (a dict from config.json or a transformers PretrainedConfig);
    a ValueError naming the architecture and the supported ones for anything else."""
    get = hf_config.get if isinstance(hf_config, dict) else (lambda k, d=None: getattr(hf_config, k, d))
    archs = list(get("architectures") or [])
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    model_type = get("model_type")
    if model_type in SUPPORTED_ARCHITECTURES.values():
        return model_type
    name = ", ".join(archs) or f"model_type {model_type!r}"
    raise ValueError(f"unsupported architecture {name}: qaforge supports "
                     f"{', '.join(SUPPORTED_ARCHITECTURES)} (the vLLM serving backend serves what vLLM serves)")
