"""Issue 13 (startup): the server's startup timeline (/health keys, the ready log line), a serve path
that never imports transformers & co. before ready, and scripts/ready_time.py on the tiny model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from qaforge.paths import REPO_DIR
from qaforge.serve.state import process_age, startup_line
from serve_helpers import FAST_ENV, model_dir

# Libraries a server must not import to get ready: seconds each, and nothing before ready needs them.
HEAVY = ("transformers", "matplotlib", "pandas", "datasets", "openai", "peft", "accelerate")
TIMELINE = ("imports_seconds", "app_seconds", "engine_import_seconds", "engine_seconds", "tokenizer_seconds",
            "load_seconds", "warmup_seconds", "ready_seconds")


def test_process_age_counts_from_exec():
    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5); from qaforge.serve.state import "
                          "process_age; print(process_age())"], capture_output=True, text=True, check=True,
                         cwd=REPO_DIR)
    age = float(out.stdout)
    assert 0.5 <= age < 30, age  # includes the sleep and the interpreter's start
    mine = process_age()
    assert mine is not None and mine > 0.1  # this pytest process started a while ago


def test_startup_line_adds_up():
    t = {"imports_seconds": 1.2, "app_seconds": 0.1, "engine_import_seconds": 2.0, "engine_seconds": 1.8,
         "tokenizer_seconds": 0.5, "load_seconds": 3.8, "warmup_seconds": 0.3, "ready_seconds": 5.6}
    line = startup_line(t)
    assert line.startswith("ready: load 3.80 s + warm-up 0.30 s; 5.60 s after exec = imports 1.20 s + app 0.10 s")
    assert "other 0.20 s" in line and "engine imports 2.00 s + engine 1.80 s | tokenizer 0.50 s" in line
    bare = startup_line({"engine_seconds": 1.0, "tokenizer_seconds": 0.2, "load_seconds": 1.0})
    assert bare.startswith("ready: load 1.00 s + warm-up 0.00 s (load: engine 1.00 s |") and "after exec" not in bare


CHILD = r"""
import json, sys, time
from fastapi.testclient import TestClient
from qaforge.serve.app import create_app
from qaforge.serve.settings import ServeSettings
settings = ServeSettings.from_env(model=sys.argv[1], engine="native", device="cpu", warmup_max_tokens=4)
with TestClient(create_app(settings)) as client:
    deadline = time.monotonic() + 300
    while client.get("/").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    health = client.get("/health").json()
    tok = type(client.app.state.qaforge.tokenizer).__name__
    answer = client.post("/predict", json={"prompt": ["What is a warp?", "Explain SIMT."], "max_tokens": 3}).json()
print(json.dumps({"health": health, "tokenizer": tok, "answer": answer,
                  "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def test_serve_gets_ready_without_heavy_imports_and_reports_its_timeline(request, tmp_path_factory):
    """A fresh process (this one has imported everything): the app over the tiny model, to ready and one
    /predict; then no heavy library may be loaded, and /health carries every startup key."""
    model = model_dir(request, tmp_path_factory)
    out = subprocess.run([sys.executable, "-c", CHILD, str(model)], capture_output=True, text=True, timeout=600,
                         cwd=REPO_DIR, env={**os.environ, **FAST_ENV})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [], f"imported before/at ready: {got['heavy']}"
    assert got["tokenizer"] == "FastTokenizer"
    assert len(got["answer"]["response"]) == 2
    h = got["health"]
    assert h["status"] == "ready"
    for key in TIMELINE:
        assert h[key] >= 0, key
    assert h["engine_seconds"] > 0 and h["tokenizer_seconds"] > 0 and h["warmup_seconds"] > 0
    assert h["load_seconds"] >= max(h["engine_seconds"], h["tokenizer_seconds"]) - 0.01
    # The parts happen one after another from exec to ready (rounding: 10 ms ticks, 3 decimals).
    assert h["ready_seconds"] >= h["imports_seconds"] + h["app_seconds"] + h["load_seconds"] + h["warmup_seconds"] - 0.05


def test_ready_time_script_on_the_tiny_model(request, tmp_path_factory, tmp_path):
    model = model_dir(request, tmp_path_factory)
    out_json = tmp_path / "ready.json"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scripts.ready_time", "--runs", "1", "--timeout", "300",
                           "--out", str(out_json), "--", "--model", str(model), "--engine", "native",
                           "--device", "cpu", "--max-tokens", "8"],
                          capture_output=True, text=True, timeout=600, cwd=REPO_DIR,
                          env={**os.environ, **FAST_ENV})
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ready (GET / = 200): median" in proc.stdout and "engine_import" in proc.stdout
    summary = json.loads(out_json.read_text())
    assert summary["ok"] == summary["runs"] == 1
    run = summary["results"][0]
    assert 0 < run["ready_wall_seconds"] < wall
    # The script's clock starts before exec, the server's at exec: the script sees at least as much.
    assert run["ready_wall_seconds"] >= run["health"]["ready_seconds"] - 0.05
    assert summary["serve_args"][:2] == ["--model", str(model)]


def test_ready_time_script_reports_a_server_that_cannot_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scripts.ready_time", "--runs", "1", "--timeout", "120",
                           "--out", str(tmp_path / "r.json"), "--", "--model", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=300, cwd=REPO_DIR)
    assert proc.returncode == 1
    assert "FAIL: server exited with code" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["ok"] == 0


@pytest.mark.parametrize("engine", ["native", "vllm"])
def test_engine_module_map_names_what_the_backend_imports(engine):
    from qaforge.paths import PACKAGE_DIR
    from qaforge.serve.state import ENGINE_MODULES

    source = (PACKAGE_DIR / "serve" / "backends.py").read_text(encoding="utf-8")
    module = ENGINE_MODULES[engine]
    assert f"from {module} import" in source  # the timed import is the one start() would do
