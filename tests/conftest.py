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

