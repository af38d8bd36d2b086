"""Shared pieces of the review tests (no tests here): a real rules-generated dataset over two chapters of
the sample textbook, a judge.jsonl beside it, and the review server as a real process on a free port, so
the tests can SIGKILL it like a user's crash would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from qaforge.paths import DEFAULT_CORPUS_DIR

import httpx

ROOT = Path(__file__).resolve().parents[1]
CORPUS_FILES = ("ch01_*.md", "ch02_*.md")


def build_dataset(base: Path) -> Path:
    """`qaforge generate --generator rules` over chapters 1-2 of qaforge/data/corpus (real pipeline, ~60 pairs)."""
    from qaforge.generate.pipeline import generate_dataset

    corpus = base / "corpus"
    corpus.mkdir(parents=True)
    for pattern in CORPUS_FILES:
        for path in DEFAULT_CORPUS_DIR.glob(pattern):
            shutil.copy(path, corpus / path.name)
    out = base / "dataset"
    generate_dataset(corpus, out, generator="rules", exam_size=6, show_progress=False, print_table=False)
    return out


def write_judge(folder: Path, ids: list[str], accuracy: list[int]) -> None:
    lines = [{"id": i, "scores": {"accuracy": a, "relevance": 5, "completeness": 3}, "overall": a,
              "reason": f"judged {a}", "judge_model": "test-judge"} for i, a in zip(ids, accuracy)]
    (folder / "judge.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ReviewServer:
    """`qaforge review FOLDER` in its own process group; `kill()` is a SIGKILL, `start()` a fresh process."""

    def __init__(self, folder: Path, *args: str, token: str | None = None, host: str = "127.0.0.1") -> None:
        self.folder, self.args, self.token, self.host = folder, list(args), token, host
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = folder.parent / f"review_server_{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "ReviewServer":
        env = {k: v for k, v in os.environ.items() if k != "QAFORGE_REVIEW_TOKEN"}
        if self.token:
            env["QAFORGE_REVIEW_TOKEN"] = self.token
        cmd = [sys.executable, "-m", "qaforge.cli", "review", str(self.folder), "--host", self.host,
               "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"review server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/health", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"review server did not answer in {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, exactly as a crash or `kill -9` would leave things."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "ReviewServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
