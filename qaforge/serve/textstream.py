"""Token ids -> the text a client may see, incrementally.

Two jobs: detokenize without re-decoding the whole answer at every step (that would be quadratic,
and 1,000 streams share two CPU cores in the tests), and decide what part of the text is safe to
send: never a think block or a special token, never a stop string, and never a tail that might
still turn into one of those when the next token arrives. In thinking mode (a `ReasoningSplitter`
given) the thought goes to its own channel, `reasoning`, and stop strings apply to the content only:
they describe the answer's format, not the model's notes.
"""

from __future__ import annotations

from typing import Any, Sequence

from qaforge.chat import (PARTIAL_SPECIAL_TOKEN, SPECIAL_TOKEN, THINK_TAGS, ReasoningSplitter,
                          clean_answer, split_reasoning, strip_hidden)


class IncrementalDetokenizer:
    """Decodes a growing list of token ids, looking back only a few tokens per step.

    The prefix/read offsets trick (as in vLLM and TGI): decode a short window twice, with and
    without the new tokens, and keep the difference, unless it ends in a partial UTF-8
    character (U+FFFD), in which case wait for the next token.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token_ids: Sequence[int]) -> str:
        """Append tokens; return the text they completed (maybe "")."""
        self.token_ids.extend(token_ids)
        decode = self.tokenizer.decode
        prefix = decode(self.token_ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        full = decode(self.token_ids[self._prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix):]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.token_ids)
            self.text += delta
            return delta
        return ""

    def final_text(self) -> str:
        """Everything, including a trailing partial character the stream held back."""
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=True)


def _held_back_tag(text: str) -> int:
    """Index where a possibly unfinished `<think>`, `</think>` or `<|...|>` starts (else len)."""
    i = text.rfind("<")
    if i < 0:
        return len(text)
    tail = text[i:]
    if any(tag.startswith(tail) for tag in THINK_TAGS):
        return i
    if PARTIAL_SPECIAL_TOKEN.fullmatch(tail):
        return i
    return len(text)


def _stop_cut(text: str, stop: Sequence[str], final: bool) -> tuple[str, bool]:
    """Cut at the first stop string; while streaming, also hold back a tail that could begin one."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if hits:
        return text[:min(hits)], True
    if not final:
        for s in stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    text = text[:-k]
                    break
    return text, False


def visible_text(raw: str, stop: Sequence[str] = (), final: bool = False) -> tuple[str, bool]:
    """(text the client may see now, whether a stop string ended it)."""
    if final:
        text = clean_answer(raw)
        text, stopped = _stop_cut(text, stop, final=True)
        return text.strip(), stopped
    text = strip_hidden(raw)
    text = text[:_held_back_tag(text)]
    text, stopped = _stop_cut(text, stop, final=False)
    # Whitespace at either end waits: the final answer is stripped (clean_answer), so a stream
    # sends trailing whitespace only once more text follows it, and both give the same text.
    return text.strip(), stopped


def visible_reasoning(raw: str, final: bool = False) -> str:
    """The thought a client may see: no special tokens, and while streaming no tail that may still
    become one."""
    text = SPECIAL_TOKEN.sub("", raw)
    if not final:
        text = text[:_held_back_tag(text)]
    return text.strip()


def split_visible(raw: str, stop: Sequence[str] = (), opened: bool = False) -> tuple[str, str, bool]:
    """Thinking mode's final texts of a whole completion: (reasoning, content, stopped)."""
    reasoning, content = split_reasoning(raw, opened)
    text, stopped = visible_text(content, stop, final=True)
    return visible_reasoning(reasoning, final=True), text, stopped


class TextStream:
    """Feeds engine tokens in, gives client-safe text deltas out (`push`); in thinking mode the
    thought's deltas collect beside them (`take_reasoning`)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (),
                 splitter: ReasoningSplitter | None = None):
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stop = [s for s in stop if s]
        self.sent = ""
        self.stopped = False
        self.splitter = splitter
        self._reasoning_raw = self._content_raw = ""
        self._reasoning_sent = self._reasoning_new = ""

    @property
    def num_tokens(self) -> int:
        return len(self.detok.token_ids)

    def push(self, token_ids: Sequence[int]) -> str:
        """New tokens in; the newly visible text out ("" if nothing can be sent yet)."""
        piece = self.detok.add(token_ids)
        if self.splitter is None:
            return self._advance(visible_text(self.detok.text, self.stop, final=False))
        reasoning, content = self.splitter.feed(piece)
        self._reasoning_raw += reasoning
        self._content_raw += content
        self._advance_reasoning(visible_reasoning(self._reasoning_raw))
        return self._advance(visible_text(self._content_raw, self.stop, final=False))

    def finish(self) -> str:
        """The generation ended: release whatever was held back (trailing partial tags excepted)."""
        if self.splitter is None:
            return self._advance(visible_text(self.detok.final_text(), self.stop, final=True))
        # From the whole text again: the last token may have completed a character the stream held.
        reasoning, content, stopped = split_visible(self.detok.final_text(), self.stop,
                                                    self.splitter.opened)
        self._advance_reasoning(reasoning)
        return self._advance((content, stopped))

    def take_reasoning(self) -> str:
        """The thought's text that became visible since the last call ("" outside thinking mode)."""
        new, self._reasoning_new = self._reasoning_new, ""
        return new

    def _advance_reasoning(self, text: str) -> None:
        if text.startswith(self._reasoning_sent):
            self._reasoning_new += text[len(self._reasoning_sent):]
            self._reasoning_sent = text

    def _advance(self, result: tuple[str, bool]) -> str:
        text, stopped = result
        self.stopped = self.stopped or stopped
        if not text.startswith(self.sent):  # e.g. final strip removed sent trailing spaces
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
