"""The fused decoder layer and the fused CE chunk compute the plain path's function (fp32, CPU, eager).

Every layer test runs on both families the fused function covers: the random Qwen3 and the random
Qwen2 (q/k/v biases, no q/k norm; tests/qwen2_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from qwen2_helpers import random_qwen2_dir  # noqa: F401 - fixture
from train_helpers import qa_files, random_model_dir  # noqa: F401 - fixtures

from qaforge.train import fast, fused_layer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(params=["qwen3", "qwen2"])
def family_dir(request):
    """The random model of one family (built lazily: a qwen3-only selection never builds the Qwen2)."""
    return request.getfixturevalue("random_model_dir" if request.param == "qwen3" else "random_qwen2_dir")


def _features(model_dir, qa_path, n=5):
    from transformers import AutoTokenizer

    from qaforge.dataset import read_records
    from qaforge.train.data import ChatEncoder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples, _ = ChatEncoder(tokenizer, max_seq_len=256).encode_records(read_records(qa_path)[:n])
    return tokenizer, [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]


def _peft_model(model_dir, targets, dropout, attn):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, task_type="CAUSAL_LM", target_modules=targets,
                      init_lora_weights=False)  # random B too, so the adapters change the output
    return get_peft_model(model, lora)


@pytest.mark.parametrize("targets", [TARGETS, ["q_proj", "v_proj"]], ids=["all", "q_v"])
def test_fused_layers_equal_plain_peft_loss_and_grads(family_dir, qa_files, targets):  # noqa: F811
    from qaforge.train.data import SFTCollator

    tokenizer, features = _features(family_dir, qa_files[0])
    plain = _peft_model(family_dir, targets, 0.0, "sdpa")
    fused = _peft_model(family_dir, targets, 0.0, fast.register_varlen_attention())
    causal_lm = fused.get_base_model()
    fast.install_fused_loss(causal_lm, chunk_size=64)
    assert fused_layer.install_fused_layers(causal_lm, compile=False) == len(causal_lm.model.layers)

    plain_loss = plain(**SFTCollator(tokenizer.pad_token_id, packing=False)(features)).loss
    fused_loss = fused(**SFTCollator(tokenizer.pad_token_id, packing=True, label_positions=True)(features)).loss
    assert abs(fused_loss.item() - plain_loss.item()) < 1e-4
    plain_loss.backward()
    fused_loss.backward()
    plain_grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    checked = 0
    for name, param in fused.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reached {name}"
            assert torch.allclose(param.grad, plain_grads[name], rtol=1e-3, atol=1e-6), name
            checked += 1
    assert checked == 2 * len(targets) * len(causal_lm.model.layers)


def test_fused_layers_follow_peft_state_and_uninstall(family_dir, qa_files):  # noqa: F811
    """Eval mode switches dropout off in the same graph; disabled adapters and merges fall back."""
    from qaforge.train.data import SFTCollator

    tokenizer, features = _features(family_dir, qa_files[0], n=3)
    batch = SFTCollator(tokenizer.pad_token_id, packing=True)(features)
    fused = _peft_model(family_dir, TARGETS, 0.3, fast.register_varlen_attention())
    reference = _peft_model(family_dir, TARGETS, 0.3, fast.register_varlen_attention())
    fused_layer.install_fused_layers(fused.get_base_model(), compile=False)
    fused.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.allclose(fused(**batch).logits, reference(**batch).logits, atol=1e-4)
        fused.train()
        reference.train()  # training mode: dropout on; with p = 0.3 the outputs must move
        assert not torch.allclose(fused(**batch).logits, reference(**batch).logits, atol=1e-2)
        fused.eval()
        with fused.disable_adapter():  # PEFT's own switch: the fused path must step aside
            base_logits = fused(**batch).logits
        with reference.disable_adapter():
            assert torch.allclose(base_logits, reference(**batch).logits, atol=1e-4)
    fused_layer.uninstall_fused_layers(fused.get_base_model())
    assert not any(hasattr(layer, "_qaforge_fused") for layer in fused.get_base_model().model.layers)


def test_shared_dropout_keeps_expectation_and_rate():
    torch.manual_seed(0)
    x = torch.randn(400, 500)
    keep = torch.tensor(0.9)
    y = fused_layer._dropout(x, keep)
    kept = (y != 0).float().mean().item()
    assert 0.89 < kept < 0.91
    assert torch.allclose(y[y != 0], (x / 0.9)[y != 0], rtol=1e-6)
    assert torch.equal(fused_layer._dropout(x, torch.tensor(1.0)), x)


def test_ce_chunk_with_grad_matches_autograd():
    torch.manual_seed(0)
    hidden = torch.randn(70, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(500, 32, dtype=torch.float64)
    targets = torch.randint(0, 500, (70,))
    loss, grad_h = fast.ce_chunk_with_grad(hidden.detach(), weight, targets)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-10)
    assert torch.allclose(grad_h, hidden.grad, rtol=1e-8, atol=1e-12)


def test_label_positions_from_the_collator_give_the_same_loss():
    torch.manual_seed(2)
    hidden = torch.randn(1, 12, 16)
    weight = torch.randn(40, 16)
    labels = torch.randint(0, 40, (1, 12))
    labels[0, :3] = -100
    labels[0, 6:8] = -100
    from qaforge.train.data import next_token_label_positions

    positions = next_token_label_positions(labels)
    assert positions.tolist() == [2, 3, 4, 7, 8, 9, 10]
    assert torch.allclose(fast.fused_causal_lm_loss(hidden, weight, labels, label_positions=positions),
                          fast.fused_causal_lm_loss(hidden, weight, labels), rtol=1e-6)


def test_padding_the_packed_row_to_a_bucket_changes_nothing(family_dir, qa_files):  # noqa: F811
    """CUDA graphs need few shapes: rows get a dummy segment up to a multiple of N tokens; loss and grads stay."""
    from qaforge.train.data import SFTCollator

    tokenizer, features = _features(family_dir, qa_files[0], n=4)
    batch = SFTCollator(tokenizer.pad_token_id, packing=True, label_positions=True)(features)
    assert batch["input_ids"].shape[1] % 64 != 0  # so the padding path really runs
    results = []
    for multiple in (None, 64):
        model = _peft_model(family_dir, TARGETS, 0.0, fast.register_varlen_attention())
        fast.install_fused_loss(model.get_base_model(), chunk_size=64)
        fused_layer.install_fused_layers(model.get_base_model(), compile=False, pad_to_multiple_of=multiple)
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads_a, grads_b))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the compiled + CUDA-graph path)")
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["compiled", "cuda_graphs"])
def test_compiled_fused_layers_on_gpu_equal_plain_peft(family_dir, qa_files, cuda_graphs):  # noqa: F811
    """bf16 on CUDA: compiled fused layers (+ CUDA graphs, replayed on the 2nd-4th step) vs HF + PEFT sdpa."""
    from qaforge.train.data import SFTCollator

    tokenizer, features = _features(family_dir, qa_files[0], n=6)
    padded = SFTCollator(tokenizer.pad_token_id, packing=False)(features)
    packed = SFTCollator(tokenizer.pad_token_id, packing=True, label_positions=True)(features)

    def on_gpu(batch):
        return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}

    def losses_and_grads(model, batch, steps):
        out = []
        for _ in range(steps):  # same batch, no optimizer step: every pass must give the same numbers
            model.zero_grad(set_to_none=True)
            loss = model(**on_gpu(batch)).loss
            loss.backward()
            grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])
            out.append((loss.item(), grads))
        return out

    plain = _peft_model(family_dir, TARGETS, 0.0, "sdpa").to("cuda", torch.bfloat16)
    fused = _peft_model(family_dir, TARGETS, 0.0, fast.register_varlen_attention()).to("cuda", torch.bfloat16)
    fast.install_fused_loss(fused.get_base_model(), chunk_size=64)
    fused_layer.install_fused_layers(fused.get_base_model(), compile=True, cuda_graphs=cuda_graphs)
    assert fused.get_base_model()._qaforge_cuda_graphs is cuda_graphs
    (ref_loss, ref_grads), = losses_and_grads(plain, padded, 1)
    for loss, grads in losses_and_grads(fused, packed, 4):
        assert abs(loss - ref_loss) / ref_loss < 2e-2
        assert torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0) > 0.99


def test_build_model_reports_a_slower_path(random_model_dir, tmp_path):  # noqa: F811
    """fast_path.fallback names why the fused layers do not run every layer, and is None when they do."""
    from qaforge.train.model import build_model
    from qaforge.train.profiles import load_profile

    def built(**overrides):
        config = load_profile("tiny", model=str(random_model_dir), output_dir=str(tmp_path), device="cpu",
                              compile=False, **overrides)
        return build_model(config, random_model_dir, "cpu", torch.float32)[1]

    fused = built()
    assert fused["fallback"] is None and fused["fused_layers"] == fused["layers"] == 2
    assert fused["compile"] is False and fused["compile_cache"] is None
    padded = built(packing=False)
    assert padded["fused_layers"] == 0 and "varlen" in padded["fallback"]
    assert built(fused_layers=False)["fallback"] is None  # switched off by the user: not a fallback
