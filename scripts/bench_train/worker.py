"""One benchmark variant in its own process: `python -m scripts.bench_train.worker VARIANT --result FILE ...`.

A fresh process per variant means each pays its own imports, model load and compilation, as a user's run
does, and the runner can kill one that overruns its timeout without losing the others."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

E2E = ("hf_peft", "hf_peft_compile", "hf_peft_compile_dynamic", "qaforge_cold", "qaforge_warm", "qaforge_eager")
# how each plain variant wraps the PEFT model: not at all, torch.compile as HF's Trainer does, or with every
# dimension symbolic from the first call (what a user tries once the default recompiles for each batch shape)
PLAIN_COMPILE = {"hf_peft": None, "hf_peft_compile": "default", "hf_peft_compile_dynamic": "dynamic"}


def run(args) -> dict:
    if args.variant == "prepare":
        from scripts.bench_train.workload import prepare
        return prepare(Path(args.work), args.model, args.data, args.exam, args.device)
    if args.variant in E2E:
        from scripts.bench_train import e2e

        files = json.loads(Path(args.files).read_text())
        progress = e2e.Progress(Path(args.progress) if args.progress else None)
        out_dir = Path(args.work) / "runs" / args.variant
        if args.variant.startswith("hf_peft"):
            return e2e.run_plain(files, args.device, args.max_steps, progress, PLAIN_COMPILE[args.variant],
                                 out_dir)
        return e2e.run_qaforge(files, args.device, args.max_steps, progress,
                               False if args.variant == "qaforge_eager" else None, out_dir)
    from scripts.bench_train.micro import VARIANTS, run_micro
    if args.variant not in VARIANTS and args.variant != "varlen_check":
        raise SystemExit(f"unknown variant {args.variant!r}")
    return run_micro(args.variant, args.steps, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant")
    parser.add_argument("--result", required=True, help="JSON file this variant's result is written to")
    parser.add_argument("--progress", help="JSON-lines file of progress events (read if the variant times out)")
    parser.add_argument("--work", default="/tmp/qaforge_bench_train")
    parser.add_argument("--files", help="the prepare step's JSON (model, train, exam)")
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--exam")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        result = run(args)
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - reported to the runner, which goes on with the next variant
        traceback.print_exc()
        result, status = {"error": f"{type(exc).__name__}: {exc}"[:800]}, "failed"
    result = {"status": status, "process_s": round(time.perf_counter() - started, 1), **result}
    Path(args.result).write_text(json.dumps(result, indent=1, default=str))
    sys.exit(0 if status == "ok" else 1)


if __name__ == "__main__":
    main()
