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

from qaforge.dataset import DIFFICULTIES, NEAR_DUPLICATE_THRESHOLD, QARecord
from qaforge.generate.corpus import Chapter, Chunk
from qaforge.generate.dedup import DedupIndex
from qaforge.generate.filters import FilterConfig, QualityFilter
from qaforge.generate.journal import Journal, call_key
from qaforge.generate.llm_client import CallFailed, LLMClient, LLMOptions
from qaforge.generate.parsing import ParseError, item_reasoning, parse_items
from qaforge.generate.planner import CallSpec, chapter_targets, difficulty_targets, plan_round
from qaforge.generate.progress import write_progress
from qaforge.generate.prompts import PromptSet, load_prompts

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
                       seed: int = 0, earlier: list[QARecord] = (),
                       near_threshold: float = NEAR_DUPLICATE_THRESHOLD, show_progress: bool = True) -> LLMResult:
    # `seed` is part of the signature the pipeline calls with; every call's own seed comes from its
    # CallSpec (round, chapter, difficulty, index), which is what makes a resumed run plan the same calls.
    run = _Generation(chapters, chunks, Path(out_dir), options, list(earlier), near_threshold)
    return asyncio.run(run.run(show_progress))


def _filter_config(options: LLMOptions, prompts: PromptSet) -> FilterConfig:
    examples = tuple(e for prompt in prompts.by_difficulty.values() for e in prompt.examples)
    config = FilterConfig(grounding_threshold=options.grounding_threshold, few_shot_examples=examples)
    if options.keywords_file:
        config.keywords_file = Path(options.keywords_file)
    if options.leakage_file:
        config.leakage_file = Path(options.leakage_file)
    return config


def _source_chunks(chunks: list[Chunk]) -> dict[int, list[Chunk]]:
    """Chunks to ask about, per chapter: the substantial ones, or all when a chapter has none."""
    by_chapter: dict[int, list[Chunk]] = defaultdict(list)
    for chunk in chunks:
        by_chapter[chunk.chapter].append(chunk)
    for number, own in by_chapter.items():
        substantial = [c for c in own if len(c.text) >= MIN_CHUNK_CHARS]
        by_chapter[number] = substantial or own
    return by_chapter


