"""`qaforge generate`: textbook -> QA dataset (offline rules or any OpenAI-compatible LLM API).

Only stdlib, typer and the light `qaforge.dataset` at module top, so `qaforge --help` stays fast; the work
is imported on call.
Run standalone too: `python -m qaforge.generate.command --corpus data/corpus --out runs/data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qaforge.dataset import NEAR_DUPLICATE_THRESHOLD


def _parse_targets(text: Optional[str]) -> Optional[dict[int, int]]:
    if not text:
        return None
    targets = {}
    for part in text.split(","):
        chapter, _, count = part.partition("=")
        try:
            targets[int(chapter)] = int(count)
        except ValueError:
            raise typer.BadParameter(f"expected CHAPTER=COUNT[,...], got {part!r}", param_hint="--targets")
    return targets


def generate(
    corpus: Annotated[Path, typer.Option(help="Textbook folder or file (.md/.txt; .pdf with pypdf).")] = Path("data/corpus"),
    out: Annotated[Path, typer.Option(help="Output folder for qa.json, train/exam JSONL, reports, journal.")] = Path("runs/dataset"),
    generator: Annotated[str, typer.Option(help="'rules' (offline, deterministic) or 'llm' (OpenAI-compatible API).")] = "rules",
    exam_size: Annotated[int, typer.Option(help="QA pairs held out in exam.jsonl (stratified by chapter x difficulty).")] = 193,
    seed: Annotated[int, typer.Option(help="Seed of the exam draw (and of the LLM calls' seeds).")] = 0,
    chapter_map: Annotated[Optional[Path], typer.Option(help="YAML/JSON list of {number, title, target, files} chapters.")] = None,
    chunk_size: Annotated[int, typer.Option(help="Target chunk length in characters.")] = 3500,
    overlap: Annotated[int, typer.Option(help="Characters of trailing sentences repeated at the next chunk's start.")] = 200,
    name: Annotated[str, typer.Option(help="Dataset name in dataset_info.json.")] = "qaforge",
    dedup_against: Annotated[Optional[list[Path]], typer.Option(help="qa.json/JSONL of earlier runs whose questions must not repeat.")] = None,
    near_threshold: Annotated[float, typer.Option(help="Character 3-gram Jaccard at which two questions are near duplicates.")] = NEAR_DUPLICATE_THRESHOLD,
    api_base: Annotated[Optional[str], typer.Option(help="LLM API base URL [env: OPENAI_BASE_URL, QAFORGE_GEN_BASE_URL].")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="LLM API key [env: OPENAI_API_KEY, QAFORGE_GEN_API_KEY].")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name [env: QAFORGE_GEN_MODEL; default qwen-max].")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds before one request times out (then retried).")] = 120.0,
    max_retries: Annotated[int, typer.Option(help="Retries per request on 429/5xx/timeouts (backoff + jitter, honours Retry-After).")] = 6,
    questions_per_call: Annotated[int, typer.Option(help="QA pairs asked for in one request.")] = 5,
    target_per_chapter: Annotated[Optional[int], typer.Option(help="Same target for every chapter (overrides the chapter map and the PMPP table).")] = None,
    targets: Annotated[Optional[str], typer.Option(help="Per-chapter targets, e.g. '1=60,2=80'.")] = None,
    max_rounds: Annotated[int, typer.Option(help="Rounds of re-asking where a difficulty falls short.")] = 6,
    response_format: Annotated[str, typer.Option(help="auto | json_schema | json_object | none.")] = "auto",
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the generating model.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(help="max_tokens per request.")] = 4096,
    prompts: Annotated[Optional[Path], typer.Option(help="Folder with easy/medium/hard/repair/avoid.yaml prompt files.")] = None,
    keywords: Annotated[Optional[Path], typer.Option(help="Domain keyword list for the terminology filter.")] = None,
    grounding_threshold: Annotated[float, typer.Option(help="Minimum share of answer bigrams found in the source chunk.")] = 0.3,
    price_in: Annotated[Optional[float], typer.Option(help="Price per 1k prompt tokens (default: prices.yaml by model).")] = None,
    price_out: Annotated[Optional[float], typer.Option(help="Price per 1k completion tokens.")] = None,
    judge_threshold: Annotated[Optional[float], typer.Option(help="Drop pairs an LLM judge scores below this (1-5) against their source chunk; counted as the rule 'judge'.")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="Judge model for --judge-threshold (default: the generating model, same API).")] = None,
    with_reasoning: Annotated[bool, typer.Option(help="Ask the LLM for a reasoning trace per answer (qa.json 'reasoning'; train lines get it as the answer's <think> block).")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Generate a QA dataset from a textbook; prints a summary table and writes report.json/report.md."""
    from qaforge.generate.corpus import CorpusError
    from qaforge.generate.pipeline import generate_dataset

    if judge_threshold is not None and generator != "llm":
        raise typer.BadParameter("needs --generator llm (the judge uses the same API)", param_hint="--judge-threshold")
    if with_reasoning and generator != "llm":
        raise typer.BadParameter("needs --generator llm (the rules generator writes no reasoning)",
                                 param_hint="--with-reasoning")

    llm = None
    if generator == "llm":
        from qaforge.generate.llm_client import LLMOptions

        llm = LLMOptions(concurrency=concurrency, timeout_s=timeout, max_retries=max_retries,
                         questions_per_call=questions_per_call, max_rounds=max_rounds,
                         response_format=response_format, temperature=temperature, max_tokens=max_tokens,
                         prompt_dir=prompts, keywords_file=keywords, grounding_threshold=grounding_threshold,
                         price_in_per_1k=price_in, price_out_per_1k=price_out, targets=_parse_targets(targets),
                         with_reasoning=with_reasoning)
        if api_base:
            llm.base_url = api_base
        if api_key:
            llm.api_key = api_key
        if model:
            llm.model = model
        llm.target_per_chapter = target_per_chapter
    try:
        report = generate_dataset(corpus, out, generator=generator, exam_size=exam_size, seed=seed,
                                  chapter_map=chapter_map, chunk_size=chunk_size, overlap=overlap,
                                  dataset_name=name, near_threshold=near_threshold,
                                  dedup_against=dedup_against or (), llm=llm, show_progress=not quiet)
    except (CorpusError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    if judge_threshold is not None:
        report = _judge(out, llm, judge_threshold, judge_model, exam_size=exam_size, seed=seed,
                        near_threshold=near_threshold, name=name, quiet=quiet)
    shortfall = (report.get("planner") or {}).get("shortfall")
    if shortfall:
        typer.echo(f"warning: targets not reached after {report['planner']['rounds']} rounds: {shortfall}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(generate)


def _judge(out: Path, llm, threshold: float, judge_model: Optional[str], **kwargs) -> dict:
    """--judge-threshold: the judge runs on the generating API (another model with --judge-model)."""
    import copy

    from qaforge.generate.judge_filter import drop_below_judge

    options = copy.copy(llm)
    options.model = judge_model or llm.model
    options.temperature, options.max_tokens = 0.0, 512
    quiet = kwargs.pop("quiet")
    try:
        report = drop_below_judge(out, options, threshold, show_progress=not quiet, **kwargs)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"judge ({options.model}): {report['rejections']['judge']} pairs below {threshold} dropped; "
               f"{report['dataset']['total']} kept (train {report['split']['train']}, exam {report['split']['exam']})")
    return report

