"""Run judge calls concurrently over generate's client and journal: every finished call (verdict or
failure) is one fsynced journal line keyed by what was sent, so a killed run resumes by replaying the
journal and asking only what is missing. Results come back in task order, whatever the arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qaforge.dataset import write_json
from qaforge.generate.journal import Journal, call_key
from qaforge.generate.llm_client import CallFailed, LLMClient, LLMOptions
from qaforge.judge.rubric import ReplyError, Rubric

JOURNAL_NAME = "judge_journal.jsonl"
KEPT_REPLY_CHARS = 2000     # enough of a bad reply to see why it failed, not a copy of every answer


@dataclass
class Task:
    item: str                 # what is judged, for the journal and the report (id, or index/system)
    messages: list[dict]


@dataclass
class RunResult:
    entries: list[dict[str, Any]]      # one per task, in task order: journal entry (verdict or error)
    stats: dict[str, Any] = field(default_factory=dict)


class JudgeClient(LLMClient):
    """generate's client, asking for the rubric's JSON schema instead of the QA items schema."""

    def __init__(self, options: LLMOptions, rubric: Rubric) -> None:
        super().__init__(options)
        self._schema = rubric.json_schema()

    def _format_arg(self) -> dict | None:
        if self.response_format == "json_schema":
            return {"type": "json_schema", "json_schema": self._schema}
        return super()._format_arg()


async def _judge_once(client: LLMClient, rubric: Rubric, messages: list[dict], seed: int) -> dict[str, Any]:
    """Ask, parse, and re-ask once quoting the parse error. Never raises: failures are results."""
    result: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "attempts": 0}
    text = ""
    try:
        for turn in range(2):
            completion = await client.complete(messages, seed)
            text = completion.text
            for k in ("prompt_tokens", "completion_tokens", "attempts"):
                result[k] += getattr(completion, k)
            try:
                verdict, repaired = rubric.parse(text)
                result.update(verdict=verdict, repaired=repaired, reasked=bool(turn))
                return result
            except ReplyError as exc:
                if turn:
                    raise
                messages = messages + [{"role": "assistant", "content": text}, rubric.repair_message(str(exc))]
    except ReplyError as exc:
        result.update(error=f"unparseable after re-ask: {exc}", kind="parse", reasked=True,
                      reply=text[:KEPT_REPLY_CHARS])
    except CallFailed as exc:
        result.update(error=str(exc), kind="call")
    return result


def run_tasks(tasks: list[Task], options: LLMOptions, rubric: Rubric, journal_dir: Path, seed: int = 0,
              retry_failed: bool = False, show_progress: bool = True) -> RunResult:
    return asyncio.run(_run(tasks, options, rubric, Path(journal_dir), seed, retry_failed, show_progress))


async def _run(tasks, options, rubric, journal_dir, seed, retry_failed, show_progress) -> RunResult:
    from tqdm import tqdm

    options.validate()
    journal_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(journal_dir / JOURNAL_NAME)
    keys = [call_key(options.model, t.messages, seed) for t in tasks]

    def needed(key: str) -> bool:
        entry = journal.calls.get(key)
        return entry is None or (retry_failed and "error" in entry)

    todo = {key: task for key, task in zip(keys, tasks) if needed(key)}     # identical prompts: asked once
    reused = sum(1 for key in keys if key not in todo)
    client = JudgeClient(options, rubric)
    bar = tqdm(total=len(tasks), initial=reused, desc=f"judge {rubric.mode}", unit="call",
               disable=not show_progress, dynamic_ncols=True)
    started = time.monotonic()

    async def one(key: str, task: Task) -> None:
        result = await _judge_once(client, rubric, task.messages, seed)
        journal.record_call(key, {"mode": rubric.mode, "item": task.item, **result})
        bar.update(1)

    try:
        await asyncio.gather(*(one(key, task) for key, task in todo.items()))
    finally:
        bar.close()
        journal.close()
        await client.close()
    entries = [journal.calls[key] for key in keys]
    stats = {"calls_total": len(tasks), "calls_asked": len(todo), "calls_reused": reused,
             "retries": client.retries, "response_format_fallbacks": client.fallbacks,
             "torn_journal_bytes": journal.torn_bytes, "wall_s": round(time.monotonic() - started, 3),
             "journal": str(journal.path)}
    return RunResult(entries, stats)


def usage_of(entries: list[dict[str, Any]], options: LLMOptions) -> dict[str, Any]:
    """Tokens and cost of the calls behind `entries` (journaled ones included: they were paid for once)."""
    total = Counter(calls=0, prompt_tokens=0, completion_tokens=0, attempts=0)
    for entry in {e["key"]: e for e in entries}.values():
        total["calls"] += 1
        for k in ("prompt_tokens", "completion_tokens", "attempts"):
            total[k] += int(entry.get(k, 0))
    price_in, price_out = options.prices()
    cost = total["prompt_tokens"] / 1000 * price_in + total["completion_tokens"] / 1000 * price_out
    return {**dict(total), "cost": round(cost, 6), "price_per_1k": {"input": price_in, "output": price_out}}


def write_report(report: dict[str, Any], run: RunResult, options: LLMOptions, started: float, out_dir: Path,
                 judgements: str, name: str, render: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """Every judge mode's report ends alike: failures, usage, the run's stats with the wall time since
    `started`, and its files; written as `name`.json and `name`.md beside the judgements file."""
    report.update({
        "failures": failures_of(run.entries), "usage": usage_of(run.entries, options),
        "run": {**run.stats, "wall_s": round(time.monotonic() - started, 3)},
        "files": {"judgements": str(out_dir / judgements), "report": str(out_dir / f"{name}.json")},
    })
    write_json(out_dir / f"{name}.json", report)
    (out_dir / f"{name}.md").write_text(render(report), encoding="utf-8")
    return report


def failures_of(entries: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = Counter(e.get("kind", "call") for e in entries if "error" in e)
    listed = [{"item": e["item"], "kind": e.get("kind", "call"), "error": e["error"]} for e in entries if "error" in e]
    return {"total": len(listed), "parse": kinds.get("parse", 0), "call": kinds.get("call", 0),
            "reasked": sum(1 for e in entries if e.get("reasked")),
            "repaired": sum(1 for e in entries if e.get("repaired")), "items": listed[:100]}
