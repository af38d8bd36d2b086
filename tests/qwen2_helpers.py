"""A throwaway random Qwen2 for the training tests (what Qwen2.5-Coder-0.5B is, in miniature).

`Qwen2ForCausalLM` with q/k/v biases, no q/k norm, tied embeddings and GQA (4 query / 2 KV heads of
dim 32, 3 layers), fp32, with the random Qwen3's tokenizer (tests/train_helpers.py; the chat template
and special tokens are the same family's). HF initialises biases to zero and norms to one, which
would let a fused layer that drops the biases pass: both are drawn at random here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from train_helpers import save_checkpoint, special_ids


def build_random_qwen2(out_dir: Path, tokenizer_dir: Path, seed: int = 0, **config_overrides) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos, pad = special_ids(tokenizer)
    values = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rope_theta=1_000_000.0, tie_word_embeddings=True, use_sliding_window=False,
                  bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    values.update(config_overrides)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**values))
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)  # Qwen2's k biases are large in the real checkpoints too
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.add_(0.1 * torch.randn_like(norm.weight))
    return save_checkpoint(model, tokenizer, out_dir)


@pytest.fixture(scope="session")
def random_qwen2_dir(tmp_path_factory, random_model_dir) -> Path:
    """Session-wide random Qwen2 (needs `random_model_dir` from train_helpers for its tokenizer)."""
    return build_random_qwen2(tmp_path_factory.getbasetemp() / "train_random_qwen2", random_model_dir)
