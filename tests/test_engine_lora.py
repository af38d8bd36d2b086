"""LoRA adapters served unmerged by the native engine (fp32, CPU, the tiny Qwen3): one batch mixing two
adapters and the base gives every row the greedy tokens of its PEFT-merged model (transformers' generate),
prefix-cache blocks are keyed by adapter, and adapters that do not fit are refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import engine_helpers
from engine_helpers import hf_reference
from lora_helpers import adapters_and_merged
from qaforge.engine import LLM, SamplingParams
from qaforge.engine.layers.lora import LoraError, load_adapter, module_shapes

N_NEW = 40
GREEDY = SamplingParams(temperature=0.0, max_tokens=N_NEW, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py says why


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory):
    return adapters_and_merged(tiny_model_dir, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def hf_refs(tiny_model_dir, built):
    """name -> transformers fp32 model: the base (None) and each merged adapter."""
    dirs = {None: tiny_model_dir, **built[1]}
    return {k: hf_reference(d) for k, d in dirs.items()}


def hf_greedy(hf_refs, name, prompt: list[int]) -> list[int]:
    return engine_helpers.hf_greedy(hf_refs[name], prompt, N_NEW)


def prompts_of(lengths, seed=0):
    return engine_helpers.prompts_of(lengths, seed, vocab=4000, low=10)  # inside the tiny model's 4,096 ids


def engine(base, adapters, **kw) -> LLM:
    return LLM(str(base), device="cpu", dtype="float32", max_model_len=256, max_num_seqs=16,
               lora={k: str(v) for k, v in adapters.items()}, **kw)


def test_one_batch_mixing_two_adapters_and_the_base_gives_each_its_merged_tokens(tiny_model_dir, built, hf_refs):
    adapters, _ = built
    prompts = prompts_of([7, 19, 33, 12, 26, 5], seed=1)
    names = ["a", "b", None, "b", None, "a"]
    llm = engine(tiny_model_dir, adapters)
    assert llm.lora_names == ["a", "b"]
    outs = llm.generate(prompts, GREEDY, lora=names)
    # one prefill step for all six, then one decode step per token: every step mixed the three
    assert llm.stats()["num_steps"] == N_NEW
    for p, name, o in zip(prompts, names, outs):
        assert len(o.token_ids) == N_NEW >= 32
        assert o.token_ids == hf_greedy(hf_refs, name, p), f"adapter {name}"
    # the adapters really change the model, and differently: the equalities above are not vacuous
    for p in prompts[:3]:
        refs = [hf_greedy(hf_refs, n, p) for n in ("a", "b", None)]
        assert len({tuple(r) for r in refs}) == 3


def test_prefix_cache_is_keyed_by_adapter(tiny_model_dir, built, hf_refs):
    adapters, _ = built
    prompt = prompts_of([50], seed=2)[0]            # three full 16-token blocks + 2 tokens
    llm = engine(tiny_model_dir, adapters, block_size=16, enable_prefix_caching=True)
    first_a = llm.generate([prompt], GREEDY, lora="a")[0]
    assert first_a.num_cached_tokens == 0
    # the same prompt under b, under the base, and again under both in one batch
    b, base = llm.generate([prompt, prompt], GREEDY, lora=["b", None])
    assert b.num_cached_tokens == 0 and base.num_cached_tokens == 0  # a's blocks are a's only
    again = llm.generate([prompt, prompt, prompt], GREEDY, lora=["a", "b", None])
    assert [o.num_cached_tokens for o in again] == [48, 48, 48]      # each hits its own blocks
    for name, outs in (("a", [first_a, again[0]]), ("b", [b, again[1]]), (None, [base, again[2]])):
        ref = hf_greedy(hf_refs, name, prompt)
        assert all(o.token_ids == ref for o in outs), f"adapter {name}"


def test_async_engine_streams_each_request_under_its_adapter(tiny_model_dir, built, hf_refs):
    import asyncio

    from qaforge.engine.async_engine import AsyncLLM

    adapters, _ = built
    prompts = prompts_of([9, 14], seed=3)

    async def run():
        eng = AsyncLLM(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=256,
                       lora={k: str(v) for k, v in adapters.items()})
        await eng.start()
        try:
            async def one(p, name, rid):
                toks = []
                async for out in eng.generate(p, GREEDY, rid, lora=name):
                    toks += out.new_token_ids
                return toks
            return await asyncio.gather(one(prompts[0], "b", "r1"), one(prompts[1], "a", "r2"),
                                        one(prompts[1], None, "r3"))
        finally:
            await eng.shutdown()

    got = asyncio.run(run())
    assert got == [hf_greedy(hf_refs, "b", prompts[0]), hf_greedy(hf_refs, "a", prompts[1]),
                   hf_greedy(hf_refs, None, prompts[1])]


def test_base_only_batches_carry_no_lora_work(tiny_model_dir, built):
    adapters, _ = built
    llm = engine(tiny_model_dir, adapters)
    cu = torch.tensor([0, 3, 5])
    assert llm.runner.lora.batch([0, 0], cu, 5) is None
    masks = llm.runner.lora.batch([2, 0], cu, 5).masks
    assert [(j, m.view(-1).tolist()) for j, m in masks] == [(1, [1.0, 1.0, 1.0, 0.0, 0.0])]
    with pytest.raises(ValueError, match="unknown LoRA adapter 'c'.*a, b"):
        llm.generate([[11, 12]], GREEDY, lora="c")
    plain = LLM(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=64)
    assert plain.runner.lora is None and plain.lora_names == []
    with pytest.raises(ValueError, match="none registered"):
        plain.generate([[11, 12]], GREEDY, lora="a")


def _copy(src, dst, **config_changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(config_changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("changes, message", [
    ({"use_dora": True}, "DoRA"),
    ({"target_modules": ["q_proj", "lm_head"]}, r"target modules \['lm_head'\] are not supported"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"peft_type": "IA3"}, "is not LORA"),
    ({"r": 16}, "rank 8, adapter_config.json says r=16"),
])
def test_bad_adapter_configs_are_refused_by_name(tiny_model_dir, built, tmp_path, changes, message):
    hf = json.loads((tiny_model_dir / "config.json").read_text())
    bad = _copy(built[0]["a"], tmp_path / "bad", **changes)
    with pytest.raises(LoraError, match=f"LoRA adapter 'mine' .*{message}"):
        load_adapter("mine", bad, hf)


def test_adapter_of_another_base_model_is_refused(tiny_model_dir, built, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = json.loads((tiny_model_dir / "config.json").read_text())
    bad = _copy(built[0]["b"], tmp_path / "other")
    weights = load_file(str(bad / "adapter_model.safetensors"))
    key = next(k for k in weights if "q_proj.lora_A" in k)
    weights[key] = weights[key][:, :128].contiguous()     # trained on a model of hidden size 128
    save_file(weights, str(bad / "adapter_model.safetensors"))
    with pytest.raises(LoraError, match=r"'other' .*q_proj has A \(4, 128\).*needs A \(r, 256\).*does not fit"):
        load_adapter("other", bad, hf)
    deeper = dict(hf, num_hidden_layers=1)
    with pytest.raises(LoraError, match="weights for layer 1, but the base model has 1 layers"):
        load_adapter("b", built[0]["b"], deeper)
    with pytest.raises(LoraError, match="has no adapter_config.json"):
        LLM(str(tiny_model_dir), device="cpu", max_model_len=64, lora={"x": str(tmp_path)})
    assert module_shapes(hf)["down_proj"] == (768, 256)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_fp32_exact_and_bf16_graphs_stay_base_only(tiny_model_dir, built, hf_refs):
    """fp32 on CUDA (torch attention): the mixed batch equals the merged models as on CPU. bf16 (Triton,
    CUDA graphs): a base-only decode batch still replays the graphs and gives the plain engine's tokens;
    batches with adapter rows run eagerly and follow their adapter."""
    adapters, _ = built
    lora = {k: str(v) for k, v in adapters.items()}
    prompts = prompts_of([7, 19, 33], seed=4)
    names = ["a", "b", None]
    llm = LLM(str(tiny_model_dir), device="cuda", dtype="float32", attention_backend="torch", max_model_len=256,
              max_num_seqs=8, gpu_memory_utilization=0.3, lora=lora)
    for p, name, o in zip(prompts, names, llm.generate(prompts, GREEDY, lora=names)):
        assert o.token_ids == hf_greedy(hf_refs, name, p), f"adapter {name}"
    del llm
    kw = dict(device="cuda", dtype="bfloat16", max_model_len=256, max_num_seqs=8, num_kvcache_blocks=64)
    with_lora = LLM(str(tiny_model_dir), lora=lora, **kw)
    assert with_lora.runner.graphs and with_lora.runner.backend == "triton"
    graphs = [o.token_ids for o in LLM(str(tiny_model_dir), **kw).generate(prompts, GREEDY)]
    eager = [o.token_ids for o in LLM(str(tiny_model_dir), enforce_eager=True, **kw).generate(prompts, GREEDY)]
    assert [o.token_ids for o in with_lora.generate(prompts, GREEDY)] == graphs
    mixed = with_lora.generate(prompts, GREEDY, lora=names)
    # the base row of a mixed batch: the same eager kernels on the same batch shape, plus an exact 0
    assert mixed[2].token_ids == eager[2]
    assert mixed[0].token_ids != eager[0] and mixed[1].token_ids != eager[1]


def test_an_adapter_written_by_qaforge_train_serves_as_its_merged_model(tiny_model_dir, tmp_path):
    from train_helpers import write_qa_jsonl

    from qaforge.train.profiles import load_profile
    from qaforge.train.trainer import train

    data, exam = write_qa_jsonl(tmp_path / "train.jsonl", 32), write_qa_jsonl(tmp_path / "exam.jsonl", 8, seed=1)
    out = tmp_path / "run"
    train(load_profile("tiny", model=str(tiny_model_dir), data=str(data), exam=str(exam), output_dir=str(out),
                       max_steps=4, micro_batch_size=8, grad_accum_steps=1, max_seq_len=128, learning_rate=2e-2,
                       lora_r=8, lora_alpha=16, rouge_eval=False, tensorboard=False))
    prompts = prompts_of([11, 30], seed=5)
    llm = LLM(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=256, lora={"trained": str(out)})
    served = llm.generate(prompts + prompts, GREEDY, lora=["trained", "trained", None, None])
    merged = LLM(str(out / "merged_model"), device="cpu", dtype="float32", max_model_len=256).generate(prompts, GREEDY)
    assert [o.token_ids for o in served[:2]] == [o.token_ids for o in merged]
    assert [o.token_ids for o in served[:2]] != [o.token_ids for o in served[2:]]  # training changed the model
