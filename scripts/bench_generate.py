"""Benchmark: accepted QA items per minute of the LLM generator against the fault server with 1-2 s
simulated latency, at several concurrencies, compared with the ideal rate.

Ideal: with `c` requests in flight and mean latency L, at most c / L calls finish per second; the
ideal accepted-items rate is that times the accepted items per call measured in the same run, so
efficiency = achieved calls per second / (c / L). Goal: >= 90 % at concurrency 32.
Two efficiencies are reported: end to end (corpus loading, chunking and file export included, a fixed
cost that a real, minutes-long run amortizes) and over the call phase alone (rounds of requests,
with judging overlapped).
The server runs in its own process (as a real API would); the corpus is synthetic, so every
chapter has enough distinct sentences for the larger runs.

  .venv/bin/python -m scripts.bench_generate [--concurrency 1 8 32 64] [--out runs/bench_generate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

import openai  # noqa: F401  (imported up front: a one-time cost, not part of any run)

from qaforge.generate.llm_client import LLMOptions
from qaforge.generate.pipeline import generate_dataset
from qaforge.paths import REPO_DIR as REPO

LATENCY = (1.0, 2.0)
TERMS = ["线程束（warp）", "共享内存（shared memory）", "全局内存（global memory）", "线程块（thread block）",
         "寄存器（register）", "占用率（occupancy）", "合并访问（memory coalescing）", "核函数（kernel）"]


WORDS = ("调度 延迟 带宽 分块 同步 归约 扫描 直方图 卷积 稀疏 排序 图遍历 原子操作 流水线 预取 向量化 展开 融合 "
         "量化 精度 溢出 舍入 屏障 网格 簇 纹理 常量 页锁定 异步 拷贝 事件 流 图捕获 编译 链接 剖析 瓶颈 峰值 "
         "吞吐 功耗 频率 缓存行 银行 冲突 发散 掩码 洗牌 投票 协作 动态 递归 队列 负载 均衡 粗化 复用 局部性").split()


def synthetic_corpus(root: Path, chapters: int = 8, sentences: int = 600) -> Path:
    """Chapters of distinct sentences (random word heads), each naming a GPU term."""
    import random

    rng = random.Random(0)
    for c in range(1, chapters + 1):
        lines = [f"# Chapter {c} Synthetic Topic {c}（合成章节{c}）", ""]
        for s in range(sentences):
            if s % 40 == 0:
                lines += ["", f"## {c}.{s // 40 + 1} 第{s // 40 + 1}节", ""]
            term = TERMS[(c + s) % len(TERMS)]
            head = "".join(rng.sample(WORDS, 4))
            lines.append(f"{head}与{term}的关系体现在第{s}种配置下，它决定了编号{c * 1000 + s}的 GPU 程序的性能。")
        (root / f"ch{c:02d}_synthetic.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "qaforge.testing.fault_llm_server", "--port", str(port),
                             "--latency", str(LATENCY[0]), str(LATENCY[1])], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fault server did not start")


def run_one(corpus: Path, base_url: str, concurrency: int, calls_wanted: int, out_root: Path) -> dict:
    chapters = len(list(corpus.glob("ch*.md")))
    # round 0 asks ceil(1.25 * target / 5) calls per stratum: pick the target that gives ~calls_wanted
    target = max(10, round(calls_wanted / chapters * 5 / 1.25))
    options = LLMOptions(base_url=base_url, api_key="bench", model="fault-llm", concurrency=concurrency,
                         timeout_s=30, target_per_chapter=target)
    report = generate_dataset(corpus, out_root / f"c{concurrency}", generator="llm", exam_size=0,
                              show_progress=False, print_table=False, llm=options)
    calls = report["usage"]["total"]["calls"]
    wall = report["wall_time_s"]
    mean_latency = sum(LATENCY) / 2
    ideal_calls_per_s = concurrency / mean_latency
    accepted = report["dataset"]["total"]
    return {"concurrency": concurrency, "calls": calls, "rounds": report["planner"]["rounds"],
            "accepted": accepted, "wall_s": wall, "call_phase_s": report["planner"]["call_phase_s"],
            "accepted_per_min": round(accepted / wall * 60, 1),
            "ideal_accepted_per_min": round(ideal_calls_per_s * 60 * accepted / calls, 1),
            "calls_per_s": round(calls / wall, 2), "ideal_calls_per_s": round(ideal_calls_per_s, 2),
            "efficiency": round(calls / wall / ideal_calls_per_s, 3),
            "efficiency_call_phase": round(calls / report["planner"]["call_phase_s"] / ideal_calls_per_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=25.0, help="approximate length of round 0 per run")
    parser.add_argument("--port", type=int, default=18777)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_generate.json")
    args = parser.parse_args()
    server = start_server(args.port)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "corpus").mkdir()
            corpus = synthetic_corpus(Path(tmp) / "corpus")
            for c in args.concurrency:
                calls_wanted = max(12, int(args.seconds * c / (sum(LATENCY) / 2)))
                rows.append(run_one(corpus, f"http://127.0.0.1:{args.port}/v1", c, calls_wanted, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    table = Table(title=f"LLM generation throughput (latency {LATENCY[0]:g}-{LATENCY[1]:g} s, fault server)")
    columns = ("concurrency", "calls", "rounds", "accepted", "wall_s", "accepted_per_min",
               "ideal_accepted_per_min", "efficiency", "efficiency_call_phase")
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(f"{row[k]:.1%}" if k.startswith("efficiency") else str(row[k]) for k in columns))
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"latency_s": LATENCY, "runs": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
