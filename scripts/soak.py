"""Soak a running `qaforge serve` (or any server with the grader API and the OpenAI API) for minutes.

Half the clients send grader batches (`POST /predict`, a list of exam questions), the other half stream chat
completions through the openai SDK; a share of the streams is dropped by the client after a few chunks (a
user closing the tab). Every few seconds the server's host memory (RSS of --server-pid and its children)
and the GPU's used memory are sampled. The run passes when no request got a 5xx or a broken answer, every
request that was not shed (429/503 with Retry-After) was answered, and memory after warm-up stays flat.

    python -m scripts.soak run --url http://127.0.0.1:8000 --exam exam.jsonl --minutes 3 --server-pid PID --out soak.json
    python -m scripts.soak restart --exam exam.jsonl --out restart.json -- --model DIR --engine native

`restart` starts the server itself, sends a /predict batch, SIGKILLs the server mid-batch, starts it again and
checks that it serves: the answer a user gets after a crash is "connection refused", then a working server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

SHED = (429, 503)


def _questions(path: str) -> list[str]:
    from qaforge.dataset import read_records

    return [r.question for r in read_records(Path(path))]


def _rss_mib(pid: int | None) -> float | None:
    """RSS of a process and its descendants (uvicorn workers, vLLM's engine core), from /proc."""
    if not pid:
        return None
    try:
        out = subprocess.run(["ps", "-o", "pid=,ppid=,rss=", "-e"], capture_output=True, text=True).stdout
    except OSError:
        return None
    rows = [tuple(map(int, line.split())) for line in out.splitlines() if line.strip()]
    children: dict[int, list[int]] = {}
    for p, pp, _ in rows:
        children.setdefault(pp, []).append(p)
    rss = {p: r for p, _, r in rows}
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1024 if pid in rss else None


def _gpu_mib() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


class Soak:
    def __init__(self, args, questions: list[str]):
        self.args, self.questions = args, questions
        self.results: list[dict] = []
        self.samples: list[dict] = []
        self.stop_at = time.monotonic() + args.minutes * 60

    def _record(self, kind: str, status: int, t0: float, ok: bool, note: str = "", tokens: int = 0):
        self.results.append({"kind": kind, "status": status, "latency_s": round(time.monotonic() - t0, 4),
                             "ok": ok, "note": note, "chunks": tokens, "t": round(time.monotonic(), 2)})

    async def grader_client(self, seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=self.args.url, timeout=self.args.timeout) as client:
            while time.monotonic() < self.stop_at:
                batch = rng.sample(self.questions, min(self.args.batch, len(self.questions)))
                t0 = time.monotonic()
                try:
                    r = await client.post("/predict", json={"prompt": batch})
                except httpx.HTTPError as e:
                    self._record("predict", 0, t0, False, f"{type(e).__name__}: {e}")
                    continue
                if r.status_code in SHED:
                    self._record("predict", r.status_code, t0, True, "shed")
                    await asyncio.sleep(float(r.headers.get("Retry-After", 1)))
                    continue
                answers = r.json().get("response") if r.status_code == 200 else None
                good = isinstance(answers, list) and len(answers) == len(batch) and all(isinstance(a, str) for a in answers)
                self._record("predict", r.status_code, t0, good, "" if good else r.text[:200])

    async def chat_client(self, seed: int) -> None:
        from openai import APIStatusError, AsyncOpenAI

        rng = random.Random(seed)
        client = AsyncOpenAI(base_url=self.args.url + "/v1", api_key=self.args.api_key, timeout=self.args.timeout,
                             max_retries=0)
        model = (await client.models.list()).data[0].id
        while time.monotonic() < self.stop_at:
            drop = rng.random() < self.args.disconnect_share
            t0, chunks = time.monotonic(), 0
            try:
                stream = await client.chat.completions.create(
                    model=model, stream=True, max_tokens=self.args.max_tokens, temperature=0.7,
                    messages=[{"role": "user", "content": rng.choice(self.questions)}])
                async for chunk in stream:
                    chunks += 1
                    if drop and chunks >= 4:
                        await stream.close()   # the client goes away mid-answer; the server must free the sequence
                        break
                self._record("chat_drop" if drop else "chat", 200, t0, chunks > 0, tokens=chunks)
            except APIStatusError as e:
                shed = e.status_code in SHED
                self._record("chat", e.status_code, t0, shed, "shed" if shed else str(e)[:200])
                if shed:
                    await asyncio.sleep(1)
            except Exception as e:  # noqa: BLE001 - a soak records every failure instead of stopping
                self._record("chat", 0, t0, False, f"{type(e).__name__}: {e}"[:200])
        await client.close()

    async def sampler(self) -> None:
        t_start = time.monotonic()
        while time.monotonic() < self.stop_at:
            self.samples.append({"t": round(time.monotonic() - t_start, 1), "rss_mib": _rss_mib(self.args.server_pid),
                                 "gpu_mib": _gpu_mib()})
            await asyncio.sleep(self.args.sample_every)

    async def run(self) -> dict:
        n = self.args.clients
        tasks = [self.grader_client(i) for i in range(n // 2)] + [self.chat_client(100 + i) for i in range(n - n // 2)]
        t0 = time.monotonic()
        await asyncio.gather(self.sampler(), *tasks)
        return summarize(self.results, self.samples, time.monotonic() - t0, self.args.warmup_share)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 3)


def _growth(samples: list[dict], key: str, warmup_share: float) -> dict:
    vals = [s[key] for s in samples if s[key] is not None]
    if len(vals) < 4:
        return {"samples": len(vals)}
    after = vals[int(len(vals) * warmup_share):]
    half = len(after) // 2
    first, last = statistics.mean(after[:half]), statistics.mean(after[half:])
    return {"samples": len(vals), "after_warmup_first_half_mib": round(first, 1),
            "after_warmup_second_half_mib": round(last, 1), "growth_mib": round(last - first, 1),
            "max_mib": round(max(vals), 1)}


def summarize(results: list[dict], samples: list[dict], wall: float, warmup_share: float) -> dict:
    kinds = {}
    for kind in sorted({r["kind"] for r in results}):
        rs = [r for r in results if r["kind"] == kind]
        lat = [r["latency_s"] for r in rs if r["ok"] and r["note"] != "shed"]
        kinds[kind] = {"requests": len(rs), "ok": sum(r["ok"] for r in rs),
                       "shed": sum(r["note"] == "shed" for r in rs),
                       "5xx": sum(500 <= r["status"] < 600 and r["status"] not in SHED for r in rs),
                       "failed": sum(not r["ok"] for r in rs), "p50_s": _pct(lat, 50), "p99_s": _pct(lat, 99)}
    rss, gpu = _growth(samples, "rss_mib", warmup_share), _growth(samples, "gpu_mib", warmup_share)
    failures = [r for r in results if not r["ok"]]
    return {"wall_s": round(wall, 1), "kinds": kinds, "host_rss": rss, "gpu_memory": gpu,
            "failures": failures[:50], "passed": not failures and all(k["5xx"] == 0 for k in kinds.values()),
            "samples": samples}


def print_table(summary: dict) -> None:
    print(f"{'kind':<10} {'requests':>8} {'ok':>6} {'shed':>5} {'5xx':>4} {'failed':>6} {'p50 s':>8} {'p99 s':>8}")
    for kind, k in summary["kinds"].items():
        print(f"{kind:<10} {k['requests']:>8} {k['ok']:>6} {k['shed']:>5} {k['5xx']:>4} {k['failed']:>6} "
              f"{k['p50_s'] or '-':>8} {k['p99_s'] or '-':>8}")
    for key in ("host_rss", "gpu_memory"):
        g = summary[key]
        if "growth_mib" in g:
            print(f"{key}: {g['after_warmup_first_half_mib']} -> {g['after_warmup_second_half_mib']} MiB after "
                  f"warm-up (growth {g['growth_mib']} MiB, max {g['max_mib']})")
    print("PASSED" if summary["passed"] else f"FAILED: {len(summary['failures'])} failures, e.g. "
          f"{summary['failures'][:2]}")


def _wait_ready(url: str, seconds: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                return round(time.monotonic() - t0, 1)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return None


def restart(args) -> dict:
    """SIGKILL mid-batch, then the same command again: it must come back and answer."""
    port = args.port
    cmd = [sys.executable, "-m", "qaforge", "serve", "--host", "127.0.0.1", "--port", str(port), *args.serve_args]
    url = f"http://127.0.0.1:{port}"
    questions = _questions(args.exam)[:args.batch]
    out: dict = {"command": cmd}
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out["first_ready_s"] = _wait_ready(url, args.ready_timeout)

    def killer():
        time.sleep(args.kill_after)
        os.killpg(proc.pid, signal.SIGKILL)

    import threading

    threading.Thread(target=killer, daemon=True).start()
    t0 = time.monotonic()
    try:
        r = httpx.post(url + "/predict", json={"prompt": questions}, timeout=args.timeout)
        out["mid_batch"] = f"HTTP {r.status_code} (finished before the kill)"
    except httpx.HTTPError as e:
        out["mid_batch"] = f"{type(e).__name__} after {time.monotonic() - t0:.1f} s (the client sees the crash)"
    proc.wait()
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out["second_ready_s"] = _wait_ready(url, args.ready_timeout)
    r = httpx.post(url + "/predict", json={"prompt": questions}, timeout=args.timeout)
    answers = r.json().get("response", []) if r.status_code == 200 else []
    out["after_restart"] = {"status": r.status_code, "answers": len(answers), "asked": len(questions)}
    out["passed"] = r.status_code == 200 and len(answers) == len(questions)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    print(json.dumps({k: v for k, v in out.items() if k != "command"}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--url", default="http://127.0.0.1:8000")
    r.add_argument("--api-key", default="none")
    r.add_argument("--server-pid", type=int, help="the server's pid, for its host memory")
    r.add_argument("--clients", type=int, default=8)
    r.add_argument("--minutes", type=float, default=3.0)
    r.add_argument("--disconnect-share", type=float, default=0.25)
    r.add_argument("--max-tokens", type=int, default=128)
    r.add_argument("--sample-every", type=float, default=5.0)
    r.add_argument("--warmup-share", type=float, default=0.25, help="share of samples ignored as warm-up")
    for q in (r, k := sub.add_parser("restart")):
        q.add_argument("--exam", required=True)
        q.add_argument("--batch", type=int, default=64)
        q.add_argument("--timeout", type=float, default=600.0)
        q.add_argument("--out")
    k.add_argument("--port", type=int, default=8031)
    k.add_argument("--kill-after", type=float, default=1.0)
    k.add_argument("--ready-timeout", type=float, default=600.0)
    k.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: the qaforge serve flags")
    args = p.parse_args()
    if args.cmd == "restart":
        args.serve_args = [a for a in args.serve_args if a != "--"]
        result = restart(args)
    else:
        result = asyncio.run(Soak(args, _questions(args.exam)).run())
        print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
