"""The benchmark's one call: prepare the files, run each variant in its own process with its own timeout inside
a total budget, print each result as it lands and a table at the end, and keep `bench_train.json` current."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts.bench_train.worker import E2E

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VARIANTS = "hf_peft,qaforge_cold,qaforge_warm,hf_peft_compile"
COLUMNS = ("status", "wall_s", "first_step_s", "steps", "median_step_ms", "steady_tok_s", "distinct_shapes",
           "cache_fx_aot", "recompiles", "peak_alloc_GiB", "peak_reserved_GiB")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_train", description=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="where bench_train.json goes")
    parser.add_argument("--variants", "--only", default=DEFAULT_VARIANTS,
                        help=f"comma list, in order (default {DEFAULT_VARIANTS}); also qaforge_eager and the T1 "
                             "micro variants (baseline_synthetic, qaforge_synthetic, ..., varlen_check)")
    parser.add_argument("--model", help="HF model directory (default: Qwen3-0.6B architecture, random bf16 weights)")
    parser.add_argument("--data", help="alpaca jsonl (default ../shared/seed_data/pmpp_qa_v2.jsonl, else "
                                       "synthetic text at the seed's lengths); 193 lines are held out as the exam")
    parser.add_argument("--exam", help="an exam file to use instead of holding lines out of --data")
    parser.add_argument("--max-steps", type=int, default=-1, help="cap every end-to-end variant at N optimizer "
                                                                   "steps (default: fast_v7's 2 epochs)")
    parser.add_argument("--timeout-s", type=float, default=200.0, help="per variant (default 200)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="for the whole call (default 480)")
    parser.add_argument("--steps", type=int, default=25, help="T1 micro variants: measured steps")
    parser.add_argument("--warmup", type=int, default=5, help="T1 micro variants: warm-up steps")
    parser.add_argument("--work", default="/tmp/qaforge_bench_train")
    parser.add_argument("--keep-cache", action="store_true", help="do not empty the compile caches first")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run")
    # the commands in docs/benchmarks.md predate the package: every variant now starts cold and the
    # old whole-profile run is the end-to-end variants, so these two change nothing
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag, path in (("--model", args.model), ("--data", args.data), ("--exam", args.exam)):
        if path and not Path(path).exists():
            parser.error(f"{flag} {path}: no such file or directory")
    if args.exam and not args.data:
        parser.error("--exam goes with --data")
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


def variant_env(variant: str, work: Path) -> dict[str, str]:
    """Cold variants get empty caches; qaforge_warm the folder qaforge_cold filled."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "QAFORGE_COMPILE_CACHE")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    if variant.startswith("qaforge_") and variant in E2E:
        env["QAFORGE_COMPILE_CACHE"] = str(work / "compile_cache")
    else:  # torch's own caches, in a folder emptied at the start of the call
        env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor" / variant)
    return env


