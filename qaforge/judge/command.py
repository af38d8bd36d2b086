"""`qaforge judge`: an LLM judge over a dataset folder (QA pairs vs their source chunks) or an eval run
(answers vs references, or two systems head to head), through any OpenAI-compatible API.

Only stdlib and typer at module top, so `qaforge --help` stays fast; the work is imported on call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

MODES = ("auto", "dataset", "answers", "pairwise")


def _mode_of(target: Path, mode: str) -> str:
    if mode not in MODES:
        raise typer.BadParameter(f"choose one of {MODES}, got {mode!r}", param_hint="--mode")
    if mode != "auto":
        return mode
    if (target / "qa.json").is_file():
        return "dataset"
    if (target / "eval_results.json").is_file() or target.name == "eval_results.json":
        return "answers"
    raise typer.BadParameter(f"{target} holds neither qa.json (a dataset) nor eval_results.json (an eval run)",
                             param_hint="DIR")


def _echo_summary(mode: str, report: dict) -> None:
    f, u = report["failures"], report["usage"]
    if mode == "dataset":
        typer.echo(f"judged {report['judged']}/{report['items']} pairs; overall mean "
                   f"{report['scores']['overall']['mean'] or 0:.2f}")
    elif mode == "answers":
        for label, s in report["summary"].items():
            rc = s["rank_correlation"]
            typer.echo(f"{label}: overall {s['scores']['overall']['mean'] or 0:.2f} over {s['judged']} answers; "
                       f"Spearman vs ROUGE-L {rc['spearman']}")
    else:
        v, bias = report["a_vs_b"], report["position_bias"]["first_position_wins"]
        typer.echo(f"{report['a']} vs {report['b']}: win {v['win']['rate']:.1%} tie {v['tie']['rate']:.1%} "
                   f"loss {v['loss']['rate']:.1%}; first position wins {bias['rate']:.1%} of decisive verdicts")
    typer.echo(f"calls {u['calls']} ({report['run']['calls_reused']} from the journal), tokens "
               f"{u['prompt_tokens']}+{u['completion_tokens']}, cost {u['cost']:.4f}; "
               f"{f['total']} not judged ({f['parse']} unparseable, {f['call']} failed calls)")
    typer.echo(f"report: {report['files']['report']}")


def judge(
    target: Annotated[Path, typer.Argument(metavar="DIR", help="Dataset folder (qa.json) or eval run folder (eval_results.json).")],
    mode: Annotated[str, typer.Option(help="auto | dataset | answers | pairwise (auto: from the folder's files).")] = "auto",
    system: Annotated[Optional[list[str]], typer.Option(help="Eval system label(s) to judge; pairwise takes two, A then B (default: the run's last two).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder for answers/pairwise files (default: the eval run folder).")] = None,
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus folder, when chunks.jsonl has no texts and report.json's is elsewhere.")] = None,
    api_base: Annotated[Optional[str], typer.Option(help="Judge API base URL (else $OPENAI_BASE_URL or $QAFORGE_GEN_BASE_URL).")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="Judge API key (else $OPENAI_API_KEY or $QAFORGE_GEN_API_KEY).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Judge model (else $QAFORGE_JUDGE_MODEL, else $QAFORGE_GEN_MODEL, else qwen-max).")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds before one request times out (then retried).")] = 120.0,
    max_retries: Annotated[int, typer.Option(help="Retries per request on 429/5xx/timeouts (honours Retry-After).")] = 6,
    response_format: Annotated[str, typer.Option(help="auto | json_schema | json_object | none.")] = "auto",
    temperature: Annotated[float, typer.Option(help="Judge sampling temperature (0: as repeatable as the server allows).")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="max_tokens per judge reply.")] = 512,
    prompts: Annotated[Optional[Path], typer.Option(help="Folder with dataset/answers/pairwise/repair.yaml rubric files.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Judge only the first N items.")] = None,
    seed: Annotated[int, typer.Option(help="Seed sent with every call (and of the pairwise swap draw).")] = 0,
    retry_failed: Annotated[bool, typer.Option(help="Ask again for items whose judging failed in an earlier run.")] = False,
    price_in: Annotated[Optional[float], typer.Option(help="Price per 1k prompt tokens (default: generate's prices.yaml by model).")] = None,
    price_out: Annotated[Optional[float], typer.Option(help="Price per 1k completion tokens.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Score QA pairs or model answers with an LLM judge; resumable (append-only judge_journal.jsonl)."""
    from qaforge.generate.llm_client import LLMOptions
    from qaforge.judge.rubric import RubricError
    from qaforge.judge.sources import InputError

    chosen = _mode_of(target, mode)
    options = LLMOptions(concurrency=concurrency, timeout_s=timeout, max_retries=max_retries,
                         response_format=response_format, temperature=temperature, max_tokens=max_tokens,
                         price_in_per_1k=price_in, price_out_per_1k=price_out)
    options.base_url = api_base or options.base_url
    options.api_key = api_key or options.api_key
    options.model = model or os.environ.get("QAFORGE_JUDGE_MODEL") or options.model
    common = dict(prompt_dir=prompts, limit=limit, seed=seed, retry_failed=retry_failed, show_progress=not quiet)
    try:
        if chosen == "dataset":
            from qaforge.judge.dataset_mode import judge_dataset

            report = judge_dataset(target, options, corpus=corpus, **common)
        elif chosen == "answers":
            from qaforge.judge.answers import judge_answers

            report = judge_answers(target, options, systems=system, out_dir=out, **common)
        else:
            from qaforge.judge.pairwise import judge_pairwise

            report = judge_pairwise(target, options, tuple(system) if system else None, out_dir=out, **common)
    except (InputError, RubricError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    _echo_summary(chosen, report)


if __name__ == "__main__":
    typer.run(judge)
