"""Data-parallel training on CPU (gloo): 2 processes train the 1-process model on the same global batch, and a
checkpoint written by one process count resumes on the other.

Every run is a real launch (`torchrun -m qaforge.train`, or plain `python -m qaforge.train` for one process) on
the random 2-layer Qwen3 of train_helpers, with LoRA dropout 0 (dropout masks are drawn per process, so with
dropout the two runs would differ by design) and the fused layers eager (compile is off on CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import qa_files, random_model_dir  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups are tested on Linux")
GLOBAL_BATCH = 8
MAX_STEPS = 4
_PORTS = iter(range(29531, 29600))


def launch(procs: int, model_dir: Path, qa: tuple[Path, Path], out: Path, *extra: str) -> dict:
    """One training launch with `procs` processes and a global batch of GLOBAL_BATCH; its eval_results.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
              "--master_port", str(next(_PORTS))] if procs > 1 else [sys.executable]
    cmd = [*runner, "-m", "qaforge.train", "--profile", "tiny", "--model", str(model_dir), "--data", str(qa[0]),
           "--exam", str(qa[1]), "--output-dir", str(out), "--max-steps", str(MAX_STEPS),
           "--micro-batch-size", str(GLOBAL_BATCH // procs), "--no-rouge", "--device", "cpu", "--lr", "5e-3",
           "--lora-r", "8", "--lora-alpha", "16", "--set", "tensorboard=false", "--set", "max_seq_len=160",
           "--set", "logging_steps=1", "--set", "save_steps=2", "--set", "merge=false", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"
    return json.loads((out / "eval_results.json").read_text())


def losses(results: dict) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in results["train"]["loss_history"]}


@pytest.fixture(scope="module")
def one_and_two(random_model_dir, qa_files, tmp_path_factory):  # noqa: F811
    base = tmp_path_factory.mktemp("dist")
    return (base, launch(1, random_model_dir, qa_files, base / "p1"),
            launch(2, random_model_dir, qa_files, base / "p2"))


def test_two_processes_give_the_one_process_loss(one_and_two):
    _, single, double = one_and_two
    assert single["world_size"] == 1 and double["world_size"] == 2
    assert single["train"]["global_step"] == double["train"]["global_step"] == MAX_STEPS
    one, two = losses(single), losses(double)
    assert sorted(one) == sorted(two) == list(range(1, MAX_STEPS + 1))
    for step in one:  # same global batch, same samples: equal up to fp32 summation order
        assert two[step] == pytest.approx(one[step], rel=2e-4), (step, one, two)
    assert one[MAX_STEPS] < one[1]  # and it trained
    # the tokens each process saw add up to the one-process count
    assert double["train"]["tokens_seen"] == single["train"]["tokens_seen"]


def test_speed_report_is_in_the_results(one_and_two):
    _, single, _ = one_and_two
    speed = single["speed"]
    assert speed["time_split"]["steps"] == MAX_STEPS and speed["time_split"]["compile_s"] >= 0
    assert single["fast_path"]["compile"] is False and "compile_paid_off" not in speed
    assert single["fast_path"]["fallback"] is None and single["fast_path"]["fused_layers"] == 2


@pytest.mark.parametrize("written_by,resumed_by", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_checkpoint_resumes_on_another_process_count(one_and_two, random_model_dir, qa_files,  # noqa: F811
                                                     written_by, resumed_by):
    base, single, double = one_and_two
    source = base / f"p{written_by}"
    out = base / f"resume_{written_by}_to_{resumed_by}"
    resumed = launch(resumed_by, random_model_dir, qa_files, out, "--resume-from", str(source / "checkpoint-2"))
    assert resumed["train"]["global_step"] == MAX_STEPS and resumed["world_size"] == resumed_by
    reference = losses(double if written_by == 2 else single)
    after = losses(resumed)
    for step in (3, 4):  # the steps after the checkpoint: same batches, same weights, same optimizer state
        assert after[step] == pytest.approx(reference[step], rel=2e-4), (step, reference, after)
