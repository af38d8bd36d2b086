"""Async OpenAI-compatible chat client: bounded concurrency, retries with exponential backoff and
jitter that honour Retry-After, timeouts, JSON-schema response format with fallback, token accounting.

Works with any server speaking the OpenAI chat completions API (DashScope compatible mode, vLLM,
`qaforge serve`, the test fault server). Settings come from arguments or the environment:
  OPENAI_BASE_URL (or QAFORGE_GEN_BASE_URL)   e.g. https://dashscope.aliyuncs.com/compatible-mode/v1
  OPENAI_API_KEY  (or QAFORGE_GEN_API_KEY)
  QAFORGE_GEN_MODEL                            e.g. qwen-max
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qaforge.generate.filters import DEFAULT_ANSWER_BOUNDS, QUESTION_BOUNDS
from qaforge.paths import PRICES_FILE

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")
TOPIC_MAX_CHARS = 32  # the prompts ask for a 2-8 character topic


def items_schema(max_items: int, with_reasoning: bool = False) -> dict:
    """The json_schema response format of one call: at most `max_items` items, strings no longer than
    the quality filter accepts (filters.py), no other keys. Bounded on purpose: a server that enforces
    the schema (qaforge serve, vLLM) then always ends the JSON within a known length, instead of a weak
    or hot model writing one endless string until max_tokens cuts it off."""
    longest_answer = max(high for _, high in DEFAULT_ANSWER_BOUNDS.values())
    item = {"type": "object",
            "properties": {"question": {"type": "string", "maxLength": QUESTION_BOUNDS[1]},
                           "answer": {"type": "string", "maxLength": longest_answer},
                           "topic": {"type": "string", "maxLength": TOPIC_MAX_CHARS}},
            "required": ["question", "answer", "topic"], "additionalProperties": False}
    if with_reasoning:  # a constrained decoder emits only the properties a schema names
        item["properties"] = {"question": item["properties"]["question"], "reasoning": {"type": "string"},
                              **{k: v for k, v in item["properties"].items() if k != "question"}}
        item["required"].insert(1, "reasoning")
    return {"name": "qa_items_with_reasoning" if with_reasoning else "qa_items", "schema": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": item, "minItems": 1, "maxItems": max_items}},
        "required": ["items"], "additionalProperties": False}}


def env_default(*names: str, default: str = "") -> str:
    return next((os.environ[n] for n in names if os.environ.get(n)), default)


@dataclass
class LLMOptions:
    """Everything the LLM generator needs; the CLI flags map one to one onto these fields."""
    base_url: str = field(default_factory=lambda: env_default("QAFORGE_GEN_BASE_URL", "OPENAI_BASE_URL"))
    api_key: str = field(default_factory=lambda: env_default("QAFORGE_GEN_API_KEY", "OPENAI_API_KEY",
                                                             default="EMPTY"))
    model: str = field(default_factory=lambda: env_default("QAFORGE_GEN_MODEL", default="qwen-max"))
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 4096
    response_format: str = "auto"          # auto: try json_schema, fall back when the server rejects it
    questions_per_call: int = 5
    max_rounds: int = 6
    targets: dict[int, int] | None = None  # chapter -> target; else chapter map, PMPP table, default_target
    target_per_chapter: int | None = None  # one target for every chapter (overrides all of the above)
    default_target: int = 60
    prompt_dir: Path | None = None
    keywords_file: Path | None = None
    leakage_file: Path | None = None
    grounding_threshold: float = 0.3
    price_in_per_1k: float | None = None
    price_out_per_1k: float | None = None
    with_reasoning: bool = False           # ask for a reasoning trace per answer (prompts/reasoning.yaml)

    def validate(self) -> None:
        if not self.base_url:
            raise ValueError("no API base URL: pass --api-base or set OPENAI_BASE_URL")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}, got {self.response_format!r}")
        if self.concurrency < 1 or self.questions_per_call < 1:
            raise ValueError("concurrency and questions_per_call must be >= 1")

    def prices(self) -> tuple[float, float]:
        table = yaml.safe_load(PRICES_FILE.read_text(encoding="utf-8")) or {}
        row = table.get(self.model, {})
        return (self.price_in_per_1k if self.price_in_per_1k is not None else float(row.get("input_per_1k", 0.0)),
                self.price_out_per_1k if self.price_out_per_1k is not None else float(row.get("output_per_1k", 0.0)))


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int


class CallFailed(RuntimeError):
    """All retries were spent (or the request was refused for good)."""


def retry_after_seconds(headers) -> float | None:
    """Server's wish from `retry-after-ms` or `Retry-After` (seconds; an HTTP date is ignored)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


