"""The `qaforge` command: one subcommand per stage. Each function's typed signature is its config;
the stage modules keep heavy imports inside the functions so `qaforge --help` stays fast."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from qaforge.bench.command import bench
from qaforge.evaluate.command import eval as eval_command
from qaforge.exit_codes import CRASH, bad_input
from qaforge.generate.command import generate
from qaforge.gguf_command import convert
from qaforge.split_command import split
from qaforge.judge.command import judge
from qaforge.review.command import review
from qaforge.serve.command import serve
from qaforge.train.command import train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Textbook -> QA dataset -> LoRA fine-tune -> ROUGE-L -> fast serving.")
app.command("generate")(generate)
app.command("train")(train)
app.command("eval")(eval_command)
app.command("serve")(serve)
app.command("bench")(bench)
app.command("convert")(convert)
app.command("split")(split)
app.command("review")(review)
app.command("judge")(judge)


@app.command("tiny")
def tiny(
    out: Path = typer.Option(Path("runs/tiny_model"), help="Output HF model directory."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus folder (default: the packaged sample textbook)."),
    seed: int = typer.Option(0, help="Seed: the same seed and corpus give the same model."),
    pretrain_steps: int = typer.Option(400, help="Causal-LM pretraining steps on the corpus text."),
    force: bool = typer.Option(False, help="Rebuild even if an identical build exists."),
) -> None:
    """Build the embedded tiny Qwen3 (Qwen3ForCausalLM, ~2.6 M params, own BPE tokenizer, Qwen3 chat template)."""
    from qaforge.tiny import TinyConfig, build_tiny

    if corpus is not None and not corpus.exists():
        bad_input(f"no such folder or file: {corpus}", "--corpus")
    path = build_tiny(out, corpus, TinyConfig(seed=seed, pretrain_steps=pretrain_steps), force=force)
    typer.echo(f"tiny Qwen3 ready: {path}")


@app.command("download")
def download(
    name: str = typer.Argument("Qwen/Qwen3-0.6B", help="Hub model id."),
    out: Optional[Path] = typer.Option(None, help="Target directory (default: the hub's cache)."),
    source: str = typer.Option("hf", help="hf (Hugging Face) or modelscope."),
) -> None:
    """Fetch a model once (needs internet); every other command then works offline."""
    from qaforge.modeling import download as fetch

    typer.echo(f"downloaded to {fetch(name, out, source)}")


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where every artifact goes."),
    model: Optional[str] = typer.Option(None, help="Base model (default: build the embedded tiny Qwen3)."),
    corpus: Optional[Path] = typer.Option(None, help="Textbook folder (default: the packaged sample textbook)."),
    exam_size: int = typer.Option(40, help="Held-out exam questions."),
    max_tokens: int = typer.Option(96, help="Answer length limit for evaluation."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """End to end: textbook -> QA dataset -> LoRA fine-tune -> ROUGE-L vs baselines -> HTTP server -> bench."""
    from qaforge.demo import run_demo

    run_demo(out=out, model=model, corpus=corpus, exam_size=exam_size, max_tokens=max_tokens, device=device)


@app.command("profiles")
def profiles() -> None:
    """List the training profiles `qaforge train --profile NAME` takes (a path to a YAML file works too)."""
    from rich.console import Console
    from rich.table import Table

    from qaforge.paths import PROFILES_DIR
    from qaforge.train.profiles import DEFAULT_PROFILE, list_profiles

    table = Table(title=f"Training profiles ({PROFILES_DIR})", title_justify="left")
    table.add_column("profile", style="bold", no_wrap=True)
    table.add_column("description")
    for name, description in list_profiles():
        table.add_row(name + (" (default)" if name == DEFAULT_PROFILE else ""), description)
    console = Console()
    # Piped output (grep, CI logs) gets whole lines instead of rich's 80-column default.
    (console if console.is_terminal else Console(width=160)).print(table)


def main() -> None:
    """The `qaforge` entry point: an unexpected error exits 3, apart from 1 (done with shortfalls)."""
    try:
        app()
    except Exception:  # noqa: BLE001 - anything the commands did not turn into exit 1 or 2 is a crash
        traceback.print_exc()
        sys.exit(CRASH)


if __name__ == "__main__":
    main()
