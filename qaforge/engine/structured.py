"""Constrained decoding (structured output) for the native engine, through llguidance.

A request that asks for structured output carries a `Grammar` in `SamplingParams.grammar`. Before
each sampling step the sampler asks `GrammarMasks.apply` to set the logits of every token the grammar
forbids to -inf, for the constrained rows only. Each sequence has its own llguidance matcher, which
catches up with the sequence's new tokens right before its next mask is computed: the scheduler has
appended them by then, so the matcher follows the very tokens the sequence holds (also after a
preemption, which recomputes the KV cache but keeps the tokens), and the sampler needs no host sync of
its own. A batch with no grammar never reaches this module, so unconstrained requests cost nothing.

Think first (`Grammar.after_thought`, thinking mode): the sequence writes a free thought and the grammar
starts right after its `</think>`. While it thinks, its mask only forbids EOS (an answer cannot end inside
a thought); a completion that must open the thought itself (the prompt has not) gets `<think>` forced
first; once the thought has used its budget, `</think>` is forced, so the structured answer always keeps
the rest of max_tokens. Lazy masking rather than one "text up to </think>, then JSON" grammar: the budget
is exact, and the tags are the model's own single tokens, not text a regex would have to exclude.

llguidance is the grammar library: a Rust core with no torch dependency, JSON Schema, Lark and regex
front ends, masks in tens of microseconds for Qwen-sized vocabularies, and the backend vLLM itself
offers for structured output.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Sequence as Seq

import numpy as np
import torch

from qaforge.chat import THINK_TAGS  # Qwen3's; each one token of its vocabulary

log = logging.getLogger("qaforge.engine")

# Compact JSON (no free whitespace): a weak or hot model cannot wander off into endless blanks, and the
# text stays short. Separators are JSON's own, so any JSON parser reads the result.
JSON_OPTIONS = {"whitespace_flexible": False}
# A thought may use this share of max_tokens at most; then `</think>` is forced (docs/serving.md).
THOUGHT_SHARE = 0.5


def thought_budget(max_tokens: int) -> int:
    """Tokens a thought may use before the structured answer must start, counting its tags."""
    return max(2, int(max_tokens * THOUGHT_SHARE))


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
        self.think_ids = _think_ids(hf_tokenizer)  # (open, close), None: the model cannot think
        self._num_tokens = len(hf_tokenizer)
        self._thought_rows: dict[int, np.ndarray] = {}

    def thought_row(self, words: int) -> np.ndarray:
        """The mask of a free thought: every token of the tokenizer but EOS (ids past it never)."""
        row = self._thought_rows.get(words)
        if row is None:
            allowed = np.zeros(words * 32, dtype=bool)
            allowed[:min(self._num_tokens, self.size, words * 32)] = True
            allowed[list(self.eos_token_ids)] = False
            row = self._thought_rows[words] = np.packbits(allowed, bitorder="little").view(np.int32)
        return row

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


def _think_ids(hf_tokenizer: Any) -> tuple[int, int] | None:
    ids = []
    for tag in THINK_TAGS:
        tid = hf_tokenizer.convert_tokens_to_ids(tag)
        if not isinstance(tid, int) or hf_tokenizer.convert_ids_to_tokens(tid) != tag:
            return None
        ids.append(tid)
    return ids[0], ids[1]


@dataclass(frozen=True, eq=False)
class Grammar:
    """One request's constraint: grammar text checked against the vocabulary it will be matched over.
    With `thought_budget` the sequence thinks first and the grammar applies after `</think>`."""
    text: str
    vocab: Vocabulary
    thought_budget: int | None = None

    def after_thought(self, budget: int) -> "Grammar":
        """This grammar, applied after a thought of at most `budget` tokens (see the module's docstring)."""
        if self.vocab.think_ids is None:
            raise GrammarError(f"this model's vocabulary has no {THINK_TAGS[0]}/{THINK_TAGS[1]} tokens, "
                               "so it cannot think before a structured answer")
        return dataclasses.replace(self, thought_budget=max(2, int(budget)))

    def matcher(self) -> Any:
        from llguidance import LLMatcher

        return LLMatcher(self.vocab.tokenizer, self.text, log_level=0)


class _Matched:
    """A sequence's matcher and how many of its completion tokens the matcher has consumed."""
    __slots__ = ("matcher", "consumed", "failed", "thinking", "must_open")

    def __init__(self, matcher: Any, thinking: bool = False, must_open: bool = False):
        self.matcher, self.consumed, self.failed = matcher, 0, False
        self.thinking = thinking    # still inside the thought: the matcher has not started
        self.must_open = must_open  # the completion opens the thought itself: `<think>` comes first


def _prompt_in_thought(seq: Any, think_ids: tuple[int, int]) -> bool:
    """Whether the prompt ends inside an open thought (templates such as Qwen3-Thinking-2507's end in
    `<think>`), so the completion continues it instead of opening one."""
    open_id, close_id = think_ids
    for t in reversed(seq.token_ids[:seq.num_prompt_tokens]):
        if t == close_id:
            return False
        if t == open_id:
            return True
    return False


class GrammarMasks:
    """Per-sequence matchers and the masking step; one per sampler."""

    def __init__(self) -> None:
        from llguidance import LLExecutor

        # Weak keys: a matcher lives exactly as long as its sequence.
        self._state: "weakref.WeakKeyDictionary[Any, _Matched]" = weakref.WeakKeyDictionary()
        self._executor = LLExecutor()

    def _catch_up(self, seq: Any) -> _Matched:
        st = self._state.get(seq)
        grammar = seq.params.grammar
        if st is None:
            thinking = grammar.thought_budget is not None
            st = self._state[seq] = _Matched(grammar.matcher(), thinking, thinking and not _prompt_in_thought(
                seq, grammar.vocab.think_ids))
        if st.thinking:
            completion = seq.completion_token_ids
            try:  # the thought ends at its `</think>`; the matcher starts on the token after it
                st.consumed = completion.index(grammar.vocab.think_ids[1], st.consumed) + 1
                st.thinking = False
            except ValueError:
                st.consumed = len(completion)
                return st
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
            elif st.thinking:
                bitmask[j] = _thought_mask(st, seqs[i].params.grammar, words)
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


def _thought_mask(st: _Matched, grammar: Grammar, words: int) -> np.ndarray:
    """The next token of a thought that has `st.consumed` tokens: `<think>` first when the completion
    must open it, `</think>` once the budget is used, else anything but EOS."""
    open_id, close_id = grammar.vocab.think_ids
    if st.must_open and st.consumed == 0:
        return _bits_of((open_id,), words)
    if st.consumed >= grammar.thought_budget - 1:  # the last token of the budget is the closing tag
        return _bits_of((close_id,), words)
    return grammar.vocab.thought_row(words)


def _bits_of(token_ids: Seq[int], words: int) -> np.ndarray:
    row = np.zeros(words, dtype=np.uint32)
    for t in token_ids:
        row[t // 32] |= np.uint32(1 << (t % 32))
    return row.view(np.int32)