class LLMClient:
    def __init__(self, options: LLMOptions) -> None:
        from openai import AsyncOpenAI

        options.validate()
        self.options = options
        # The SDK's own retries are off: ours honour Retry-After and count attempts for the report.
        self.client = AsyncOpenAI(base_url=options.base_url, api_key=options.api_key,
                                  timeout=options.timeout_s, max_retries=0)
        self.semaphore = asyncio.Semaphore(options.concurrency)
        self.response_format = "json_schema" if options.response_format == "auto" else options.response_format
        self.retries = 0
        self.fallbacks: list[str] = []
        self._rng = random.Random()

    def _format_arg(self) -> dict | None:
        if self.response_format == "json_schema":
            return {"type": "json_schema",
                    "json_schema": items_schema(self.options.questions_per_call, self.options.with_reasoning)}
        if self.response_format == "json_object":
            return {"type": "json_object"}
        return None

    def _fall_back(self, rejected: str) -> bool:
        """Step down json_schema -> json_object -> none after the server rejected the format."""
        if self.options.response_format != "auto" or self.response_format == "none":
            return False
        if rejected != self.response_format:      # a concurrent call already stepped down
            return True
        self.fallbacks.append(self.response_format)
        self.response_format = "json_object" if self.response_format == "json_schema" else "none"
        return True

    def _backoff(self, attempt: int, server_wish: float | None) -> float:
        delay = min(self.options.backoff_max_s, self.options.backoff_base_s * 2 ** attempt)
        delay = delay / 2 + self._rng.uniform(0, delay / 2)        # "equal jitter"
        return max(delay, server_wish) if server_wish is not None else delay

    async def complete(self, messages: list[dict], seed: int) -> Completion:
        import openai

        attempt = 0
        while True:
            fmt = fmt_name = None
            try:
                # The slot is held only while a request is in flight, not while backing off.
                async with self.semaphore:
                    # The format is read once the slot is ours: a call that queued behind the one whose
                    # format was refused sends the stepped-down format, never the refused one.
                    fmt_name = self.response_format
                    fmt = self._format_arg()
                    kwargs = {"response_format": fmt} if fmt else {}
                    response = await self.client.chat.completions.create(
                        model=self.options.model, messages=messages, temperature=self.options.temperature,
                        max_tokens=self.options.max_tokens, seed=seed, **kwargs)
                usage = response.usage
                return Completion(response.choices[0].message.content or "",
                                  usage.prompt_tokens if usage else 0,
                                  usage.completion_tokens if usage else 0, attempt + 1)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                # Servers without structured output refuse the request (400/422) in their own words;
                # step down the format and ask again. A refusal for another reason recurs at "none".
                if fmt and self._fall_back(fmt_name):
                    continue
                raise CallFailed(f"request refused: {exc}") from exc
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as exc:
                if attempt >= self.options.max_retries:
                    raise CallFailed(f"gave up after {attempt + 1} attempts: {exc}") from exc
                response = getattr(exc, "response", None)
                wish = retry_after_seconds(response.headers if response is not None else None)
                delay = self._backoff(attempt, wish)
                attempt += 1
                self.retries += 1
                await asyncio.sleep(delay)
            except openai.APIStatusError as exc:   # other 4xx: a retry will not help
                raise CallFailed(f"HTTP {exc.status_code}: {exc}") from exc

    async def close(self) -> None:
        await self.client.close()
