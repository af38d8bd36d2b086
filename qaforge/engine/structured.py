"""Constrained decoding (structured output) for the native engine, through llguidance.

A request that asks for structured output carries a `Grammar` in `SamplingParams.grammar`. Before
each sampling step the sampler asks `GrammarMasks.apply` to set the logits of every token the grammar
forbids to -inf, for the constrained rows only. Each sequence has its own llguidance matcher, which
catches up with the sequence's new tokens right before its next mask is computed: the scheduler has
appended them by then, so the matcher follows the very tokens the sequence holds (also after a
preemption, which recomputes the KV cache but keeps the tokens), and the sampler needs no host sync of
its own. A batch with no grammar never reaches this module, so unconstrained requests cost nothing.

llguidance is the grammar library: a Rust core with no torch dependency, JSON Schema, Lark and regex
front ends, masks in tens of microseconds for Qwen-sized vocabularies, and the backend vLLM itself
offers for structured output.
"""
from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Sequence as Seq

import numpy as np
import torch

log = logging.getLogger("qaforge.engine")

# Compact JSON (no free whitespace): a weak or hot model cannot wander off into endless blanks, and the
# text stays short. Separators are JSON's own, so any JSON parser reads the result.
JSON_OPTIONS = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """A schema or grammar llguidance cannot compile; the message says what is wrong."""


def json_schema_grammar(schema: dict | str) -> str:
    """llguidance grammar text for JSON valid against `schema` (a dict or its JSON text), checked
    without a vocabulary: GrammarError with the library's message when it cannot be compiled."""
    from llguidance import LLMatcher

    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"the schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
    try:
        text = LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"invalid JSON schema: {exc}") from None
    message = LLMatcher.validate_grammar(text)
    if message and not message.startswith("WARNING"):
        raise GrammarError(message)
    return text


class Vocabulary:
    """llguidance's view of one model's vocabulary: built once per engine (about a second for Qwen3's
    151k tokens), shared by every grammar. `size` is the logits' width (config.vocab_size), which may
    exceed the tokenizer's: ids past the tokenizer are never allowed."""

    def __init__(self, hf_tokenizer: Any, size: int, eos_token_ids: Seq[int]):
        import llguidance.hf

        if not eos_token_ids:
            raise ValueError("structured output needs the model's EOS token ids (generation_config.json)")
        self.size = int(size)
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=self.size,
                                                      eos_token=list(self.eos_token_ids))

    def compile(self, grammar_text: str) -> "Grammar":
        """Check an llguidance grammar against this vocabulary: GrammarError with the library's message."""
        from llguidance import LLMatcher

        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar_text, self.tokenizer)
        if is_error:
            raise GrammarError(messages[0] if messages else "invalid grammar")
        return Grammar(grammar_text, self)

    def json_schema(self, schema: dict | str) -> "Grammar":
        """A grammar for JSON text valid against `schema` (a dict or its JSON text)."""
        return self.compile(json_schema_grammar(schema))

    def json_object(self) -> "Grammar":
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        return self.json_schema({"type": "object"})


@dataclass(frozen=True, eq=False)
class Grammar:
    """One request's constraint: grammar text checked against the vocabulary it will be matched over."""
    text: str
    vocab: Vocabulary

    def matcher(self) -> Any:
        from llguidance import LLMatcher

        return LLMatcher(self.vocab.tokenizer, self.text, log_level=0)


class _Matched:
    """A sequence's matcher and how many of its completion tokens the matcher has consumed."""
    __slots__ = ("matcher", "consumed", "failed")

    def __init__(self, matcher: Any):
        self.matcher, self.consumed, self.failed = matcher, 0, False


class GrammarMasks:
    """Per-sequence matchers and the masking step; one per sampler."""

    def __init__(self) -> None:
        from llguidance import LLExecutor

        # Weak keys: a matcher lives exactly as long as its sequence.
        self._state: "weakref.WeakKeyDictionary[Any, _Matched]" = weakref.WeakKeyDictionary()
        self._executor = LLExecutor()

    def _catch_up(self, seq: Any) -> _Matched:
        st = self._state.get(seq)
        if st is None:
            st = self._state[seq] = _Matched(seq.params.grammar.matcher())
        new = seq.completion_token_ids[st.consumed:]
        if new and not st.failed:
            if not st.matcher.consume_tokens(new):
                # Only a token the mask forbade gets here (e.g. a forced stop id): end the sequence.
                st.failed = True
                log.warning("grammar matcher failed for request %s: %s", seq.request_id,
                            st.matcher.get_error())
        st.consumed += len(new)
        return st

    def apply(self, logits: torch.Tensor, seqs: Seq[Any], rows: Seq[int]) -> None:
        """Set logits[row, t] = -inf for every token t the row's grammar forbids next (in place)."""
        from llguidance.numpy import fill_next_token_bitmask_par

        V = logits.shape[-1]
        words = (V + 31) // 32
        bitmask = np.full((len(rows), words), -1, dtype=np.int32)
        todo, failed = [], []
        for j, i in enumerate(rows):
            st = self._catch_up(seqs[i])
            if st.failed:
                failed.append(j)
            else:
                todo.append((st.matcher, j))
        if todo:
            fill_next_token_bitmask_par(self._executor, todo, bitmask)
        if failed:
            eos = seqs[rows[0]].params.grammar.vocab.eos_token_ids
            bitmask[failed] = _bits_of(eos, words)
        dev = logits.device
        bits = torch.from_numpy(bitmask).to(dev, non_blocking=True)
        shifts = torch.arange(32, dtype=torch.int32, device=dev)
        allowed = ((bits[:, :, None] >> shifts) & 1).bool().view(len(rows), words * 32)[:, :V]
        idx = torch.tensor(list(rows), dtype=torch.int64).to(dev, non_blocking=True)
        logits.index_copy_(0, idx, logits[idx].masked_fill(~allowed, float("-inf")))


def _bits_of(token_ids: Seq[int], words: int) -> np.ndarray:
    row = np.zeros(words, dtype=np.uint32)
    for t in token_ids:
        row[t // 32] |= np.uint32(1 << (t % 32))
    return row.view(np.int32)
