"""`qaforge review DIR`: serve the review page, or with --export / --report write files and exit."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Optional

import typer

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def review(
    folder: Path = typer.Argument(..., help="Dataset folder (qa.json, chunks.jsonl, judge.jsonl) or eval run "
                                            "folder (eval_results.json)."),
    sample: int = typer.Option(50, help="Items in the stratified (chapter x difficulty) sample."),
    seed: int = typer.Option(0, help="Seed of the sample: the same seed shows the same items."),
    corpus: Optional[Path] = typer.Option(None, help="Textbook the dataset came from (default: report.json's)."),
    host: str = typer.Option("127.0.0.1", help="Bind address; anything beyond loopback needs --token."),
    port: int = typer.Option(8765, help="Port."),
    token: Optional[str] = typer.Option(None, envvar="QAFORGE_REVIEW_TOKEN",
                                        help="Required on every request (?token=, cookie or Bearer header)."),
    judge_pass: float = typer.Option(4.0, help="Judge accuracy score (1-5) that counts as accepting an item."),
    export: Optional[Path] = typer.Option(None, help="Write the dataset with edits applied and rejected items "
                                                     "removed to this folder, then exit."),
    report: bool = typer.Option(False, help="Write review_report.json/.md from the journal, then exit."),
) -> None:
    """A local web page where people check QA pairs (or eval answers): verdicts, edits, Wilson intervals."""
    from qaforge.review.items import ReviewInputError

    try:
        if export is not None:
            from qaforge.review.export import export_reviewed

            summary = export_reviewed(folder, export)
            typer.echo(f"exported {summary['records']} records (train {summary['train']}, exam {summary['exam']}; "
                       f"{len(summary['removed'])} removed, {len(summary['edited'])} edited) to {export}")
            return
        if report:
            _write_report(folder, sample, seed, corpus, judge_pass)
            return
        if not is_loopback(host) and not token:
            raise typer.BadParameter(f"binding {host} exposes the review beyond this machine: give --token "
                                     f"(or QAFORGE_REVIEW_TOKEN)", param_hint="--host")
        from qaforge.review.app import create_app

        hosts = None if token else sorted(LOOPBACK_NAMES | {"127.0.0.1", "::1", "[::1]", host})
        app = create_app(folder, sample=sample, seed=seed, corpus=corpus, token=token, judge_pass=judge_pass,
                         allowed_hosts=hosts)
    except ReviewInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    import uvicorn

    suffix = f"?token={token}" if token else ""
    typer.echo(f"review page: http://{host}:{port}/{suffix}", err=True)
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("QAFORGE_REVIEW_LOG", "warning"))


def _write_report(folder: Path, sample: int, seed: int, corpus: Optional[Path], judge_pass: float) -> None:
    from qaforge.review.items import load_review_set
    from qaforge.review.journal import JOURNAL_NAME, read_journal
    from qaforge.review.stats import review_results, write_report

    review_set = load_review_set(folder, sample, seed, corpus)
    results = review_results(read_journal(Path(folder) / JOURNAL_NAME), set(review_set.records),
                             review_set.sample, review_set.judge, judge_pass)
    files = write_report(results, Path(folder))
    typer.echo(json.dumps({"accuracy": results["accuracy"], "relevance": results["relevance"], "files": files},
                          ensure_ascii=False, indent=2))
