"""Seconds from `qaforge serve` exec until GET / answers 200, N times, with the server's own breakdown.

    python -m scripts.ready_time --runs 5 --out ready.json -- --model DIR --engine native
    python -m scripts.ready_time --python .venv-vllm/bin/python --runs 3 -- --model DIR --engine vllm

Everything after `--` goes to `qaforge serve` unchanged (--port is added here). Each run is a fresh
process, polled every 50 ms on GET / (the grader's readiness check), then stopped with SIGTERM; the
table shows the wall time this script measured next to /health's startup keys (serve/state.py:
imports, app, engine imports, engine, tokenizer, warm-up, ready as the server saw it).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from qaforge.serve.launcher import free_port

# /health keys shown as columns, in the order the server spends them.
COLUMNS = ("imports_seconds", "app_seconds", "engine_import_seconds", "engine_seconds", "tokenizer_seconds",
           "load_seconds", "warmup_seconds", "ready_seconds")


def _get(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:  # 503 while loading
        return exc.code, {}
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, {}


def one_run(python: str, serve_args: list[str], timeout: float) -> dict:
    """Start one server, time it to GET / = 200, read /health, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+b", prefix="ready-time-", suffix=".log", delete=False)
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    cmd = [python, "-m", "qaforge", "serve", "--host", "127.0.0.1", "--port", str(port)] + serve_args
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    result: dict = {"ok": False, "log": log.name}
    try:
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                result["error"] = f"server exited with code {proc.returncode}"
                break
            if _get(base + "/", timeout=1.0)[0] == 200:
                result["ok"] = True
                result["ready_wall_seconds"] = time.perf_counter() - started
                result["health"] = _get(base + "/health")[1]
                break
            time.sleep(0.05)
        else:
            result["error"] = f"not ready after {timeout:.0f} s"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
    return result


def table(results: list[dict]) -> str:
    head = ["run", "ready_s"] + [c.removesuffix("_seconds") for c in COLUMNS]
    rows = [head]
    for i, r in enumerate(results, 1):
        if not r["ok"]:
            rows.append([str(i), "FAIL: " + r.get("error", "?")])
            continue
        h = r["health"]
        rows.append([str(i), f"{r['ready_wall_seconds']:.2f}"]
                    + [f"{h[c]:.2f}" if isinstance(h.get(c), (int, float)) else "-" for c in COLUMNS])
    widths = [max(len(row[j]) for row in rows if j < len(row)) for j in range(len(head))]
    return "\n".join("  ".join(cell.rjust(widths[j]) for j, cell in enumerate(row)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serve_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, serve_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--python", default=sys.executable, help="interpreter that runs qaforge serve")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run before giving up")
    p.add_argument("--out", type=Path, help="JSON with every run")
    args = p.parse_args(argv)
    results = [one_run(args.python, serve_args, args.timeout) for _ in range(args.runs)]
    print(table(results))
    ok = [r["ready_wall_seconds"] for r in results if r["ok"]]
    summary = {"runs": len(results), "ok": len(ok), "serve_args": serve_args,
               "median_ready_seconds": statistics.median(ok) if ok else None,
               "min_ready_seconds": min(ok) if ok else None, "results": results}
    if ok:
        print(f"ready (GET / = 200): median {summary['median_ready_seconds']:.2f} s, "
              f"min {summary['min_ready_seconds']:.2f} s over {len(ok)} runs")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
