"""Model and tokenizer loading. Everything is a Hugging Face directory; nothing downloads unless
the user runs `qaforge download`."""

from __future__ import annotations

import os
from pathlib import Path

from qaforge.families import SUPPORTED_ARCHITECTURES, model_family  # noqa: F401  (re-exported)

HUB_SOURCES = ("hf", "modelscope")
DTYPES = ("float32", "bfloat16", "float16")


def pick_device(device: str = "auto") -> str:
    """The one device rule: 'auto' is CUDA when a GPU is visible, else CPU; an explicit CUDA device
    without a GPU is an error rather than a silent CPU run."""
    import torch

    if device in ("auto", None, ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but no CUDA GPU is visible")
    return device


def pick_dtype(dtype: str = "auto", device: str = "cpu") -> str:
    """The one dtype rule: 'auto' is bfloat16 on CUDA (the original course project's setting) and float32 on CPU (bf16
    matmuls are slow there and the equality tests need fp32). Returns the torch attribute name."""
    if dtype in ("auto", None, ""):
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {DTYPES}, got {dtype!r}")
    return dtype


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _modelscope_cache(name: str) -> Path:
    root = Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope" / "hub"))
    return root / "models" / name


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local directory, `tiny` (the embedded tiny Qwen3, built on first use), a `.gguf` file
    (converted once into a cached HF directory, see qaforge/gguf.py), or a hub id already in the
    Hugging Face or ModelScope cache."""
    if str(name_or_path).lower().endswith(".gguf"):
        from qaforge.gguf import cached_hf_dir

        return cached_hf_dir(name_or_path)
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
