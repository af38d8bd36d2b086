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


# --------------------------------------------------------------------------------------------
# compile cache (qaforge.train.compile_cache) and the end-of-run speed verdict (qaforge.train.speed)
# --------------------------------------------------------------------------------------------
_COMPILE_CHILD = """
import json, sys, time
import torch
from torch._dynamo.utils import counters
from qaforge.train import compile_cache
cache = compile_cache.activate(compile_cache.peek(compile_cache.resolve(sys.argv[1], "key")))
f = torch.compile(lambda x, w: torch.nn.functional.silu(x @ w).sum(), dynamic=True)
start = time.time()
f(torch.randn(8, 4, requires_grad=True), torch.randn(4, 4)).backward()
compile_cache.finish(cache, {"first_step_s (includes compilation)": time.time() - start, "median_step_ms": 1.0})
print(json.dumps({"warm": cache.warm, "loaded": cache.loaded_artifacts, "inductor": dict(counters["inductor"]),
                  "aot": dict(counters["aot_autograd"])}))
"""


def test_compile_cache_survives_the_process(tmp_path):
    """Two processes compile the same function: the second hits Inductor's FX and AOT-autograd caches."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, str(tmp_path / "cache")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert not cold["warm"] and cold["inductor"].get("fxgraph_cache_miss", 0) >= 1
    assert warm["warm"] and warm["loaded"]
    assert warm["inductor"].get("fxgraph_cache_hit", 0) >= 1 and not warm["inductor"].get("fxgraph_cache_miss")
    assert warm["aot"].get("autograd_cache_hit", 0) == 1
    assert (tmp_path / "cache" / "key" / "compile_artifacts.bin").stat().st_size > 0


def test_compile_cache_folder_rules(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from qaforge.train import compile_cache

    for var in (compile_cache.ENV_VAR, "TORCHINDUCTOR_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    small = SimpleNamespace(model_type="qwen3", hidden_size=64, num_hidden_layers=2)
    key = compile_cache.cache_key(small, {"lora_r": 8})
    assert key.startswith(f"torch{torch.__version__.replace('+', '_')}-qwen3-")
    assert compile_cache.cache_key(SimpleNamespace(**{**vars(small), "hidden_size": 128}), {"lora_r": 8}) != key
    assert compile_cache.cache_key(small, {"lora_r": 16}) != key
    assert compile_cache.resolve(None, key).directory == tmp_path / "xdg" / "qaforge" / "compile" / key
    assert compile_cache.resolve(str(tmp_path / "mine"), key).directory == tmp_path / "mine" / key
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))
    assert compile_cache.resolve(None, key).source == "TORCHINDUCTOR_CACHE_DIR"
    monkeypatch.setenv(compile_cache.ENV_VAR, "off")
    assert compile_cache.resolve(None, key).directory is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / compile_cache.MARKER).write_text("{not json")
    assert not compile_cache.peek(compile_cache.CompileCache(tmp_path / "bad", "test")).warm


def test_speed_verdict_says_when_compile_did_not_pay():
    from qaforge.train.speed import time_split, verdict

    timing = {"steps_timed": 100, "first_step_s (includes compilation)": 40.16, "median_step_ms": 160.0,
              "sum_of_steps_over_3x_median_s": 0.0, "eval_s": [1.0], "eval_plus_save_s": [0.5]}
    split = time_split(timing, train_runtime_s=60.0, compiled=True)
    assert split["compile_s"] == 40.0 and split["steady_s"] == 18.5 and split["steps"] == 100
    info = {"compile": True, "compile_cache": {"dir": "/cache/x"}}
    short = verdict(split, info)
    assert short["compile_paid_off"] is False and short["estimated_saving_s"] == 9.6
    assert "--no-compile" in short["notices"][0] and "/cache/x" in short["notices"][0]
    long_run = verdict(time_split({**timing, "steps_timed": 1000}, 200.0, True), info)
    assert long_run["compile_paid_off"] is True and long_run["notices"] == []
    fallback = verdict(split, {"compile": False, "fallback": "only 2 of 4 decoder layers run the fused function"})
    assert fallback["notices"] and fallback["notices"][0].startswith("SLOWER PATH: only 2 of 4")
    assert "compile_paid_off" not in fallback
