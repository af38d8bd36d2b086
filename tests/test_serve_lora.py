"""LoRA adapters served unmerged over real HTTP (native engine, fp32, tiny Qwen3, the openai SDK):
`qaforge serve --lora a=... --lora b=...` lists both in /v1/models, concurrent requests naming a, b and
the base get their PEFT-merged models' greedy tokens (the same prompt under each: prefix-cache blocks must
not be shared), an unknown model is a 404, and --predict-lora makes /predict answer with an adapter.
The vLLM backend's mapping (engine arguments, LoRARequest fields) is unit-tested without vLLM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest
import torch

from lora_helpers import adapters_and_merged
from qaforge.serve.launcher import start_server
from qaforge.serve.settings import ServeSettings, parse_lora_modules
from serve_helpers import FAST_ENV, NO_VLLM, async_openai_client, openai_client, serve_tiny, warmup_questions

N_NEW = 40


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory):
    return adapters_and_merged(tiny_model_dir, tmp_path_factory.mktemp("serve_lora"))


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, tiny_model_dir, built):
    adapters, _ = built
    env = {"QAFORGE_DTYPE": "float32", "QAFORGE_PREDICT_LORA": "b"}
    args = ["--lora", f"a={adapters['a']}", "--lora", f"b={adapters['b']}"]
    with serve_tiny(request, tmp_path_factory, model=tiny_model_dir, env=env, args=args) as srv:
        yield srv


@pytest.fixture(scope="module")
def base_name(model) -> str:
    """The base model's id (conftest's `model`: the first in /v1/models), named apart from the adapters'."""
    return model


def merged_text(model_dir, tokenizer, prompt: list[int]) -> tuple[str, int]:
    """What the server must answer: the merged model's greedy tokens (transformers), detokenized as the
    server detokenizes them."""
    from transformers import AutoModelForCausalLM

    from qaforge.serve.textstream import visible_text

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    ids = out[0, len(prompt):].tolist()
    return visible_text(tokenizer.decode(ids, skip_special_tokens=True), [], final=True)[0], len(ids)


def test_models_lists_the_base_then_each_adapter_with_its_parent(client, base_name, built):
    data = [m.model_dump() for m in client.models.list().data]
    assert [m["id"] for m in data] == [base_name, "a", "b"]
    assert data[0]["parent"] is None
    assert [(m["parent"], m["root"]) for m in data[1:]] == [(base_name, str(built[0]["a"])),
                                                            (base_name, str(built[0]["b"]))]


def test_concurrent_requests_naming_two_adapters_get_their_merged_tokens(server, base_name, built,
                                                                         tiny_model_dir):
    from qaforge.modeling import load_tokenizer

    _, merged = built
    tok = load_tokenizer(str(tiny_model_dir))
    prompt = tok(warmup_questions(1)[0] * 3, add_special_tokens=False)["input_ids"]
    assert len(prompt) > 32  # two full KV blocks the three models must not share
    want = {"a": merged_text(merged["a"], tok, prompt), "b": merged_text(merged["b"], tok, prompt),
            base_name: merged_text(tiny_model_dir, tok, prompt)}
    assert len({text for text, _ in want.values()}) == 3  # the adapters change the answer, differently

    async def ask_all():
        aclient = async_openai_client(server.base_url)
        try:
            return await asyncio.gather(*(aclient.completions.create(
                model=m, prompt=prompt, max_tokens=N_NEW, temperature=0.0, extra_body={"ignore_eos": True})
                for m in ["a", "b", base_name, "b", "a"]))
        finally:
            await aclient.close()

    for _ in range(2):  # the second round runs on prefix-cache hits
        for r in asyncio.run(ask_all()):
            model = r.model
            assert (r.choices[0].text, r.usage.completion_tokens) == want[model], f"model {model}"


def test_chat_picks_the_adapter_by_model_and_unknown_models_are_404(client, base_name):
    messages = [{"role": "user", "content": warmup_questions(2)[1]}]
    answers = {}
    for model in ("a", "b", base_name):
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0.0)
        assert r.model == model
        answers[model] = r.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="'c' does not exist.*'a', 'b'"):
        client.chat.completions.create(model="c", messages=messages, max_tokens=4)
    assert len(set(answers.values())) == 3


