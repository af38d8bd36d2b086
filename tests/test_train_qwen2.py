"""Qwen2/Qwen2.5 in training: the fast path covers it, says so when it does not, and trains it end to end.

The layer-by-layer equality with plain PEFT (both families, all/q,v LoRA targets, padding buckets, eval
mode, the GPU compiled + CUDA-graph check) lives in tests/test_train_fused.py.
"""

from __future__ import annotations

import logging

import pytest
import torch
from qwen2_helpers import random_qwen2_dir  # noqa: F401 - fixture
from train_helpers import qa_files, random_model_dir  # noqa: F401 - fixtures

from qaforge.train import fast, fused_layer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_config(cls_name: str, **overrides):
    import transformers

    values = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    values.update(overrides)
    return getattr(transformers, cls_name)(**values)


def _peft(model, targets=TARGETS):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM",
                                            init_lora_weights=False))


def _packed_batch(lengths=(9, 14, 5), vocab=300, seed=0):
    from qaforge.train.data import SFTCollator

    gen = torch.Generator().manual_seed(seed)
    features = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        features.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return features, SFTCollator(0, packing=True)(features)  # HF's own loss: no label_positions


def test_tiny_qwen2_has_what_the_fused_path_must_cover(random_qwen2_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(random_qwen2_dir, dtype=torch.float32)
    layer = model.model.layers[0]
    assert type(layer).__name__ == "Qwen2DecoderLayer" and not hasattr(layer.self_attn, "q_norm")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied embeddings
    weights, _ = fused_layer.layer_weights(layer)
    assert weights.q_norm is None and weights.k_norm is None
    for proj in (weights.q, weights.k, weights.v):
        assert proj.bias is not None and proj.bias.abs().mean() > 0.1  # the biases matter in every test
    assert weights.o.bias is None and fused_layer.uncovered_reason(layer, model.config) is None


def test_full_coverage_is_logged_and_mixed_coverage_warns_and_stays_exact(caplog):
    """A Qwen2 with sliding-window layers: those keep HF's forward (warned about); the loss is unchanged."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    config = _tiny_config("Qwen2Config", use_sliding_window=True, sliding_window=64, max_window_layers=1)
    assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    plain = _peft(Qwen2ForCausalLM._from_config(config, attn_implementation="sdpa"))
    mixed = _peft(Qwen2ForCausalLM._from_config(config, attn_implementation=fast.register_varlen_attention()))
    mixed.load_state_dict(plain.state_dict())
    with caplog.at_level(logging.INFO, logger="qaforge.train"):
        assert fused_layer.install_fused_layers(mixed.get_base_model(), compile=False) == 1
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "1 of 3 decoder layers" in warning[0] and "SLOWER" in warning[0]
    assert "2 layer(s) [1..2]: Qwen2DecoderLayer uses sliding-window attention" in warning[0]
    assert [hasattr(layer, "_qaforge_fused") for layer in mixed.get_base_model().model.layers] == [True, False, False]
    features, packed = _packed_batch()
    from qaforge.train.data import SFTCollator
    padded = SFTCollator(0, packing=False)(features)
    assert abs(mixed(**packed).loss.item() - plain(**padded).loss.item()) < 1e-4

    caplog.clear()
    full = _peft(Qwen2ForCausalLM._from_config(_tiny_config("Qwen2Config"),
                                               attn_implementation=fast.register_varlen_attention()))
    with caplog.at_level(logging.INFO, logger="qaforge.train"):
        assert fused_layer.install_fused_layers(full.get_base_model(), compile=False) == 3
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "all 3 Qwen2DecoderLayer layers run the fused function (eager)" in caplog.records[0].getMessage()


def test_other_architectures_get_no_fused_layers_and_a_warning(caplog):
    from transformers import LlamaForCausalLM

    model = _peft(LlamaForCausalLM._from_config(_tiny_config("LlamaConfig")))
    with caplog.at_level(logging.WARNING, logger="qaforge.train"):
        assert fused_layer.install_fused_layers(model.get_base_model(), compile=False) == 0
        fast.compile_decoder_layers(model.get_base_model())  # what the trainer does next: lazy, nothing runs
    messages = [r.getMessage() for r in caplog.records]
    assert "LlamaDecoderLayer is not one of Qwen3DecoderLayer, Qwen2DecoderLayer" in messages[0]
    assert "0 of 3 decoder layers" in messages[0]
    assert "compiling HF's own 3 LlamaDecoderLayer layers: the SLOWER fallback path" in messages[1]


def test_a_training_step_that_falls_back_warns_once(caplog):
    from transformers import Qwen2ForCausalLM

    from qaforge.train.data import SFTCollator

    torch.manual_seed(0)
    model = _peft(Qwen2ForCausalLM._from_config(_tiny_config("Qwen2Config"),
                                                attn_implementation=fast.register_varlen_attention()))
    fused_layer.install_fused_layers(model.get_base_model(), compile=False)
    features, packed = _packed_batch()
    padded = SFTCollator(0, packing=False)(features)  # no packing metadata: the fused function cannot run
    model.train()
    with caplog.at_level(logging.WARNING, logger="qaforge.train"):
        model(**packed).loss.backward()
        assert not caplog.records  # the fused path itself is silent
        for _ in range(2):
            model(**padded).loss.backward()
    assert len(caplog.records) == 1 and "no packed row" in caplog.records[0].getMessage()


def test_varlen_attention_refuses_samples_longer_than_a_sliding_window():
    q = torch.randn(1, 4, 10, 16)
    k = v = torch.randn(1, 2, 10, 16)
    cu = torch.tensor([0, 6, 10], dtype=torch.int32)
    common = dict(scaling=0.25, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=6, max_length_k=6)
    inside, _ = fast.varlen_attention_forward(None, q, k, v, None, sliding_window=6, **common)
    plain, _ = fast.varlen_attention_forward(None, q, k, v, None, sliding_window=None, **common)
    assert torch.equal(inside, plain)  # within the window, sliding-window attention is causal attention
    with pytest.raises(ValueError, match="sliding-window attention \\(window 4\\) on samples of up to 6"):
        fast.varlen_attention_forward(None, q, k, v, None, sliding_window=4, **common)


def test_tiny_qwen2_trains_end_to_end(random_qwen2_dir, qa_files, tmp_path):  # noqa: F811
    """`qaforge.train.trainer.train` (what `qaforge train` calls) on the Qwen2: fast path on, merge exact."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qaforge.train.profiles import load_profile
    from qaforge.train.trainer import train

    out = tmp_path / "qwen2_run"
    config = load_profile("tiny", model=str(random_qwen2_dir), data=str(qa_files[0]), exam=str(qa_files[1]),
                          output_dir=str(out), num_epochs=2, micro_batch_size=8, grad_accum_steps=2,
                          max_seq_len=192, logging_steps=1, rouge_eval=False, tensorboard=False,
                          learning_rate=5e-3, lora_r=8, lora_alpha=16, lora_dropout=0.1)
    results = train(config)
    assert results["fast_path"]["fused_layers"] == 3 and results["fast_path"]["fused_loss"] is True
    assert results["fast_path"]["attn_implementation"] == "qaforge_varlen"
    assert results["train"]["global_step"] == 6 and len(results["eval_loss_per_epoch"]) == 2
    losses = [h["loss"] for h in results["train"]["loss_history"]]
    assert losses[-1] < losses[0]
    ids = torch.tensor([[3, 17, 99, 250, 7, 42, 500, 11]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(random_qwen2_dir, dtype=torch.float32)
        base_logits = base(input_ids=ids).logits
        adapter_logits = PeftModel.from_pretrained(base, out).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged_model", dtype=torch.float32).eval()
        merged_logits = merged(input_ids=ids).logits
    assert type(merged).__name__ == "Qwen2ForCausalLM" and merged.config.tie_word_embeddings
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # it trained something
    assert (merged_logits - adapter_logits).abs().max() < 1e-3
