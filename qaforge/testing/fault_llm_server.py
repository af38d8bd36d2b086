"""A fault-injecting OpenAI-compatible chat server, for tests and the generation benchmark.

It stands in for a commercial LLM API that cannot be reached here. It speaks `/v1/chat/completions`
and `/v1/models` over real HTTP, so the `openai` SDK is exercised unchanged. Its answers are derived
deterministically from the prompt: it finds the source text between <source> and </source>, the
difficulty and the number of questions asked for, and builds QA items from sentences of that text,
so grounding and terminology filters pass for real. Content depends only on (messages, seed);
transport faults (429 + Retry-After, 500, slow replies) hit only the first attempt of a request, so
a retried request gets the very answer an unlucky-free run would have got.

Faults, each with its own rate (fraction of requests), chosen by a hash of the request:
  rate_429, rate_500, rate_slow          transport faults, first attempt only
  rate_malformed (repairable near-JSON), rate_garbage (no JSON at all: forces a re-ask)
  rate_think (<think> block first), rate_fence (```json fences)
  rate_bad_item (one item per fault rule: format, few_shot_copy, same_as_question, leakage, length,
                 terminology, grounding), rate_duplicate (repeats a question another request also gets)
  reject_response_format: answer 400 to response_format=json_schema (servers without it)

Run standalone: python -m qaforge.testing.fault_llm_server --port 8011 --latency 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from qaforge.generate.corpus import split_sentences

_SOURCE = re.compile(r"<source>\s*(.*?)\s*</source>", re.DOTALL)
_DIFFICULTY = re.compile(r"difficulty\W+(easy|medium|hard)", re.IGNORECASE)
_COUNT = re.compile(r"(\d+)\s*(?:道|个|questions)")
_MARKUP = re.compile(r"!\[[^\]]*\]\([^)]*\)|<[^>]+>|`{3}.*?`{3}", re.DOTALL)
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_CJK = re.compile(r"[\u4e00-\u9fff]")
SENTENCES_PER_ANSWER = {"easy": 1, "medium": 2, "hard": 3}
DUPLICATE_QUESTION = "What is a GPU warp and how many threads does it contain?"
BAD_ITEMS = {
    "format": {"question": "What is a kernel?", "answer": 42, "topic": "kernel"},
    "same_as_question": {"question": "What does the warp scheduler do in a GPU?",
                         "answer": "What does the warp scheduler do in a GPU?", "topic": "warp"},
    "leakage": {"question": "How do GPU threads cooperate?",
                "answer": "According to the text, GPU threads cooperate through shared memory and barriers.",
                "topic": "threads"},
    "length": {"question": "What is CUDA?", "answer": "A GPU API.", "topic": "CUDA"},
    "terminology": {"question": "What do people often enjoy on weekends?",
                    "answer": "Many people enjoy long walks in the park, reading novels and cooking dinner with friends.",
                    "topic": "leisure"},
    "grounding": {"question": "How do GPUs teleport warps between data centers?",
                  "answer": "Every GPU warp is teleported by quantum entanglement to a remote data center, "
                            "where the kernel finishes instantly and returns through the PCIe cable.",
                  "topic": "warp"},
}


def _first_prompt_example() -> dict:
    """What a small real model does (Qwen2.5-0.5B did): hand back the prompt's own first example."""
    from qaforge.generate.prompts import load_prompts

    example = load_prompts().by_difficulty["easy"].examples[0]
    return {key: example[key] for key in ("question", "answer", "topic")}


BAD_ITEMS["few_shot_copy"] = _first_prompt_example()


@dataclass
class FaultConfig:
    latency: tuple[float, float] = (0.0, 0.0)
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    slow_s: float = 5.0
    rate_malformed: float = 0.0
    rate_garbage: float = 0.0
    rate_think: float = 0.0
    rate_fence: float = 0.0
    rate_bad_item: float = 0.0
    rate_duplicate: float = 0.0
    reject_response_format: bool = False

    @classmethod
    def all_faults(cls, **overrides) -> "FaultConfig":
        """Every fault at a rate that shows up in a few dozen requests."""
        base = dict(rate_429=0.1, retry_after_s=1.0, rate_500=0.1, rate_slow=0.05, slow_s=3.0,
                    rate_malformed=0.1, rate_garbage=0.1, rate_think=0.3, rate_fence=0.3,
                    rate_bad_item=0.5, rate_duplicate=0.2, reject_response_format=True)
        base.update(overrides)
        return cls(**base)