class _Generation:
    """One run: what is wanted per (chapter, difficulty), what was accepted, and the report's counters."""

    def __init__(self, chapters: list[Chapter], chunks: list[Chunk], out_dir: Path, options: LLMOptions,
                 earlier: list[QARecord], near_threshold: float) -> None:
        options.validate()
        self.options, self.out_dir = options, out_dir
        self.prompts: PromptSet = load_prompts(options.prompt_dir)
        self.quality = QualityFilter(_filter_config(options, self.prompts))
        self.targets = chapter_targets(chapters, options.targets, options.default_target, options.target_per_chapter)
        self.wanted = {(c, d): n for c, total in self.targets.items() for d, n in difficulty_targets(total).items()}
        self.chunks_by_chapter = _source_chunks(chunks)
        self.titles = {c.number: c.title for c in chapters}
        self.dedup = DedupIndex(near_threshold)
        for record in earlier:
            self.dedup.add(record.question, f"earlier:{record.id}")
        self.accepted: dict[tuple[int, str], list[QARecord]] = defaultdict(list)
        self.duplicates = Counter({"exact": 0, "near": 0})
        self.over_target = 0
        self.usage = defaultdict(lambda: Counter(calls=0, prompt_tokens=0, completion_tokens=0))
        self.stats = Counter()
        self.rounds_run = 0
        self.call_seconds = 0.0
        self.started = time.monotonic()

    async def run(self, show_progress: bool) -> LLMResult:
        self.journal = Journal(self.out_dir / "journal.jsonl")
        self.client = LLMClient(self.options)
        self.progress = _Progress(show_progress)
        try:
            for round_no in range(self.options.max_rounds):
                deficits = {k: n - len(self.accepted[k]) for k, n in self.wanted.items()
                            if n - len(self.accepted[k]) > 0}
                if not deficits:
                    break
                self.rounds_run += 1
                await self._round(round_no, deficits)
                self._write_progress("running", round_no)
        finally:
            self.progress.close()
            self.journal.close()
            await self.client.close()
        return self._result()

    def _plan(self, round_no: int, deficits: dict[tuple[int, str], int]) -> list[tuple[CallSpec, list[dict], str]]:
        planned = []
        for spec in plan_round(round_no, deficits, self.chunks_by_chapter, self.options.questions_per_call):
            # Questions already taken from this chunk: a model told about them asks something else.
            avoid = [r.question for r in self.accepted[(spec.chapter, spec.difficulty)]
                     if r.source["chunk_id"] == spec.chunk.chunk_id][-AVOID_LIST_SIZE:] if round_no else []
            messages = self.prompts.messages(spec.difficulty, spec.chunk, spec.count, avoid,
                                             self.options.with_reasoning)
            planned.append((spec, messages, call_key(self.options.model, messages, spec.seed)))
        return planned

    async def _round(self, round_no: int, deficits: dict[tuple[int, str], int]) -> None:
        planned = self._plan(round_no, deficits)
        todo = [(spec, messages, key) for spec, messages, key in planned if key not in self.journal.calls]
        self.stats["calls_reused"] += len(planned) - len(todo)
        self.progress.add_total(len(planned))
        self.progress.bar.update(len(planned) - len(todo))
        finished = {key: asyncio.Event() for _, _, key in todo}

        async def ask(spec: CallSpec, messages: list[dict], key: str) -> None:
            result = await _run_call(self.client, self.prompts, messages, spec.seed)
            self.journal.record_call(key, {"chapter": spec.chapter, "difficulty": spec.difficulty,
                                           "round": spec.round, "index": spec.index,
                                           "chunk_id": spec.chunk.chunk_id, **result})
            self.progress.call_done(len(result.get("items", [])))
            finished[key].set()

        round_ids: list[str] = []

        async def judge_in_plan_order() -> None:
            # A reorder buffer: judging overlaps the calls still in flight, yet always follows
            # plan order, so the outcome does not depend on the order in which answers arrive.
            for spec, _, key in planned:
                if key in finished:
                    await finished[key].wait()
                accepted_now, rejected_now = self._judge(spec, self.journal.calls[key])
                round_ids.extend(accepted_now)
                self.progress.judged(len(accepted_now), rejected_now)

        calls_started = time.monotonic()
        await asyncio.gather(judge_in_plan_order(), *(ask(*job) for job in todo))
        self.call_seconds += time.monotonic() - calls_started
        self.journal.record_round(round_no, round_ids)

    def _judge(self, spec: CallSpec, call: dict) -> tuple[list[str], int]:
        """Filter, dedup and keep the items of one answered call; returns (ids kept, items rejected)."""
        ids, bad = [], 0
        u = self.usage[spec.chapter]
        u["calls"] += 1
        u["prompt_tokens"] += call.get("prompt_tokens", 0)
        u["completion_tokens"] += call.get("completion_tokens", 0)
        self.stats["calls_failed"] += bool(call.get("error"))
        self.stats["calls_reasked"] += bool(call.get("reasked"))
        self.stats["replies_repaired"] += bool(call.get("repaired"))
        for item in call.get("items", []):
            if self.quality.check(item, spec.difficulty, spec.chunk.text):
                bad += 1
                continue
            question, answer = item["question"].strip(), item["answer"].strip()
            verdict = self.dedup.check(question)
            if verdict:
                self.duplicates[verdict[0]] += 1
                bad += 1
                continue
            stratum = self.accepted[(spec.chapter, spec.difficulty)]
            if len(stratum) >= self.wanted[(spec.chapter, spec.difficulty)]:
                self.over_target += 1
                continue
            record = QARecord(
                question=question, answer=answer, difficulty=spec.difficulty, chapter=spec.chapter,
                chapter_title=self.titles[spec.chapter], topic=item.get("topic", "").strip(),
                source={"chunk_id": spec.chunk.chunk_id, "file": spec.chunk.source,
                        "char_start": spec.chunk.char_start, "char_end": spec.chunk.char_end},
                generator="llm", model=self.options.model,
                reasoning=item_reasoning(item) if self.options.with_reasoning else "")
            self.dedup.add(question, record.id)
            stratum.append(record)
            ids.append(record.id)
        return ids, bad

    def _write_progress(self, status: str, round_no: int) -> None:
        write_progress(self.out_dir, status, "llm", round_no, {k: len(v) for k, v in self.accepted.items()},
                       self.started, wanted=self.wanted, journal=self.journal)

    def _result(self) -> LLMResult:
        accepted, wanted = self.accepted, self.wanted
        records = [r for key in sorted(accepted, key=lambda k: (k[0], DIFFICULTIES.index(k[1]))) for r in accepted[key]]
        short = {f"{c}/{d}": n - len(accepted[(c, d)]) for (c, d), n in wanted.items() if len(accepted[(c, d)]) < n}
        self._write_progress("complete" if not short else "incomplete", self.rounds_run - 1)
        price_in, price_out = self.options.prices()
        by_chapter = {}
        for number in sorted(self.usage):
            u = self.usage[number]
            by_chapter[str(number)] = {**u, "cost": round(u["prompt_tokens"] / 1000 * price_in
                                                         + u["completion_tokens"] / 1000 * price_out, 6)}
        total = Counter()
        for u in self.usage.values():
            total.update(u)
        total_cost = round(sum(v["cost"] for v in by_chapter.values()), 6)
        rejections = dict(self.quality.counts)
        rejections["over_target"] = self.over_target
        return LLMResult(
            records=records, targets=self.targets, rejections=rejections, duplicates=dict(self.duplicates),
            usage={"by_chapter": by_chapter, "total": {**total, "cost": total_cost},
                   "price_per_1k": {"input": price_in, "output": price_out}},
            planner={"rounds": self.rounds_run, "call_phase_s": round(self.call_seconds, 3), "shortfall": short,
                     "retries": self.client.retries, "response_format_fallbacks": self.client.fallbacks,
                     "torn_journal_bytes": self.journal.torn_bytes, **dict(self.stats)})
