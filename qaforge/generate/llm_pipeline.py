"""The LLM generator: plan calls per chapter x difficulty, run them concurrently, filter, dedup, and
ask again where a difficulty falls short, round after round, until every target is met.

Determinism and resume: calls of a round run concurrently and land in the journal as they finish,
but their items are judged only after the round, in plan order. The outcome is thus a function of the
answers alone, not of their arrival order, and a re-run after a kill (which replays answered calls from
the journal and asks only the missing ones) ends with the same dataset as an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaforge.generate.corpus import Chapter, Chunk
from qaforge.generate.dedup import DedupIndex
from qaforge.generate.export import write_json
from qaforge.generate.filters import FilterConfig, QualityFilter
from qaforge.generate.journal import Journal, call_key
from qaforge.generate.llm_client import CallFailed, LLMClient, LLMOptions
from qaforge.generate.parsing import ParseError, parse_items
from qaforge.generate.planner import CallSpec, chapter_targets, difficulty_targets, plan_round
from qaforge.generate.prompts import PromptSet, load_prompts
from qaforge.generate.records import DIFFICULTIES, QARecord

MIN_CHUNK_CHARS = 300      # index pages and stubs make poor sources when a chapter has real text
AVOID_LIST_SIZE = 30


@dataclass
class LLMResult:
    records: list[QARecord]
    targets: dict[int, int]
    rejections: dict[str, int]
    duplicates: dict[str, int]
    usage: dict[str, Any]
    planner: dict[str, Any] = field(default_factory=dict)


async def _run_call(client: LLMClient, prompts: PromptSet, messages: list[dict], seed: int) -> dict[str, Any]:
    """One planned call: ask, parse, and re-ask once quoting the parse error. Never raises."""
    result: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "attempts": 0, "texts": []}
    try:
        completion = await client.complete(messages, seed)
        result["texts"].append(completion.text)
        for k in ("prompt_tokens", "completion_tokens", "attempts"):
            result[k] += getattr(completion, k)
        try:
            items, repaired = parse_items(completion.text)
            result.update(items=items, repaired=repaired)
            return result
        except ParseError as exc:
            result["parse_error"] = str(exc)
        repair = messages + [{"role": "assistant", "content": completion.text}, prompts.repair_message(result["parse_error"])]
        completion = await client.complete(repair, seed)
        result["texts"].append(completion.text)
        for k in ("prompt_tokens", "completion_tokens", "attempts"):
            result[k] += getattr(completion, k)
        items, repaired = parse_items(completion.text)
        result.update(items=items, repaired=repaired, reasked=True)
    except ParseError as exc:
        result.update(items=[], error=f"unparseable after re-ask: {exc}", reasked=True)
    except CallFailed as exc:
        result.update(items=[], error=str(exc))
    return result


class _Progress:
    def __init__(self, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, desc="llm calls", unit="call", disable=not enabled, dynamic_ncols=True)
        self.accepted = 0
        self.rejected = 0
        self.items = 0

    def add_total(self, n: int) -> None:
        self.bar.total += n
        self.bar.refresh()

    def call_done(self, items: int) -> None:
        self.items += items
        self.bar.set_postfix(items=self.items, accepted=self.accepted, rejected=self.rejected, refresh=False)
        self.bar.update(1)

    def judged(self, accepted: int, rejected: int) -> None:
        self.accepted += accepted
        self.rejected += rejected
        self.bar.set_postfix(items=self.items, accepted=self.accepted, rejected=self.rejected, refresh=False)

    def close(self) -> None:
        self.bar.close()


def run_llm_generation(chapters: list[Chapter], chunks: list[Chunk], out_dir: Path, options: LLMOptions,
                       seed: int = 0, earlier: list[QARecord] = (), near_threshold: float = 0.7,
                       show_progress: bool = True) -> LLMResult:
    return asyncio.run(_generate(chapters, chunks, Path(out_dir), options, seed, list(earlier),
                                 near_threshold, show_progress))


async def _generate(chapters, chunks, out_dir, options, seed, earlier, near_threshold, show_progress) -> LLMResult:
    options.validate()
    prompts = load_prompts(options.prompt_dir)
    config = FilterConfig(grounding_threshold=options.grounding_threshold)
    if options.keywords_file:
        config.keywords_file = Path(options.keywords_file)
    if options.leakage_file:
        config.leakage_file = Path(options.leakage_file)
    quality = QualityFilter(config)
    targets = chapter_targets(chapters, options.targets, options.default_target, options.target_per_chapter)
    wanted = {(c, d): n for c, total in targets.items() for d, n in difficulty_targets(total).items()}
    chunks_by_chapter: dict[int, list[Chunk]] = defaultdict(list)
    for chunk in chunks:
        chunks_by_chapter[chunk.chapter].append(chunk)
    for number, own in chunks_by_chapter.items():
        substantial = [c for c in own if len(c.text) >= MIN_CHUNK_CHARS]
        chunks_by_chapter[number] = substantial or own
    titles = {c.number: c.title for c in chapters}

    journal = Journal(out_dir / "journal.jsonl")
    client = LLMClient(options)
    progress = _Progress(show_progress)
    dedup = DedupIndex(near_threshold)
    for record in earlier:
        dedup.add(record.question, f"earlier:{record.id}")
    accepted: dict[tuple[int, str], list[QARecord]] = defaultdict(list)
    duplicates = Counter({"exact": 0, "near": 0})
    over_target = 0
    usage = defaultdict(lambda: Counter(calls=0, prompt_tokens=0, completion_tokens=0))
    stats = Counter()
    rounds_run = 0
    call_seconds = 0.0
    started = time.monotonic()

    try:
        for round_no in range(options.max_rounds):
            deficits = {k: n - len(accepted[k]) for k, n in wanted.items() if n - len(accepted[k]) > 0}
            if not deficits:
                break
            rounds_run += 1
            specs = plan_round(round_no, deficits, chunks_by_chapter, options.questions_per_call)
            planned = []
            for spec in specs:
                # Questions already taken from this chunk: a model told about them asks something else.
                avoid = [r.question for r in accepted[(spec.chapter, spec.difficulty)]
                         if r.source["chunk_id"] == spec.chunk.chunk_id][-AVOID_LIST_SIZE:] if round_no else []
                messages = prompts.messages(spec.difficulty, spec.chunk, spec.count, avoid)
                planned.append((spec, messages, call_key(options.model, messages, spec.seed)))
            todo = [(spec, messages, key) for spec, messages, key in planned if key not in journal.calls]
            stats["calls_reused"] += len(planned) - len(todo)
            progress.add_total(len(planned))
            progress.bar.update(len(planned) - len(todo))

            finished = {key: asyncio.Event() for _, _, key in todo}

            async def one(spec: CallSpec, messages: list[dict], key: str) -> None:
                result = await _run_call(client, prompts, messages, spec.seed)
                journal.record_call(key, {"chapter": spec.chapter, "difficulty": spec.difficulty,
                                          "round": spec.round, "index": spec.index,
                                          "chunk_id": spec.chunk.chunk_id, **result})
                progress.call_done(len(result.get("items", [])))
                finished[key].set()

            round_ids: list[str] = []

            async def judge_in_plan_order() -> None:
                # A reorder buffer: judging overlaps the calls still in flight, yet always follows
                # plan order, so the outcome does not depend on the order in which answers arrive.
                for spec, _, key in planned:
                    if key in finished:
                        await finished[key].wait()
                    accepted_now, rejected_now = judge(spec, journal.calls[key])
                    round_ids.extend(accepted_now)
                    progress.judged(len(accepted_now), rejected_now)

            def judge(spec: CallSpec, call: dict) -> tuple[list[str], int]:
                nonlocal over_target
                ids, bad = [], 0
                u = usage[spec.chapter]
                u["calls"] += 1
                u["prompt_tokens"] += call.get("prompt_tokens", 0)
                u["completion_tokens"] += call.get("completion_tokens", 0)
                stats["calls_failed"] += bool(call.get("error"))
                stats["calls_reasked"] += bool(call.get("reasked"))
                stats["replies_repaired"] += bool(call.get("repaired"))
                for item in call.get("items", []):
                    if quality.check(item, spec.difficulty, spec.chunk.text):
                        bad += 1
                        continue
                    question, answer = item["question"].strip(), item["answer"].strip()
                    verdict = dedup.check(question)
                    if verdict:
                        duplicates[verdict[0]] += 1
                        bad += 1
                        continue
                    stratum = accepted[(spec.chapter, spec.difficulty)]
                    if len(stratum) >= wanted[(spec.chapter, spec.difficulty)]:
                        over_target += 1
                        continue
                    record = QARecord(
                        question=question, answer=answer, difficulty=spec.difficulty, chapter=spec.chapter,
                        chapter_title=titles[spec.chapter], topic=item.get("topic", "").strip(),
                        source={"chunk_id": spec.chunk.chunk_id, "file": spec.chunk.source,
                                "char_start": spec.chunk.char_start, "char_end": spec.chunk.char_end},
                        generator="llm", model=options.model)
                    dedup.add(question, record.id)
                    stratum.append(record)
                    ids.append(record.id)
                return ids, bad

            calls_started = time.monotonic()
            await asyncio.gather(judge_in_plan_order(), *(one(*job) for job in todo))
            call_seconds += time.monotonic() - calls_started
            journal.record_round(round_no, round_ids)
            _write_progress(out_dir, "running", round_no, wanted, accepted, journal, started)
    finally:
        progress.close()
        journal.close()
        await client.close()

    records = [r for key in sorted(accepted, key=lambda k: (k[0], DIFFICULTIES.index(k[1]))) for r in accepted[key]]
    short = {f"{c}/{d}": n - len(accepted[(c, d)]) for (c, d), n in wanted.items() if len(accepted[(c, d)]) < n}
    _write_progress(out_dir, "complete" if not short else "incomplete", rounds_run - 1, wanted, accepted,
                    journal, started)
    price_in, price_out = options.prices()
    by_chapter = {}
    for number in sorted(usage):
        u = usage[number]
        by_chapter[str(number)] = {**u, "cost": round(u["prompt_tokens"] / 1000 * price_in
                                                     + u["completion_tokens"] / 1000 * price_out, 6)}
    total = Counter()
    for u in usage.values():
        total.update(u)
    total_cost = round(sum(v["cost"] for v in by_chapter.values()), 6)
    rejections = dict(quality.counts)
    rejections["over_target"] = over_target
    return LLMResult(
        records=records, targets=targets, rejections=rejections, duplicates=dict(duplicates),
        usage={"by_chapter": by_chapter, "total": {**total, "cost": total_cost},
               "price_per_1k": {"input": price_in, "output": price_out}},
        planner={"rounds": rounds_run, "call_phase_s": round(call_seconds, 3), "shortfall": short, "retries": client.retries,
                 "response_format_fallbacks": client.fallbacks, "torn_journal_bytes": journal.torn_bytes,
                 **dict(stats)})


def _write_progress(out_dir: Path, status: str, round_no: int, wanted, accepted, journal: Journal,
                    started: float) -> None:
    chapters: dict[str, dict] = {}
    for (chapter, difficulty), n in sorted(wanted.items(), key=lambda kv: (kv[0][0], DIFFICULTIES.index(kv[0][1]))):
        row = chapters.setdefault(str(chapter), {"target": {}, "accepted": {}})
        row["target"][difficulty] = n
        row["accepted"][difficulty] = len(accepted[(chapter, difficulty)])
    write_json(out_dir / "progress.json", {
        "status": status, "generator": "llm", "round": round_no, "calls_journaled": len(journal.calls),
        "accepted": sum(len(v) for v in accepted.values()), "target": sum(wanted.values()),
        "elapsed_s": round(time.monotonic() - started, 1), "journal": journal.path.name, "chapters": chapters})
