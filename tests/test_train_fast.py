"""The fast path computes the same function as the plain transformers path (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import qa_files, random_model_dir  # noqa: F401 - fixtures

from qaforge.train.fast import chunked_linear_cross_entropy, fused_causal_lm_loss


def test_chunked_cross_entropy_matches_reference_values_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(300, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1000, 32, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 1000, (300,))
    loss = chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=64) * 0.37
    loss.backward()
    h_ref = hidden.detach().clone().requires_grad_()
    w_ref = weight.detach().clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(h_ref @ w_ref.t(), targets, reduction="sum") * 0.37
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-10)
    assert torch.allclose(hidden.grad, h_ref.grad, rtol=1e-8, atol=1e-10)
    assert torch.allclose(weight.grad, w_ref.grad, rtol=1e-8, atol=1e-10)


def test_chunked_cross_entropy_rejects_bad_shapes_and_handles_empty():
    with pytest.raises(ValueError, match="expected hidden"):
        chunked_linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(3, dtype=torch.long))
    hidden = torch.randn(0, 8, requires_grad=True)
    assert chunked_linear_cross_entropy(hidden, torch.randn(10, 8), torch.zeros(0, dtype=torch.long)).item() == 0


def test_fused_loss_ignores_prompt_tokens_like_transformers():
    torch.manual_seed(1)
    hidden = torch.randn(2, 10, 16)
    weight = torch.randn(50, 16)
    labels = torch.randint(0, 50, (2, 10))
    labels[:, :4] = -100
    ref = torch.nn.functional.cross_entropy((hidden @ weight.t())[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1))
    assert torch.allclose(fused_causal_lm_loss(hidden, weight, labels), ref, rtol=1e-5)
    # num_items_in_batch turns the mean into sum / N (gradient accumulation across micro-batches)
    summed = fused_causal_lm_loss(hidden, weight, labels, num_items_in_batch=7)
    assert torch.allclose(summed, ref * (labels[:, 1:] != -100).sum() / 7, rtol=1e-5)


def test_optimized_path_loss_and_grads_equal_plain_path(random_model_dir, qa_files):  # noqa: F811
    """Plain: HF + PEFT, padded batch, HF loss. Optimized: packed + varlen attention + fused loss."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qaforge.train import fast
    from qaforge.dataset import read_records
    from qaforge.train.data import ChatEncoder, SFTCollator

    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    samples, _ = ChatEncoder(tokenizer, max_seq_len=256).encode_records(read_records(qa_files[0])[:5])
    features = [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      init_lora_weights=False)  # random B too, so the adapters actually change the output

    def build(optimized: bool):
        torch.manual_seed(0)
        attn = fast.register_varlen_attention() if optimized else "sdpa"
        model = AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32, attn_implementation=attn)
        peft_model = get_peft_model(model, lora)
        if optimized:
            fast.install_fused_loss(peft_model.get_base_model(), chunk_size=64)
        return peft_model

    plain, optimized = build(False), build(True)
    plain_loss = plain(**SFTCollator(tokenizer.pad_token_id, packing=False)(features)).loss
    fast_loss = optimized(**SFTCollator(tokenizer.pad_token_id, packing=True)(features)).loss
    assert abs(fast_loss.item() - plain_loss.item()) / plain_loss.item() < 1e-3
    assert abs(fast_loss.item() - plain_loss.item()) < 1e-4  # in fp32 it is in fact much tighter
    plain_loss.backward()
    fast_loss.backward()
    plain_grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    for name, param in optimized.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param.grad, plain_grads[name], rtol=1e-3, atol=1e-6), name


def test_fused_loss_keeps_generation_working(random_model_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from qaforge.train import fast
    model = AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = model(input_ids=ids).logits
    fast.install_fused_loss(model)
    assert torch.equal(model(input_ids=ids).logits, before)  # no labels: original forward
    assert model(input_ids=ids, labels=ids).logits is None  # labels: fused loss, no logits
    fast.uninstall_fused_loss(model)
    assert model(input_ids=ids, labels=ids).logits is not None
