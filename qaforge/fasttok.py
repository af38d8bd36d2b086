"""A light tokenizer for serving: tokenizer.json through the `tokenizers` library and the chat template
through jinja2, with the few methods of a transformers tokenizer that the server calls.

Why: `import transformers` plus `AutoTokenizer.from_pretrained` cost seconds of a server's start (issue 13,
docs/benchmarks.md), and the server only needs encode, decode and the chat template. The rules below are
transformers 5's, copied so the output is the same, token for token and character for character
(tests/test_fasttok.py checks it against transformers on the tiny model and, when present, a real Qwen
tokenizer):
  - Qwen2Tokenizer rebuilds its pipeline in Python (NFC normalizer, the Qwen split regex, byte-level
    decoder) whatever tokenizer.json says; `_qwen2_pipeline` does the same. Other classes keep
    tokenizer.json as it is; a class we do not know falls back to transformers (`load_serving_tokenizer`).
  - The chat template is chat_template.jinja when the directory has one, else tokenizer_config.json's;
    it renders in transformers' sandbox (trim_blocks, lstrip_blocks, loopcontrols, tojson without HTML
    escaping, raise_exception, strftime_now, the guarded dict and namespace) with the special tokens
    (bos_token, eos_token, ...) as variables, messages without their None-valued keys, and
    reasoning_content filled from `thinking`/`reasoning` as transformers does.
  - BPE models skip transformers' clean_up_tokenization_spaces (it would corrupt their text).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("qaforge")

# Classes whose transformers tokenizer is tokenizer.json plus, for Qwen2, the fixed pipeline below.
QWEN2_CLASSES = frozenset({"Qwen2Tokenizer", "Qwen2TokenizerFast"})
PLAIN_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Qwen2Tokenizer's defaults for the special tokens a config leaves out (None: no such token).
QWEN2_DEFAULTS = {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class FastTokenizer:
    """`tokenizers.Tokenizer` + a compiled chat template, called like a transformers tokenizer."""

    def __init__(self, backend: Any, chat_template: str | dict[str, str] | None,
                 special_tokens_map: dict[str, str], name_or_path: str = ""):
        self.backend_tokenizer = backend
        self.chat_template = chat_template
        self.special_tokens_map = special_tokens_map
        self.name_or_path = name_or_path
        for key in SPECIAL_TOKEN_KEYS:
            setattr(self, key, special_tokens_map.get(key))
        self.eos_token_id = backend.token_to_id(self.eos_token) if self.eos_token else None
        self.pad_token_id = backend.token_to_id(self.pad_token) if self.pad_token else None

    @classmethod
    def from_dir(cls, path: str | Path) -> "FastTokenizer | None":
        """The tokenizer of an HF directory, or None when only transformers can load it the same."""
        from tokenizers import Tokenizer

        path = Path(path)
        config_file, json_file = path / "tokenizer_config.json", path / "tokenizer.json"
        if not (config_file.is_file() and json_file.is_file()) or (path / "additional_chat_templates").exists():
            return None
        config = json.loads(config_file.read_text(encoding="utf-8"))
        klass = config.get("tokenizer_class") or "TokenizersBackend"
        if klass not in QWEN2_CLASSES | PLAIN_CLASSES:
            return None
        backend = Tokenizer.from_file(str(json_file))
        if type(backend.model).__name__ != "BPE" and config.get("clean_up_tokenization_spaces"):
            return None  # transformers would clean up the decoded text: not copied here
        specials = {}
        for key in SPECIAL_TOKEN_KEYS:
            value = config.get(key, QWEN2_DEFAULTS.get(key) if klass in QWEN2_CLASSES else None)
            value = value.get("content") if isinstance(value, dict) else value
            if value:
                specials[key] = value
        if klass in QWEN2_CLASSES:
            _qwen2_pipeline(backend, config.get("add_prefix_space") or False)
            # Qwen2Tokenizer adds its special tokens as special added tokens (a no-op when they are).
            from tokenizers import AddedToken
            backend.add_special_tokens([AddedToken(t, special=True) for t in dict.fromkeys(specials.values())])
        template_file = path / "chat_template.jinja"
        template = (template_file.read_text(encoding="utf-8") if template_file.is_file()
                    else config.get("chat_template"))
        if isinstance(template, list):  # named templates, as tokenizer_config.json stores them
            template = {t["name"]: t["template"] for t in template}
        return cls(backend, template, specials, str(path))

    # ---- encode / decode (transformers' TokenizersBackend) ---------------------------------------
    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        encodings = self.backend_tokenizer.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings]}

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """`self(texts, add_special_tokens=False)["input_ids"]`, with the texts' common head (a /predict
        batch: the template's system turn) encoded once. The head ends right after an added token that no
        added token can run past (`_safe_cut`), where the tokenizer splits the text anyway, so the ids
        are the same; without such a point every text is encoded whole."""
        cut = self._safe_cut(texts) if len(texts) > 1 else None
        if cut is None:
            return self(list(texts), add_special_tokens=False)["input_ids"]
        head = self.encode(texts[0][:cut], add_special_tokens=False)
        tails = self.backend_tokenizer.encode_batch([t[cut:] for t in texts], add_special_tokens=False)
        return [head + e.ids for e in tails]

    def _safe_cut(self, texts: Sequence[str]) -> int | None:
        """Where the common head of `texts` may be cut: just after a raw-matched added token T, with no
        added token starting inside the head and running past it (tokenizers matches added tokens
        leftmost-longest on the raw text, then normalizes and pre-tokenizes each piece between them)."""
        backend = self.backend_tokenizer
        if backend.truncation is not None or backend.padding is not None:
            return None
        added = list(backend.get_added_tokens_decoder().values())
        if any(t.lstrip or t.rstrip or t.single_word for t in added):
            return None  # stripping would reach across the cut
        head = os.path.commonprefix(list(texts))
        raw = [t.content for t in added if not t.normalized]
        cut = max((head.rfind(c) + len(c) for c in raw if c in head), default=0)
        if cut == 0:
            return None
        head = head[:cut]
        if any(head.endswith(a[:k]) for a in (t.content for t in added) for k in range(1, len(a))):
            return None
        enc = backend.encode(head, add_special_tokens=False)
        last = head[cut - max(len(c) for c in raw if head.endswith(c)):]
        if not enc.ids or enc.ids[-1] != backend.token_to_id(last) or enc.offsets[-1][1] != cut:
            return None  # the token is not matched there (a longer one swallowed its start)
        return cut

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: int | Sequence[int], skip_special_tokens: bool = False) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self.backend_tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self.backend_tokenizer.decode_batch([list(s) for s in sequences],
                                                   skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend_tokenizer.token_to_id(token)

    # ---- chat template (transformers' apply_chat_template, tokenize=False path) ------------------
    def get_chat_template(self, chat_template: str | None = None, tools: Any = None) -> str:
        template = self.chat_template if chat_template is None else chat_template
        if isinstance(template, dict):
            name = chat_template if chat_template in template else ("tool_use" if tools and "tool_use" in template
                                                                    else "default")
            template = template.get(name)
        if not template:
            raise ValueError("this tokenizer has no chat template")
        return template

    def apply_chat_template(self, conversation: list[dict[str, Any]], tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, tokenize: bool = True,
                            **kwargs: Any) -> str | list[int]:
        """The rendered conversation (tokenize=False) or its ids; `kwargs` are template variables."""
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        template = compiled_template(self.get_chat_template(chat_template, tools))
        messages = [_alias_reasoning({k: _plain(v) for k, v in m.items() if v is not None}) for m in conversation]
        variables = {**self.special_tokens_map, **_plain(kwargs)}
        text = template.render(messages=messages, tools=_plain(tools), documents=_plain(documents),
                               add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _qwen2_pipeline(backend: Any, add_prefix_space: bool) -> None:
    """What transformers' Qwen2Tokenizer.__init__ sets around the BPE model (tokenization_qwen2.py)."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    backend.decoder = decoders.ByteLevel()
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False)])


def _plain(value: Any) -> Any:
    """Plain JSON data for the sandbox (transformers' _plain_template_data, for the types serve sends)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str):  # subclasses (enums...) carry methods: back to the base type
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


@functools.lru_cache(maxsize=16)
def compiled_template(source: str) -> Any:
    """The template compiled once in transformers' sandbox; rendering it again costs only the render."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering
        # prints its body, as transformers does when it is not tracking.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        # As transformers: no underscore attributes (CPython internals) on a template's namespace.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=TemplateDict(), namespace=Namespace)
    return env.from_string(source)


def load_serving_tokenizer(path: str | Path) -> Any:
    """The light tokenizer when it reproduces transformers for this directory, else transformers' own."""
    fast = FastTokenizer.from_dir(path)
    if fast is not None:
        return fast
    from qaforge.modeling import load_tokenizer

    log.info("tokenizer: %s needs transformers (class or files not covered by qaforge.fasttok)", path)
    return load_tokenizer(path)
