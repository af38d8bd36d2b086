"""Shared helpers for tests/test_eval_*.py: an exam writer, a quiet console, a uvicorn server in a
thread (real HTTP on a free port), and the model to evaluate.

The model is the project's tiny model (session fixture `tiny_model_dir`) when tests/conftest.py
provides it, otherwise a smaller throwaway one built with qaforge.tiny (2 pretraining steps: its
answers are mostly blank lines, which is enough for plumbing and exactness tests).
"""

from __future__ import annotations

import io
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import uvicorn
from rich.console import Console


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def quiet_console() -> Console:
    """A console that records what would be printed (read it with `.file.getvalue()`)."""
    return Console(file=io.StringIO(), width=160)


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1:<free port>; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def model_dir_for_eval(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return Path(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        from qaforge.tiny import TinyConfig, build_tiny

        cfg = TinyConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=64, pretrain_steps=2,
                         pretrain_seq_len=64, pretrain_batch=2)
        # A fixed directory: build_tiny reuses a finished build there, so every test shares one model.
        return build_tiny(tmp_path_factory.getbasetemp() / "eval_tiny", cfg=cfg, progress=False)