@dataclass
class ServerStats:
    requests: int = 0
    status: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    # key -> time of the 429 sent, and the delay the client actually waited before retrying
    retry_waits: list[tuple[float, float]] = field(default_factory=list)
    max_in_flight: int = 0


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) for the given parts."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()
    return int(digest[:12], 16) / float(1 << 48)


def _dress(body: str, key: str, cfg: FaultConfig, faults: list[str], fence_intro: str, thought: str) -> str:
    """The reply faults both modes share: a Markdown fence (rate_fence), then a thought before it (rate_think)."""
    if _unit(key, "fence") < cfg.rate_fence:
        body = f"{fence_intro}```json\n{body}\n```"
        faults.append("fence")
    if _unit(key, "think") < cfg.rate_think:
        body = f"<think>\n{thought}\n</think>\n" + body
        faults.append("think")
    return body


def _plain_sentences(text: str) -> list[str]:
    text = _LINK.sub(r"\1", _MARKUP.sub(" ", text))
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "|", "$$", "-", "*"))]
    flat = re.sub(r"\s+", " ", " ".join(lines))
    sentences = [flat[a:b].strip() for a, b in split_sentences(flat)]
    return [s for s in sentences if 25 <= len(s) <= 400]


def _question_for(sentence: str, difficulty: str) -> str:
    if _CJK.search(sentence):
        head = sentence[:16].rstrip("，。、；：,. ")
        return {"easy": f"请解释：{head}……指的是什么？", "medium": f"为什么说{head}……？请说明原因。",
                "hard": f"如何实现或分析“{head}……”？请给出具体步骤。"}[difficulty]
    head = " ".join(sentence.split()[:8]).rstrip(",.;:")
    return {"easy": f"What is meant by: \"{head}\"?", "medium": f"Why is it the case that \"{head}\"?",
            "hard": f"How would you implement or analyse \"{head}\"? Give the steps."}[difficulty]


def build_items(source: str, difficulty: str, count: int, rng: random.Random, avoid: str = "",
                reasoning: bool = False) -> list[dict]:
    """Items from sentences of `source`; like an obedient model, skips questions listed in `avoid`,
    and writes a `reasoning` field when the prompt asks for one."""
    sentences = _plain_sentences(source)
    if not sentences:
        return []
    size = SENTENCES_PER_ANSWER[difficulty]
    starts = list(range(max(1, len(sentences) - size + 1)))
    rng.shuffle(starts)
    items = []
    for start in starts:
        picked = sentences[start:start + size]
        question = _question_for(picked[0], difficulty)
        if question in avoid:
            continue
        items.append({"question": question, "answer": " ".join(picked), "topic": " ".join(picked[0].split()[:3])[:20]})
        if reasoning:
            items[-1]["reasoning"] = f"The source states: {picked[0]} The answer follows from it."
        if len(items) == count:
            break
    return items


