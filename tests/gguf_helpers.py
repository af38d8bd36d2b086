"""Tiny random Qwen2 / Qwen3 models written as GGUF files with the `gguf` package, laid out as
llama.cpp's converter lays them out (its tensor names, the `<arch>.*` metadata keys, a byte-level BPE
vocabulary in `tokenizer.ggml.*` and the chat template), so the GGUF path is tested on CPU without
downloaded weights. Matmul weights are stored as Q8_0 blocks (a user's file holds quantized blocks
to dequantize); norms and biases stay F32, as llama.cpp keeps them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qaforge.paths import DEFAULT_CORPUS_DIR


@dataclass(frozen=True)
class TinyShape:
    arch: str = "qwen2"           # qwen2: q/k/v biases, no q/k norm; qwen3: q/k norm, no biases
    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 64            # transformers reads no head_dim for qwen3 GGUFs: Qwen3Config's 128 then
    vocab: int = 600


QWEN3 = TinyShape(arch="qwen3", head_dim=128)


def tiny_tokenizer(vocab: int = 600):
    """A small BPE with Qwen's special tokens and chat template (the tiny Qwen3's recipe, on a few chapters)."""
    from qaforge.tiny import read_corpus_text, train_tokenizer

    return train_tokenizer(read_corpus_text(DEFAULT_CORPUS_DIR)[:3], vocab)


def _add_tokenizer(writer, tok) -> None:
    import gguf

    from qaforge.tiny import CONTROL_TOKENS, MARKER_TOKENS

    backend = json.loads(tok.backend_tokenizer.to_str())
    tokens = [""] * len(tok)
    for token, idx in tok.get_vocab().items():
        tokens[idx] = token
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in CONTROL_TOKENS else
                            gguf.TokenType.USER_DEFINED if t in MARKER_TOKENS else gguf.TokenType.NORMAL
                            for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    writer.add_eos_token_id(tok.convert_tokens_to_ids("<|im_end|>"))
    writer.add_pad_token_id(tok.convert_tokens_to_ids("<|endoftext|>"))
    writer.add_bos_token_id(tok.convert_tokens_to_ids("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok.chat_template)


def write_tiny_gguf(path: Path, shape: TinyShape = TinyShape(), seed: int = 0, tied: bool = True,
                    tokenizer=None) -> dict[str, np.ndarray]:
    """Write the GGUF at `path`; returns the float32 values each tensor had before quantization."""
    import gguf

    tok = tokenizer if tokenizer is not None else tiny_tokenizer(shape.vocab)
    n_vocab, s = len(tok), shape
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), s.arch)
    writer.add_name(f"tiny-{s.arch}")
    writer.add_context_length(2048)
    writer.add_embedding_length(s.hidden)
    writer.add_block_count(s.layers)
    writer.add_feed_forward_length(s.intermediate)
    writer.add_head_count(s.heads)
    writer.add_head_count_kv(s.kv_heads)
    if s.arch == "qwen3":
        writer.add_key_length(s.head_dim)
        writer.add_value_length(s.head_dim)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_tokenizer(writer, tok)
    written: dict[str, np.ndarray] = {}

    def weight(name: str, rows: int, cols: int) -> None:
        data = (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)
        blocks = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        written[name] = data

    def vector(name: str, n: int, base: float = 0.0) -> None:
        written[name] = (base + rng.standard_normal(n) * 0.05).astype(np.float32)
        writer.add_tensor(name, written[name])

    q_out, kv_out = s.heads * s.head_dim, s.kv_heads * s.head_dim
    weight("token_embd.weight", n_vocab, s.hidden)
    for i in range(s.layers):
        b = f"blk.{i}"
        vector(f"{b}.attn_norm.weight", s.hidden, 1.0)
        for part, rows in (("q", q_out), ("k", kv_out), ("v", kv_out)):
            weight(f"{b}.attn_{part}.weight", rows, s.hidden)
            if s.arch == "qwen2":
                vector(f"{b}.attn_{part}.bias", rows)
        if s.arch == "qwen3":
            vector(f"{b}.attn_q_norm.weight", s.head_dim, 1.0)
            vector(f"{b}.attn_k_norm.weight", s.head_dim, 1.0)
        weight(f"{b}.attn_output.weight", s.hidden, q_out)
        vector(f"{b}.ffn_norm.weight", s.hidden, 1.0)
        weight(f"{b}.ffn_gate.weight", s.intermediate, s.hidden)
        weight(f"{b}.ffn_up.weight", s.intermediate, s.hidden)
        weight(f"{b}.ffn_down.weight", s.hidden, s.intermediate)
    vector("output_norm.weight", s.hidden, 1.0)
    if not tied:
        weight("output.weight", n_vocab, s.hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def write_header_only_gguf(path: Path, arch: str) -> Path:
    """A GGUF with metadata and no tensors: enough to test the architecture check."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