def run_variant(variant: str, args, work: Path, timeout: float) -> dict:
    result_file, progress_file = work / f"{variant}.result.json", work / f"{variant}.progress.jsonl"
    for f in (result_file, progress_file):
        f.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "scripts.bench_train.worker", variant, "--result", str(result_file),
           "--progress", str(progress_file), "--work", str(work), "--files", str(work / "files.json"),
           "--device", args.device, "--max-steps", str(args.max_steps), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    for flag in ("model", "data", "exam"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=variant_env(variant, work), start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return {"status": f"timeout after {timeout:.0f} s", "process_s": round(time.perf_counter() - started, 1),
                **last_progress(progress_file)}
    except BaseException:  # the runner itself is stopped: its worker (own session) must not outlive it
        kill_group(proc)
        raise
    if result_file.is_file():
        return json.loads(result_file.read_text())
    return {"status": f"failed (exit {proc.returncode}, no result)", **last_progress(progress_file)}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's own process group: it and the compile workers it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def last_progress(path: Path) -> dict:
    """What a killed variant had reached: its last progress event, marked partial."""
    lines = path.read_text().splitlines() if path.is_file() else []
    if not lines:
        return {"partial": True, "steps": 0}
    event = json.loads(lines[-1])
    event.pop("event", None)
    return {"partial": True, **event}


def main(argv=None) -> dict:
    args = parse_args(argv)
    # SIGTERM (a device call's time limit, `timeout`) as an exception, so run_variant kills its worker first
    signal.signal(signal.SIGTERM, _interrupt)
    deadline = time.perf_counter() + args.budget_s
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.keep_cache:
        for folder in (work / "compile_cache", work / "inductor", work / "runs"):
            shutil.rmtree(folder, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv), "device": args.device,
           "max_steps": args.max_steps, "runs": {}}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v in E2E for v in variants):
        prep = run_variant("prepare", args, work, max(30.0, deadline - time.perf_counter()))
        res["files"] = prep
        if prep.get("status") != "ok":
            print(f"[prepare] {json.dumps(prep)}", flush=True)
            save(res, out)
            return res
        (work / "files.json").write_text(json.dumps(prep))
        print(f"[prepare] {json.dumps(prep)}", flush=True)
    res["versions"] = versions()
    for variant in variants:
        left = deadline - time.perf_counter()
        if left < 20:
            res["runs"][variant] = {"status": "skipped: the call's --budget-s ran out"}
        else:
            res["runs"][variant] = run_variant(variant, args, work, min(args.timeout_s, left))
        print(f"[{variant}] {json.dumps(res['runs'][variant], default=str)[:1500]}", flush=True)
        save(res, out)
    res["table"] = table(res["runs"])
    save(res, out)
    print_table(res)
    return res


def versions() -> dict:
    try:
        import peft
        import torch
        import transformers
    except ImportError:
        return {}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def table(runs: dict) -> list[dict]:
    base = runs.get("hf_peft", {}).get("wall_s")
    rows = []
    for name, r in runs.items():
        row = {"variant": name, **{c: r.get(c) for c in COLUMNS}, **cache_columns(r.get("compile_stats"))}
        if name in E2E and base and r.get("wall_s") and r.get("status") == "ok":
            row["hf_peft_wall_over_this"] = round(base / r["wall_s"], 2)
        if name not in E2E and "tok_s" in r:  # T1 micro variants
            row.update(steady_tok_s=r["tok_s"], median_step_ms=r.get("step_ms"), peak_alloc_GiB=r.get("peak_GiB"))
        rows.append(row)
    return rows


def cache_columns(stats: dict | None) -> dict:
    """`cache_fx_aot`: Inductor FX-graph cache hits/misses and AOTAutograd cache hits/misses, e.g. "10/0 6/0"."""
    if not stats:
        return {}
    g = lambda key: stats.get(key, 0)  # noqa: E731
    return {"cache_fx_aot": f"{g('inductor.fxgraph_cache_hit')}/{g('inductor.fxgraph_cache_miss')} "
                            f"{g('aot_autograd.autograd_cache_hit')}/{g('aot_autograd.autograd_cache_miss')}",
            "recompiles": stats.get("recompiles")}


def print_table(res: dict) -> None:
    head = ("variant", *COLUMNS, "hf_peft_wall_over_this")
    print("\n" + " | ".join(head))
    for row in res["table"]:
        print(" | ".join("-" if row.get(c) is None else str(row.get(c)) for c in head))
    for name, r in res["runs"].items():
        if r.get("time_split"):
            print(f"{name}: time split {json.dumps(r['time_split'])}")
        if r.get("compile_stats"):
            print(f"{name}: compile {json.dumps(r['compile_stats'])}")
        for notice in r.get("notices") or []:
            print(f"{name}: NOTE {notice}")


def save(res: dict, out: Path) -> None:
    (out / "bench_train.json").write_text(json.dumps(res, indent=1, default=str))
