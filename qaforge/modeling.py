"""Model and tokenizer loading. Everything is a Hugging Face directory; nothing downloads unless
the user runs `qaforge download`."""

from __future__ import annotations

import os
from pathlib import Path

HUB_SOURCES = ("hf", "modelscope")


def _modelscope_cache(name: str) -> Path:
    root = Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope" / "hub"))
    return root / "models" / name


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local directory, `tiny` (the embedded tiny Qwen3, built on first use), or a hub id already in
    the Hugging Face or ModelScope cache."""
    if str(name_or_path) == "tiny":
        from qaforge.paths import RUNS_DIR
        from qaforge.tiny import build_tiny

        return build_tiny(RUNS_DIR / "tiny_model")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is a directory but has no config.json: not a HF model directory")
        return path
    name = str(name_or_path)
    if "/" in name and not path.exists():
        ms = _modelscope_cache(name)
        if (ms / "config.json").exists():
            return ms
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # noqa: BLE001 - any miss means: not cached
            pass
    raise FileNotFoundError(
        f"model {name!r} is neither a local directory nor in the HF/ModelScope cache; "
        f"fetch it once with `qaforge download {name}` (needs internet), or pass a local path"
    )


def download(name: str, out: Path | None = None, source: str = "hf") -> Path:
    """Fetch a model from Hugging Face or ModelScope into `out` (or the library's cache)."""
    if source not in HUB_SOURCES:
        raise ValueError(f"source must be one of {HUB_SOURCES}, got {source!r}")
    if source == "modelscope":
        from modelscope import snapshot_download  # optional dependency

        return Path(snapshot_download(name, local_dir=str(out) if out else None))
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, local_dir=str(out) if out else None))


def load_tokenizer(name_or_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


def load_hf_model(name_or_path, device: str = "cpu", dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path),
                                                 dtype=getattr(torch, dtype))
    return model.to(device).eval()
