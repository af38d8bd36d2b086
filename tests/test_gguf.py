"""GGUF files as models: transformers loads a tiny Q8_0 GGUF, `qaforge convert` round-trips it, and
`--model file.gguf` works in train, eval and serve through the conversion cache. One slow test
converts the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M when QAFORGE_REAL_GGUF names it."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="the gguf package is the `gguf` extra: pip install 'qaforge[gguf]'")

import httpx  # noqa: E402
import torch  # noqa: E402
from gguf_helpers import QWEN3, TinyShape, tiny_tokenizer, write_header_only_gguf, write_tiny_gguf  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from qaforge.cli import app  # noqa: E402
from qaforge.gguf import cache_root, load_gguf  # noqa: E402
from qaforge.modeling import resolve_model_path  # noqa: E402

IDS = torch.tensor([[3, 17, 99, 250, 7, 42, 500, 11, 574, 2]])
TEXT = "什么是warp？ Shared memory 和 __syncthreads()<|im_end|><think>"


def flat(output: str) -> str:
    """CLI output without rich's error-panel borders and line wrapping."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", output)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer):
    """name -> (path, float32 values before quantization)."""
    root = tmp_path_factory.mktemp("gguf")
    made = {}
    for name, shape, tied in (("qwen2", TinyShape(), True), ("qwen2_untied", TinyShape(), False),
                              ("qwen3", QWEN3, True)):
        path = root / f"tiny-{name}.gguf"
        made[name] = (path, write_tiny_gguf(path, shape, seed=len(made), tied=tied, tokenizer=tokenizer))
    return made


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("QAFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def test_transformers_loads_the_tiny_gguf_dequantized(files, tokenizer):
    path, written = files["qwen2"]
    model, tok = load_gguf(path, "float32")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    attn = model.model.layers[1].self_attn
    # F32 tensors come back exactly; Q8_0 blocks within half a quantization step (absmax/127 per block)
    assert torch.equal(attn.k_proj.bias, torch.from_numpy(written["blk.1.attn_k.bias"]))
    q = torch.from_numpy(written["blk.1.attn_q.weight"])
    err = (attn.q_proj.weight - q).abs().max().item()
    assert 0 < err < q.abs().max().item() / 127
    assert model.lm_head.weight is model.model.embed_tokens.weight  # no output.weight: tied
    assert tok(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert tok.chat_template == tokenizer.chat_template and tok.eos_token == "<|im_end|>"
    assert tok.model_max_length == 2048  # the file's context length, not transformers' "unlimited"
    half, _ = load_gguf(path, "bfloat16")
    assert half.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["qwen2", "qwen2_untied"])
def test_convert_round_trips(files, tmp_path, name):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = files[name]
    out = tmp_path / "hf"
    result = CliRunner().invoke(app, ["convert", str(path), "--out", str(out), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and "quantization_config" not in config
    assert config["tie_word_embeddings"] is (name == "qwen2") and config["dtype"] == "float32"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) is (name == "qwen2_untied")
    gguf_model, gguf_tok = load_gguf(path, "float32")
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == gguf_tok.chat_template
    assert hf_tok(TEXT)["input_ids"] == gguf_tok(TEXT)["input_ids"]
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert eos == [hf_tok.convert_tokens_to_ids("<|im_end|>"), hf_tok.convert_tokens_to_ids("<|endoftext|>")]
    hf_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert (hf_model.lm_head.weight is hf_model.model.embed_tokens.weight) is (name == "qwen2")
    with torch.no_grad():
        want, got = gguf_model(input_ids=IDS).logits, hf_model(input_ids=IDS).logits
    assert want.abs().max() > 0.1 and (got - want).abs().max().item() < 1e-4
    again = CliRunner().invoke(app, ["convert", str(path), "--out", str(out)])
    assert again.exit_code != 0 and "already holds a model" in flat(again.output)


def test_unsupported_or_broken_files_fail_clearly(tmp_path, cache):
    llama = write_header_only_gguf(tmp_path / "llama.gguf", "llama")
    with pytest.raises(ValueError, match=r"llama\.gguf.*'llama'.*Qwen3ForCausalLM, Qwen2ForCausalLM"):
        resolve_model_path(llama)
    result = CliRunner().invoke(app, ["convert", str(llama), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unsupported architecture" in flat(result.output)
    fake = tmp_path / "notes.gguf"
    fake.write_text("not a model")
    with pytest.raises(ValueError, match="notes.gguf is not a GGUF file"):
        resolve_model_path(fake)
    with pytest.raises(FileNotFoundError, match="missing.gguf does not exist"):
        resolve_model_path(tmp_path / "missing.gguf")
    assert not cache.exists() or not any(cache.iterdir())  # nothing was cached for any of them


def test_resolve_converts_once_and_again_when_the_file_changes(files, tmp_path, cache, monkeypatch):
    import qaforge.gguf as module

    src, _ = files["qwen2"]
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes())
    first = resolve_model_path(path)
    assert first.parent == cache and first.name.startswith("tiny-qwen2-") and (first / "model.safetensors").is_file()
    assert cache_root() == cache
    stamp = (first / "config.json").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(module, "convert", lambda *a, **k: calls.append(a))
    assert resolve_model_path(str(path)) == first and not calls  # cached: not converted again
    assert (first / "config.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    monkeypatch.setenv("QAFORGE_CACHE", str(cache.parent))

    write_tiny_gguf(path, TinyShape(), seed=7)  # same name, new weights
    second = resolve_model_path(path)
    assert second != first and second.parent == cache

    def killed(gguf_path, out_dir, dtype):  # a conversion that dies half way
        (Path(out_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt
    monkeypatch.setattr(module, "convert", killed)
    write_tiny_gguf(path, TinyShape(), seed=8)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_path(path)
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])  # no half entry


def test_gguf_trains(files, tmp_path, cache):
    from train_helpers import write_qa_jsonl

    from qaforge.train.profiles import load_profile
    from qaforge.train.trainer import train

    data = write_qa_jsonl(tmp_path / "train.jsonl", 24)
    exam = write_qa_jsonl(tmp_path / "exam.jsonl", 8, seed=1)
    config = load_profile("tiny", model=str(files["qwen2"][0]), data=str(data), exam=str(exam),
                          output_dir=str(tmp_path / "run"), max_steps=2, micro_batch_size=4,
                          grad_accum_steps=1, max_seq_len=512, rouge_eval=False, tensorboard=False)
    results = train(config)
    assert results["train"]["global_step"] == 2
    assert results["fast_path"]["fused_layers"] == 2  # both Qwen2 layers on the fused path
    assert all(h["loss"] > 0 for h in results["train"]["loss_history"])
    merged = json.loads((tmp_path / "run" / "merged_model" / "config.json").read_text())
    assert merged["architectures"] == ["Qwen2ForCausalLM"]
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert Path(saved["resolved_model_path"]).parent == cache


def test_gguf_evaluates(files, tmp_path, cache):
    from eval_helpers import quiet_console, write_jsonl

    from qaforge.evaluate.run import evaluate

    exam = write_jsonl(tmp_path / "exam.jsonl", [
        {"instruction": "什么是 warp？", "input": "", "output": "warp 是 32 个线程。", "difficulty": "easy"},
        {"instruction": "共享内存有什么作用？", "input": "", "output": "块内数据复用。", "difficulty": "hard"},
    ])
    path = str(files["qwen2"][0])
    results = evaluate(exam, tmp_path / "out", model=path, base_model=path, max_tokens=8, backend="hf",
                       batch_size=2, progress=False, console=quiet_console())
    assert [s["n"] for s in results["systems"]] == [2, 2, 2]
    answers = [s["predictions"] for s in results["samples"]]
    # the same file as base and tuned model: one cached conversion, the same greedy answers
    assert all(a["base (untuned)"]["prediction"] == a["fine-tuned"]["prediction"] for a in answers)
    assert len(list(cache.iterdir())) == 1


def _native_engine_takes(model_dir: Path) -> bool:
    from qaforge.engine.config import EngineConfig

    try:
        EngineConfig(model=str(model_dir), device="cpu")
    except ValueError as exc:
        return "unsupported" not in str(exc)
    return True


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_gguf_serves_over_http(files, cache, name):
    from serve_helpers import FAST_ENV

    from qaforge.serve.launcher import running_server

    path = files[name][0]
    if not _native_engine_takes(resolve_model_path(path)):
        pytest.skip(f"the native engine on this branch has no {name} support yet")
    env = dict(FAST_ENV, QAFORGE_CACHE=os.environ["QAFORGE_CACHE"], QAFORGE_MAX_TOKENS="6")
    with running_server(str(path), engine="native", env=env, ready_timeout=300) as url:
        assert httpx.get(url + "/", timeout=10).json() == {"status": "batch"}
        r = httpx.post(url + "/predict", json={"prompt": ["什么是warp？", "为什么要合并访存？"]}, timeout=120)
        assert r.status_code == 200 and len(r.json()["response"]) == 2
        models = httpx.get(url + "/v1/models", timeout=10).json()["data"]
        chat = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": models[0]["id"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.slow
def test_real_qwen25_coder_gguf(tmp_path):
    """QAFORGE_REAL_GGUF=/path/to/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf: convert it, then answer a
    Chinese CUDA question greedily through transformers with its own chat template."""
    real = os.environ.get("QAFORGE_REAL_GGUF")
    if not real or not Path(real).is_file():
        pytest.skip("set QAFORGE_REAL_GGUF to a Qwen2.5 GGUF file (e.g. the proxy's Q4_K_M) to run this")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qaforge.gguf import convert

    started = time.perf_counter()
    out = convert(real, tmp_path / "hf", dtype="bfloat16")
    converted_s = time.perf_counter() - started
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    messages = [{"role": "user", "content": "CUDA 中的 warp 是什么？请用一两句话回答。"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=64, do_sample=False)
    reply = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\nconverted in {converted_s:.1f} s, generated in {time.perf_counter() - started - converted_s:.1f} s")
    print(f"reply: {reply}")
    assert "warp" in reply.lower() or "线程" in reply
    assert gen[0, -1].item() in json.loads((out / "generation_config.json").read_text())["eos_token_id"] \
        or gen.shape[1] - ids["input_ids"].shape[1] == 64
