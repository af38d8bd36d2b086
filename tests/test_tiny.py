"""The embedded tiny model loads like Qwen/Qwen3-0.6B would and renders Qwen3's chat format."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from qaforge.chat import DEFAULT_SYSTEM_PROMPT, build_messages, clean_answer


def test_tiny_model_is_a_qwen3_hf_directory(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["head_dim"] >= 64
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    params = sum(p.numel() for p in model.parameters())
    assert 1e6 < params < 2e7
    build = json.loads((tiny_model_dir / "tiny_build.json").read_text())
    assert build["pretrain_loss_last"] < build["pretrain_loss_first"] - 2.0  # it learned the corpus


def test_chat_template_renders_qwen3_format(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template(build_messages("什么是warp？", "S", answer="A"), tokenize=False)
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n什么是warp？<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n")
    prompt = tok.apply_chat_template(build_messages("q", DEFAULT_SYSTEM_PROMPT), tokenize=False,
                                     add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tok("<|im_start|>共享内存（shared memory）<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "<|im_start|>共享内存（shared memory）<|im_end|>"


def test_clean_answer_strips_think_and_special_tokens():
    assert clean_answer("<think>x</think>\n\n答案<|im_end|>") == "答案"
    assert clean_answer("答<think>never closed") == "答"
