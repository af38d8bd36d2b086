"""Chat-format helpers shared by every stage (train, eval, serve).

The engine sees token ids only; everything about messages, system prompts and
think blocks lives here, at the edges.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

# The course grader's default system prompt (part of its contract, docs/serving.md).
DEFAULT_SYSTEM_PROMPT = (
    "你是一位精通GPU体系结构、CUDA编程、Triton、cuTile、Tilelang算子开发的顶级技术专家，"
    "你的回答详细准确，并且尽量包含回答中的英文关键词。"
)

THINK_TAGS = ("<think>", "</think>")
THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
# An unterminated think block (generation cut by max_tokens) hides everything after it.
OPEN_THINK = re.compile(r"<think>.*\Z", re.DOTALL)
SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")
# What a special token looks like before its last characters arrive (a stream holds it back).
PARTIAL_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]*\|?")


def build_messages(question: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                   answer: str | None = None) -> list[dict[str, str]]:
    """System + user (+ assistant) messages in the OpenAI / HF chat format."""
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], enable_thinking: bool = False,
                  **template_kwargs: Any) -> str:
    """Render messages with the model's chat template, ready for generation. Non-thinking by default
    (Qwen3's template then adds an empty think block); `template_kwargs` reach the template as
    variables, as vLLM's `chat_template_kwargs` do."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking,
        **template_kwargs)


def prompt_token_ids(tokenizer: Any, question: str,
                     system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                     enable_thinking: bool = False) -> list[int]:
    """Token ids of the generation prompt for one question (what the engine is fed)."""
    return prompts_token_ids(tokenizer, [question], system_prompt, enable_thinking)[0]


def prompts_token_ids(tokenizer: Any, questions: Sequence[str],
                      system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                      enable_thinking: bool = False) -> list[list[int]]:
    """`prompt_token_ids` for many questions, tokenized in one batch call: the same ids, and for the
    grader's thousand-question /predict a measurable part of its wall time less."""
    texts = [render_prompt(tokenizer, build_messages(q, system_prompt), enable_thinking)
             for q in questions]
    if hasattr(tokenizer, "encode_many"):  # qaforge.fasttok: the shared system turn encoded once
        return tokenizer.encode_many(texts)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def prompt_opens_think(prompt_text: str) -> bool:
    """Whether a rendered generation prompt already opened the think block (templates such as
    Qwen3-Thinking-2507's end in `<think>\\n`), so the completion starts inside the thought."""
    return prompt_text.rstrip().endswith(THINK_TAGS[0])


def template_opens_think(tokenizer: Any) -> bool:
    """`prompt_opens_think` for this tokenizer's template in thinking mode (one probe render)."""
    probe = render_prompt(tokenizer, build_messages("?", None), enable_thinking=True)
    return prompt_opens_think(probe)


def join_reasoning(reasoning: str, answer: str) -> str:
    """An assistant turn with its thought, as Qwen3 writes it: `<think>\\n…\\n</think>\\n\\n` + answer."""
    if not reasoning.strip():
        return answer
    return f"{THINK_TAGS[0]}\n{reasoning.strip()}\n{THINK_TAGS[1]}\n\n{answer.lstrip()}"


def strip_hidden(text: str) -> str:
    """The text without think blocks (closed or cut off), stray `</think>` tags and special tokens."""
    text = THINK_BLOCK.sub("", text)
    text = OPEN_THINK.sub("", text)
    text = text.replace(THINK_TAGS[1], "")
    return SPECIAL_TOKEN.sub("", text)


def clean_answer(text: str) -> str:
    """Plain-text answer: no think block (closed or cut off), no special tokens, trimmed."""
    return strip_hidden(text).strip()


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is the start of `tag` (a tag maybe cut between pieces)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningSplitter:
    """Splits a completion into (reasoning, content) at `<think>…</think>`, fed text as it arrives.

    `feed(piece)` returns the (reasoning, content) text that piece completed, `finish()` the rest.
    A thought is a `<think>` block at the very start of the completion (Qwen3 opens it itself), or,
    with `opened=True` (the prompt already ended in `<think>`), everything up to `</think>`; an
    unterminated thought (max_tokens ran out) is all reasoning. Text without a leading think block
    is all content. Whitespace around either part is dropped and a tail that may still become a tag
    waits for the next piece, so the pieces always join up to `split_reasoning(whole text)`, however
    the text was cut.
    """

    def __init__(self, opened: bool = False):
        self.opened = opened
        self._mode = "reasoning" if opened else "start"
        self._buf = ""
        self._started = {"reasoning": False, "content": False}
        self._held = {"reasoning": "", "content": ""}   # trailing whitespace, sent once text follows

    def _emit(self, out: dict[str, str], part: str, text: str) -> None:
        if not self._started[part]:
            text = text.lstrip()
            if not text:
                return
            self._started[part] = True
        text = self._held[part] + text
        body = text.rstrip()
        self._held[part] = text[len(body):]
        out[part] += body

    def feed(self, piece: str) -> tuple[str, str]:
        out = {"reasoning": "", "content": ""}
        self._buf += piece
        while self._buf:
            if self._mode == "start":
                head = self._buf.lstrip()
                if head.startswith(THINK_TAGS[0]):
                    self._buf, self._mode = head[len(THINK_TAGS[0]):], "reasoning"
                elif THINK_TAGS[0].startswith(head):
                    break                    # whitespace or a cut "<thi": wait
                else:
                    self._mode = "content"
            elif self._mode == "reasoning":
                end = self._buf.find(THINK_TAGS[1])
                if end >= 0:
                    self._emit(out, "reasoning", self._buf[:end])
                    self._buf, self._mode = self._buf[end + len(THINK_TAGS[1]):], "content"
                    continue
                keep = _partial_suffix(self._buf, THINK_TAGS[1])
                self._emit(out, "reasoning", self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                break
            else:
                self._emit(out, "content", self._buf)
                self._buf = ""
        return out["reasoning"], out["content"]

    def finish(self) -> tuple[str, str]:
        """The completion ended: what was held back as a possible tag is plain text after all."""
        out = {"reasoning": "", "content": ""}
        if self._buf:
            self._emit(out, "reasoning" if self._mode == "reasoning" else "content", self._buf)
            self._buf = ""
        return out["reasoning"], out["content"]


def split_reasoning(text: str, opened: bool = False) -> tuple[str, str]:
    """(reasoning, content) of a whole completion, by the rules of `ReasoningSplitter`."""
    splitter = ReasoningSplitter(opened)
    reasoning, content = splitter.feed(text)
    rest_reasoning, rest_content = splitter.finish()
    return reasoning + rest_reasoning, content + rest_content
