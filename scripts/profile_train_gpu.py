"""Where a qaforge training step spends its time on the GPU (device machine).

Builds T1 (16 x 512 synthetic, LoRA r 32 on all projections) exactly as scripts/bench_train.py,
warms up, then profiles a few steps with torch.profiler and prints: the step's wall time, the
GPU's busy time (sum of kernel times), and the top kernels. Busy << wall means launch/CPU bound.

Usage (device, from the repository root):  PYTHONUNBUFFERED=1 python3 -m scripts.profile_train_gpu [--variant layers|fused] [--kind synthetic|real]
"""

from __future__ import annotations

import argparse
import time

import torch

from scripts import bench_train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="graphs")
    parser.add_argument("--kind", default="synthetic")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    model, opt = bench_train.build("qaforge", variant=args.variant)
    batches = bench_train.make_batches(args.kind, 8 + args.steps)

    def step(samples):
        batch = bench_train.packed(samples, "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for samples in batches[:8]:
        step(samples)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.time()
        for samples in batches[8:]:
            step(samples)
        torch.cuda.synchronize()
        wall = (time.time() - start) / args.steps
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"[{args.variant}/{args.kind}] step wall {wall * 1e3:.1f} ms (profiled), GPU kernel time "
          f"{busy / 1e3 / args.steps:.1f} ms/step")
    print(events.table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=70))
    print("host side (where the CPU time goes):")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70))


if __name__ == "__main__":
    main()