def test_predict_answers_with_the_predict_lora_adapter(server, client, base_name):
    question = warmup_questions(3)[2]
    r = httpx.post(server.base_url + "/predict", json={"prompt": question, "max_tokens": 24}, timeout=120)
    assert r.status_code == 200
    chat = {m: client.chat.completions.create(model=m, messages=[{"role": "user", "content": question}],
                                              max_tokens=24, temperature=0.0).choices[0].message.content
            for m in ("b", base_name)}
    assert chat["b"] != chat[base_name]
    assert r.json()["response"] == chat["b"]


# ---- settings and the vLLM mapping (no server) -----------------------------------------------
def test_lora_settings_parse_and_refuse_bad_specs(tmp_path):
    assert parse_lora_modules(f"a={tmp_path}/x, b=rel/y") == {"a": f"{tmp_path}/x", "b": str(Path.cwd() / "rel/y")}
    s = ServeSettings.from_env({"QAFORGE_LORA": "a=/p,b=/q", "QAFORGE_PREDICT_LORA": "a"}, model="/m/base")
    assert list(s.lora_modules) == ["a", "b"] and s.predict_lora == "a"
    for spec, message in [("a", "is not NAME=PATH"), ("a=/p,a=/q", "given twice"), ("=/p", "is not NAME=PATH"),
                          ("base=/p", "is the base model's served name")]:
        with pytest.raises(ValueError, match=message):
            ServeSettings(model="/m/base", lora=spec)
    with pytest.raises(ValueError, match="--predict-lora 'z' is not one of the --lora adapters"):
        ServeSettings(model="/m/base", lora="a=/p", predict_lora="z")


def test_vllm_gets_every_adapter_with_a_fitting_rank(built, tiny_model_dir):
    from qaforge.serve.backends import lora_ranks, lora_request_fields, vllm_lora_args

    adapters, _ = built
    modules = {"a": str(adapters["a"]), "b": str(adapters["b"])}
    ranks = lora_ranks(str(tiny_model_dir), modules)
    assert ranks == {"a": 8, "b": 4}
    assert vllm_lora_args(ranks) == {"enable_lora": True, "max_loras": 2, "max_lora_rank": 8}
    assert vllm_lora_args({"x": 17})["max_lora_rank"] == 32
    with pytest.raises(ValueError, match="'x' has rank 600"):
        vllm_lora_args({"x": 600, "y": 8})
    assert lora_request_fields(modules) == {
        "a": {"lora_name": "a", "lora_int_id": 1, "lora_path": modules["a"]},
        "b": {"lora_name": "b", "lora_int_id": 2, "lora_path": modules["b"]}}


def test_a_server_with_an_adapter_that_does_not_fit_exits_naming_it(tiny_model_dir, built, tmp_path):
    import json
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(built[0]["a"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps(dict(cfg, use_dora=True)))
    with pytest.raises(RuntimeError, match=r"(?s)exited with code.*LoRA adapter 'dora'.*DoRA"):
        start_server(str(tiny_model_dir), engine="native", env=dict(FAST_ENV, QAFORGE_WARMUP="0"),
                     args=["--lora", f"dora={bad}"], ready_timeout=120)


# ---- the vLLM backend for real (slow: minutes on CPU; skipped without an interpreter that has vllm) ----
def test_vllm_backend_serves_both_adapters_with_their_merged_tokens(request, tmp_path_factory,
                                                                    tiny_model_dir, built):
    from qaforge.modeling import load_tokenizer
    from qaforge.serve.launcher import vllm_python

    python = vllm_python()
    if python is None:
        pytest.skip(NO_VLLM)
    adapters, merged = built
    tok = load_tokenizer(str(tiny_model_dir))
    prompt = tok(warmup_questions(1)[0], add_special_tokens=False)["input_ids"]
    env = {"QAFORGE_DTYPE": "float32", "QAFORGE_MAX_NUM_SEQS": "16"}
    with serve_tiny(request, tmp_path_factory, engine="vllm", model=tiny_model_dir, env=env, python=python,
                    args=["--lora", f"a={adapters['a']}", "--lora", f"b={adapters['b']}"]) as srv:
        client = openai_client(srv.base_url)
        base = client.models.list().data[0].id
        assert [m.id for m in client.models.list().data] == [base, "a", "b"]
        for model, model_dir in (("a", merged["a"]), ("b", merged["b"]), (base, tiny_model_dir)):
            r = client.completions.create(model=model, prompt=prompt, max_tokens=N_NEW, temperature=0.0,
                                          extra_body={"ignore_eos": True})
            assert (r.choices[0].text, r.usage.completion_tokens) == merged_text(model_dir, tok, prompt), model
