"""Turn an LLM reply into QA items: strip think blocks and code fences, parse JSON, repair near-JSON;
read an item's reasoning trace (`--with-reasoning`)."""

from __future__ import annotations

import json
import re
from typing import Any

import json_repair

from qaforge.chat import THINK_TAGS, clean_answer

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class ParseError(ValueError):
    """The reply holds no usable JSON list of items; the message says why (it is quoted back to the model)."""


def _candidate(text: str) -> str:
    text = clean_answer(text)
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    return text[min(starts):].strip() if starts else text.strip()


def _items_of(data: Any) -> list:
    if isinstance(data, dict):
        for key in ("items", "questions", "qa_pairs", "data"):
            if isinstance(data.get(key), list):
                return data[key]
        if "question" in data:
            return [data]
    if isinstance(data, list):
        return data
    raise ParseError(f"expected a JSON object with an 'items' list, got {type(data).__name__}")


def parse_items(text: str) -> tuple[list, bool]:
    """(items, repaired): the raw item objects of a reply; repaired is True when json-repair was needed."""
    candidate = _candidate(text)
    if not candidate:
        raise ParseError("the reply is empty (after removing <think> blocks)")
    try:
        return _items_of(json.loads(candidate)), False
    except json.JSONDecodeError as exc:
        error = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if not candidate.startswith(("{", "[")):
        raise ParseError(f"no JSON object found in the reply ({error})")
    repaired = json_repair.loads(candidate)
    if repaired in ("", None, [], {}):
        raise ParseError(f"invalid JSON that could not be repaired: {error}")
    return _items_of(repaired), True


# Names models give the per-item thought besides the one the prompt asks for.
_REASONING_KEYS = ("reasoning", "reasoning_content", "thought", "thinking", "rationale")


def item_reasoning(item: dict) -> str:
    """The reasoning trace of a parsed item ("" when it has none): the first non-empty string under
    one of `_REASONING_KEYS`, with think tags a model may have wrapped it in removed (training adds
    its own)."""
    for key in _REASONING_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            for tag in THINK_TAGS:
                value = value.replace(tag, "")
            return value.strip()
    return ""
