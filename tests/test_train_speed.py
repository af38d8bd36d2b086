"""Issue 13 "training at real lengths": one compiled graph for every row length, a compile cache that a fresh
process hits, no per-step host work the GPU waits for, and the batch-shape count of fast_v7's batching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qaforge.train import fast, fused_layer
from qaforge.train.data import SFTCollator

REPO = Path(__file__).resolve().parents[1]


def test_block_causal_sdpa_equals_per_sample_sdpa():
    """The compiled CPU attention (one masked SDPA) is the per-sample reference, GQA included."""
    torch.manual_seed(0)
    lengths = [5, 1, 9, 3]
    q, k, v = torch.randn(18, 4, 8), torch.randn(18, 2, 8), torch.randn(18, 2, 8)
    cu = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    ref = fast._segment_sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], cu,
                             0.3)[0].transpose(0, 1)
    got = fast._block_causal_sdpa(q, k, v, cu, 0.3)
    assert sum(lengths) == got.shape[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_max_len_given_to_the_compiled_layer_is_a_bound():
    x, cos, sin = torch.zeros(10, 4), torch.zeros(10, 2), torch.zeros(10, 2)
    cu = torch.tensor([0, 10], dtype=torch.int32)
    assert fused_layer._mark_token_dims(x, cos, sin, cu, 1) == fused_layer.MAX_LEN_BOUND
    assert fused_layer._mark_token_dims(x, cos, sin, cu, fused_layer.MAX_LEN_BOUND) == fused_layer.MAX_LEN_BOUND
    assert fused_layer._mark_token_dims(x, cos, sin, cu, fused_layer.MAX_LEN_BOUND + 1) == 2 * fused_layer.MAX_LEN_BOUND


def test_num_items_in_batch_is_a_host_int_equal_to_trainers_count():
    from qaforge.train.loop import QaforgeTrainer

    collate = SFTCollator(0, packing=True, label_positions=True)
    batches = [collate([{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]},
                        {"input_ids": [5, 6, 7], "labels": [-100, 6, -100]}]),
               collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}])]
    trainer = object.__new__(QaforgeTrainer)  # the host path reads nothing from the instance
    got = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    expected = sum(int(b["labels"][..., 1:].ne(-100).sum()) for b in batches)
    assert isinstance(got, int) and got == expected == 5


def test_batches_are_copied_to_the_gpu_without_blocking(tmp_path):
    from qaforge.train.loop import training_arguments
    from qaforge.train.profiles import load_profile

    config = load_profile("fast_v7", device="cpu")
    cpu_args = training_arguments(config, tmp_path, "cpu", torch.float32, 10, has_eval=False)
    assert cpu_args.accelerator_config.non_blocking is False


def test_length_grouping_keeps_every_row_and_cuts_padding_but_not_packed_shapes():
    """scripts/bench_train/shapes.py's count on a seed-like length distribution: grouping trains every row
    once per epoch and removes most padding of padded rows, but spreads packed row lengths wider."""
    import random

    from scripts.bench_train.shapes import count
    from scripts.bench_train.workload import sample_lengths

    lengths = sample_lengths(800, random.Random(0))
    plain, grouped = count(lengths, grouped=False), count(lengths, grouped=True)
    assert plain["every_row_once_per_epoch"] and grouped["every_row_once_per_epoch"]
    assert plain["steps"] == grouped["steps"] == 2 * 50
    assert grouped["padded_padding_share"] < plain["padded_padding_share"] / 4
    assert grouped["packed_distinct_pad512"] > plain["packed_distinct_pad512"]


_PROBE = REPO / "tests" / "train_compile_probe.py"


@pytest.mark.slow
def test_a_fresh_process_compiles_the_fused_layer_from_the_cache(tmp_path):
    """Cold process: compiles once for three row lengths. Warm process (same folder): every Inductor and
    AOTAutograd lookup hits, nothing recompiles."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, str(_PROBE), str(tmp_path / "cache")], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["recompiles"] == 0 and cold.get("inductor.fxgraph_cache_miss", 0) > 0
    assert warm.get("inductor.fxgraph_cache_hit", 0) > 0 and warm.get("inductor.fxgraph_cache_miss", 0) == 0
    assert warm.get("aot_autograd.autograd_cache_hit", 0) > 0
    assert warm.get("aot_autograd.autograd_cache_miss", 0) == 0 and warm["recompiles"] == 0


def test_bench_reports_distinct_shapes_and_cache_hits(tmp_path):
    from scripts.bench_train.e2e import Progress
    from scripts.bench_train.runner import cache_columns, table

    progress = Progress(tmp_path / "p.jsonl")
    for tokens, shape in ((300, (16, 40)), (320, (16, 40)), (280, (16, 33))):
        progress.step(tokens, shape)
    assert progress.summary()["distinct_shapes"] == 2
    packed = Progress(None)
    for tokens in (300, 320, 300):
        packed.step(tokens)  # a packed row's shape is its token count
    assert packed.summary()["distinct_shapes"] == 2
    stats = {"inductor.fxgraph_cache_hit": 10, "aot_autograd.autograd_cache_hit": 6,
             "aot_autograd.autograd_cache_miss": 1, "recompiles": 2}
    assert cache_columns(stats) == {"cache_fx_aot": "10/0 6/1", "recompiles": 2}
    rows = table({"hf_peft": {"status": "ok", "wall_s": 10.0}, "qaforge_warm": {"status": "ok", "wall_s": 5.0,
                                                                                 "compile_stats": stats}})
    assert rows[1]["cache_fx_aot"] == "10/0 6/1" and rows[1]["hf_peft_wall_over_this"] == 2.0
    assert rows[0].get("cache_fx_aot") is None
