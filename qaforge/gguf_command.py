"""`qaforge convert`: a GGUF file -> a normal Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

import typer

from qaforge.exit_codes import bad_input


def convert(
    file: Path = typer.Argument(..., help="The .gguf file (e.g. Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf)."),
    out: Path = typer.Option(..., "--out", help="Output HF model directory (must not hold a model yet)."),
    dtype: str = typer.Option("bfloat16", help="float32, bfloat16 or float16: the dequantized weights' dtype."),
) -> None:
    """Dequantize a GGUF (Qwen2/Qwen3) into config.json, safetensors, tokenizer with chat template and
    generation_config.json. `--model file.gguf` does this by itself, once, into a cache."""
    from qaforge.gguf import convert as convert_file

    if dtype not in ("float32", "bfloat16", "float16"):
        bad_input(f"must be float32, bfloat16 or float16, got {dtype!r}", "--dtype")
    if (out / "config.json").exists():
        raise typer.BadParameter(f"{out} already holds a model (config.json); pick a new directory",
                                 param_hint="--out")
    try:
        path = convert_file(file, out, dtype)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE") from None
    typer.echo(f"converted {file} -> {path}")