class FaultLLMServer:
    """The app plus its fault state; `start()` serves it on a free port in a background thread."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self.stats = ServerStats()
        self.attempts: dict[str, int] = defaultdict(int)
        self.pending_retry: dict[str, float] = {}
        self.in_flight = 0
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- content ---------------------------------------------------------------------------------
    def reply_content(self, messages: list[dict], seed: int | None) -> tuple[str, list[str]]:
        """The assistant text for a request (pure function of messages and seed) and the faults used."""
        key = hashlib.sha256(json.dumps([messages, seed], ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        text = "\n".join(str(m.get("content", "")) for m in messages)
        source_match = _SOURCE.search(text)
        difficulty = (_DIFFICULTY.search(text) or re.match(r"(easy)", "easy")).group(1).lower()
        count_match = _COUNT.search(text)
        count = min(int(count_match.group(1)), 20) if count_match else 3
        rng = random.Random(key)
        source = source_match.group(1) if source_match else ""
        items = build_items(source, difficulty, count, rng, avoid=text[:source_match.start()] if source_match else "",
                            reasoning='"reasoning"' in text)
        faults = []
        cfg = self.config
        if items and _unit(key, "bad") < cfg.rate_bad_item:
            rule = sorted(BAD_ITEMS)[int(_unit(key, "which") * len(BAD_ITEMS))]
            items[-1] = dict(BAD_ITEMS[rule])
            faults.append(f"bad_item:{rule}")
        if items and _unit(key, "dup") < cfg.rate_duplicate:
            items[0] = {**items[0], "question": DUPLICATE_QUESTION}
            faults.append("duplicate")
        body = json.dumps({"items": items}, ensure_ascii=False, indent=1)
        is_repair = "could not be parsed" in str(messages[-1].get("content", ""))
        if not is_repair and _unit(key, "garbage") < cfg.rate_garbage:
            faults.append("garbage")
            return "Sure! Here are some great questions: first, what is a GPU; second, what is a warp.", faults
        if _unit(key, "malformed") < cfg.rate_malformed:
            body = body.rstrip().rstrip("}").rstrip().rstrip("]") + ",\n"      # torn tail, trailing comma
            faults.append("malformed")
        return _dress(body, key, cfg, faults, "Here is the JSON:\n",
                      'The user wants {"items": [...]} — let me pick sentences.'), faults

    # -- HTTP ------------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "fault-llm", "object": "model", "owned_by": "qaforge-tests"}]}

        @app.get("/stats")
        async def stats():
            return {**asdict(self.stats), "status": dict(self.stats.status), "faults": dict(self.stats.faults)}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.stats.requests += 1
            self.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.in_flight)
            try:
                return await self._chat(body)
            finally:
                self.in_flight -= 1

        return app

    def _error(self, status: int, message: str, headers: dict | None = None) -> JSONResponse:
        self.stats.status[status] += 1
        return JSONResponse({"error": {"message": message, "type": "fault_injection", "code": status}},
                            status_code=status, headers=headers)

    async def _chat(self, body: dict):
        cfg = self.config
        messages, seed = body.get("messages", []), body.get("seed")
        key = hashlib.sha256(json.dumps([messages, seed], ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        if cfg.reject_response_format and (body.get("response_format") or {}).get("type") == "json_schema":
            self.stats.faults["reject_response_format"] += 1
            return self._error(400, "response_format of type json_schema is not supported by this server")
        attempt = self.attempts[key]
        self.attempts[key] += 1
        now = time.monotonic()
        if key in self.pending_retry:
            self.stats.retry_waits.append((cfg.retry_after_s, now - self.pending_retry.pop(key)))
        low, high = cfg.latency
        latency = low + (high - low) * _unit(key, attempt, "latency")
        if attempt == 0:
            if _unit(key, "429") < cfg.rate_429:
                self.stats.faults["429"] += 1
                self.pending_retry[key] = now
                return self._error(429, "rate limited, slow down", {"Retry-After": f"{cfg.retry_after_s:g}"})
            if _unit(key, "500") < cfg.rate_500:
                self.stats.faults["500"] += 1
                return self._error(500, "internal error (injected)")
            if _unit(key, "slow") < cfg.rate_slow:
                self.stats.faults["slow"] += 1
                latency = cfg.slow_s
        if latency:
            await asyncio.sleep(latency)
        content, faults = self.reply_content(messages, seed)
        for fault in faults:
            self.stats.faults[fault] += 1
        self.stats.status[200] += 1
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
        usage = {"prompt_tokens": prompt_chars // 2, "completion_tokens": len(content) // 2}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"chatcmpl-{key[:16]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fault-llm"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}], "usage": usage}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> "FaultLLMServer":
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False,
                                limit_concurrency=1000, backlog=2048)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fault LLM server did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> "FaultLLMServer":
        return self.start() if not self.port else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"))
    parser.add_argument("--all-faults", action="store_true", help="enable every fault at its default rate")
    args = parser.parse_args()
    config = FaultConfig.all_faults(latency=tuple(args.latency)) if args.all_faults else FaultConfig(latency=tuple(args.latency))
    server = FaultLLMServer(config).start(port=args.port)
    print(f"fault LLM server on {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
