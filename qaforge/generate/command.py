"""`qaforge generate`: textbook -> QA dataset (offline rules or any OpenAI-compatible LLM API).

Only stdlib, typer and the light `qaforge.dataset` at module top, so `qaforge --help` stays fast; the work
is imported on call.
Run standalone too: `python -m qaforge.generate.command --corpus my_book/ --out runs/data`.
Exit codes (qaforge.exit_codes): 0 done, 1 done but short of the targets, 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qaforge.dataset import NEAR_DUPLICATE_THRESHOLD
from qaforge.exit_codes import bad_input, shortfall

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")
# The flags that only mean something to an LLM: giving one asks for the LLM generator.
API_FLAGS = {"api_base": "--api-base", "api_key": "--api-key", "model": "--model"}
# generate_dataset's ValueErrors name the parameter; the user typed the flag.
_FLAG_OF_MESSAGE = {"exam_size": "--exam-size", "chunk_size": "--chunk-size", "overlap": "--overlap"}


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
    corpus: Annotated[Optional[Path], typer.Option(help="Textbook folder or file (.md/.txt; .pdf with pypdf). Default: the packaged sample textbook.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for qa.json, train/exam JSONL, reports, journal.")] = Path("runs/dataset"),
    generator: Annotated[Optional[str], typer.Option(help="'rules' (offline, deterministic) or 'llm' (OpenAI-compatible API). Default: llm when --api-base, --api-key or --model is given, else rules.")] = None,
    exam_size: Annotated[int, typer.Option(min=0, help="QA pairs held out in exam.jsonl (stratified by chapter x difficulty).")] = 193,
    seed: Annotated[int, typer.Option(help="Seed of the exam draw (and of the LLM calls' seeds).")] = 0,
    chapter_map: Annotated[Optional[Path], typer.Option(help="YAML/JSON list of {number, title, target, files} chapters.")] = None,
    chunk_size: Annotated[int, typer.Option(min=200, help="Target chunk length in characters.")] = 3500,
    overlap: Annotated[int, typer.Option(min=0, help="Characters of trailing sentences repeated at the next chunk's start.")] = 200,
    name: Annotated[str, typer.Option(help="Dataset name in dataset_info.json.")] = "qaforge",
    dedup_against: Annotated[Optional[list[Path]], typer.Option(help="qa.json/JSONL of earlier runs whose questions must not repeat.")] = None,
    near_threshold: Annotated[float, typer.Option(help="Character 3-gram Jaccard at which two questions are near duplicates.")] = NEAR_DUPLICATE_THRESHOLD,
    api_base: Annotated[Optional[str], typer.Option(help="LLM API base URL (else $QAFORGE_GEN_BASE_URL or $OPENAI_BASE_URL). Implies --generator llm.")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="LLM API key (else $QAFORGE_GEN_API_KEY or $OPENAI_API_KEY). Implies --generator llm.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name (else $QAFORGE_GEN_MODEL, else qwen-max). Implies --generator llm.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds before one request times out (then retried).")] = 120.0,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries per request on 429/5xx/timeouts (backoff + jitter, honours Retry-After).")] = 6,
    questions_per_call: Annotated[int, typer.Option(min=1, help="QA pairs asked for in one request.")] = 5,
    target_per_chapter: Annotated[Optional[int], typer.Option(min=0, help="Same target for every chapter (overrides the chapter map and the PMPP table).")] = None,
    targets: Annotated[Optional[str], typer.Option(help="Per-chapter targets, e.g. '1=60,2=80'.")] = None,
    max_rounds: Annotated[int, typer.Option(min=1, help="Rounds of re-asking where a difficulty falls short.")] = 6,
    response_format: Annotated[str, typer.Option(help="auto | json_schema | json_object | none.")] = "auto",
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the generating model.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens per request.")] = 4096,
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
    generator = _pick_generator(generator, {"api_base": api_base, "api_key": api_key, "model": model})
    chapter_targets = _parse_targets(targets)  # before any work: a typo is refused, not found after the run
    _check_flags(generator, judge_threshold, response_format, [(corpus, "--corpus"), (chapter_map, "--chapter-map"),
                 (prompts, "--prompts"), (keywords, "--keywords")] + [(p, "--dedup-against") for p in dedup_against or ()])
    from qaforge.generate.corpus import CorpusError
    from qaforge.generate.pipeline import generate_dataset
    from qaforge.paths import DEFAULT_CORPUS_DIR

    if with_reasoning and generator != "llm":
        bad_input("needs --generator llm (the rules generator writes no reasoning)", "--with-reasoning")

    llm = None
    if generator == "llm":
        from qaforge.generate.llm_client import LLMOptions

        llm = LLMOptions(concurrency=concurrency, timeout_s=timeout, max_retries=max_retries,
                         questions_per_call=questions_per_call, max_rounds=max_rounds,
                         response_format=response_format, temperature=temperature, max_tokens=max_tokens,
                         prompt_dir=prompts, keywords_file=keywords, grounding_threshold=grounding_threshold,
                         price_in_per_1k=price_in, price_out_per_1k=price_out, targets=chapter_targets,
                         with_reasoning=with_reasoning)
        for key, value in (("base_url", api_base), ("api_key", api_key), ("model", model)):
            if value:  # else LLMOptions' environment defaults
                setattr(llm, key, value)
        llm.target_per_chapter = target_per_chapter
    try:
        report = generate_dataset(corpus or DEFAULT_CORPUS_DIR, out, generator=generator, exam_size=exam_size,
                                  seed=seed, chapter_map=chapter_map, chunk_size=chunk_size, overlap=overlap,
                                  dataset_name=name, near_threshold=near_threshold,
                                  dedup_against=dedup_against or (), llm=llm, show_progress=not quiet)
    except (CorpusError, ValueError, FileNotFoundError) as exc:
        message = str(exc)
        _llm_shortfall(out, generator, message)
        bad_input(message, next((flag for key, flag in _FLAG_OF_MESSAGE.items() if message.startswith(key)), None))
    if judge_threshold is not None:
        report = _judge(out, llm, judge_threshold, judge_model, exam_size=exam_size, seed=seed,
                        near_threshold=near_threshold, name=name, quiet=quiet)
    short = (report.get("planner") or {}).get("shortfall")
    if short:
        shortfall(f"targets not reached after {report['planner']['rounds']} rounds (chapter/difficulty: pairs "
                  f"missing): {short}")


def _pick_generator(generator: Optional[str], api_values: dict[str, Optional[str]]) -> str:
    """API flags ask for the LLM generator; together with an explicit `--generator rules` they are a mistake."""
    given = [API_FLAGS[key] for key, value in api_values.items() if value is not None]
    if generator is None:
        return "llm" if given else "rules"
    if generator not in ("rules", "llm"):
        bad_input(f"must be rules or llm, got {generator!r}", "--generator")
    if generator == "rules" and given:
        bad_input(f"{', '.join(given)} only apply to the LLM generator: drop them, or use --generator llm",
                  "--generator rules")
    return generator


def _check_flags(generator: str, judge_threshold: Optional[float], response_format: str,
                 paths: list[tuple[Optional[Path], str]]) -> None:
    """Refuse bad flags before any work starts, naming the flag."""
    if judge_threshold is not None and generator != "llm":
        bad_input("needs --generator llm (the judge uses the same API)", "--judge-threshold")
    if response_format not in RESPONSE_FORMATS:
        bad_input(f"must be one of {', '.join(RESPONSE_FORMATS)}, got {response_format!r}", "--response-format")
    for path, flag in paths:
        if path is not None and not path.exists():
            bad_input(f"no such file or folder: {path}", flag)


def _llm_shortfall(out: Path, generator: str, message: str) -> None:
    """An LLM run whose calls failed (server down, every answer rejected) ends in a failed exam draw: say that
    the run fell short (exit 1, resumable), not that --exam-size was wrong."""
    import json

    progress = out / "progress.json"
    if generator != "llm" or not progress.is_file():
        return
    state = json.loads(progress.read_text(encoding="utf-8"))
    if state.get("status") == "incomplete":
        shortfall(f"the LLM run accepted {state.get('accepted')} of {state.get('target')} pairs (the calls' errors "
                  f"are in {out / 'journal.jsonl'}; re-run to resume), so: {message}")


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
        bad_input(str(exc), "--judge-threshold")
    typer.echo(f"judge ({options.model}): {report['rejections']['judge']} pairs below {threshold} dropped; "
               f"{report['dataset']['total']} kept (train {report['split']['train']}, exam {report['split']['exam']})")
    return report


if __name__ == "__main__":
    typer.run(generate)
