"""Shared fixtures. The tiny Qwen3 is built once per checkout (runs/test_tiny_model, reused while the
corpus and config are unchanged) so every stage is tested on the same real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    if os.environ.get("QAFORGE_TEST_MODEL"):
        return Path(os.environ["QAFORGE_TEST_MODEL"])
    from qaforge.tiny import build_tiny

    return build_tiny(REPO / "runs" / "test_tiny_model", progress=False)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: it exists only beside the developers' and CI's checkouts")
    return SHARED


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: the CI box has 2 shared cores, where OpenMP spinning makes tiny
    matmuls many times slower, and one thread keeps CPU numerics fixed between runs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- a served model: for test modules that define a module-scoped `server` fixture (a
# qaforge.serve.launcher.ServerProcess, usually from serve_helpers.serve_tiny) ----------------------
@pytest.fixture(scope="module")
def url(server) -> str:
    return server.base_url


@pytest.fixture(scope="module")
def client(url):
    from serve_helpers import openai_client

    return openai_client(url)


@pytest.fixture(scope="module")
def model(client) -> str:
    """The served model's id, as /v1/models lists it first."""
    return client.models.list().data[0].id


# ---- the engine tests' random checkpoints (tests/engine_helpers.py builds them; seeded, so one build
# per session serves every module) -----------------------------------------------------------------
@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory) -> str:
    from engine_helpers import build_random_qwen3

    return build_random_qwen3(tmp_path_factory.getbasetemp() / "engine_random_qwen3")


@pytest.fixture(scope="session")
def hf_qwen3(qwen3_dir):
    from engine_helpers import hf_reference

    return hf_reference(qwen3_dir)


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory) -> str:
    from engine_helpers import build_random_qwen2

    return build_random_qwen2(tmp_path_factory.getbasetemp() / "engine_random_qwen2")


@pytest.fixture(scope="session")
def hf_qwen2(qwen2_dir):
    from engine_helpers import hf_reference

    return hf_reference(qwen2_dir)

