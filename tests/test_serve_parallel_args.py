"""`qaforge serve --engine vllm --tensor-parallel-size N --data-parallel-size M` reaches vLLM's engine
args; the native engine refuses N or M > 1 with a message that says what to do instead."""

from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from qaforge.paths import REPO_DIR
from qaforge.serve.backends import VllmEngine
from qaforge.serve.launcher import vllm_python
from qaforge.serve.settings import ServeSettings
from serve_helpers import NO_VLLM


def test_flags_and_env_reach_vllm_engine_kwargs():
    s = ServeSettings.from_env({"QAFORGE_DATA_PARALLEL_SIZE": "2"}, engine="vllm", model="m",
                               tensor_parallel_size=4)
    kwargs = VllmEngine("/models/m", s).engine_kwargs()
    assert kwargs["tensor_parallel_size"] == 4 and kwargs["data_parallel_size"] == 2
    assert s.to_env()["QAFORGE_TENSOR_PARALLEL_SIZE"] == "4"  # a child server gets them too
    default = VllmEngine("/models/m", ServeSettings(engine="vllm", model="m")).engine_kwargs()
    assert default["tensor_parallel_size"] == 1 and default["data_parallel_size"] == 1


@pytest.mark.parametrize("field", ["tensor_parallel_size", "data_parallel_size"])
def test_native_engine_refuses_parallelism_and_points_to_replicas(field):
    with pytest.raises(ValueError, match="native engine runs on one GPU") as info:
        ServeSettings(engine="native", model="m", **{field: 2})
    assert "--engine vllm" in str(info.value) and "load balancer" in str(info.value)
    assert "docs/serving.md" in str(info.value)
    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
        ServeSettings(engine="vllm", model="m", **{field: 0})


def test_cli_refuses_native_parallelism_as_bad_input():
    import typer

    from qaforge.serve.command import serve

    app = typer.Typer()
    app.command()(serve)
    result = CliRunner().invoke(app, ["--model", "m", "--engine", "native", "--tensor-parallel-size", "2"])
    assert result.exit_code == 2  # bad input, before any model loads
    assert "native engine runs on one GPU" in result.output


@pytest.mark.skipif(vllm_python() is None, reason=NO_VLLM)
def test_vllm_accepts_the_mapped_arg_names():
    # The field names must be vLLM's own: build AsyncEngineArgs in the vLLM interpreter.
    probe = ("import json; from qaforge.serve.settings import ServeSettings; "
             "from qaforge.serve.backends import VllmEngine; "
             "a = VllmEngine('/m', ServeSettings(engine='vllm', model='m', tensor_parallel_size=2, "
             "data_parallel_size=3)).engine_args(); "
             "print(json.dumps([a.tensor_parallel_size, a.data_parallel_size]))")
    out = subprocess.run([vllm_python(), "-c", probe], capture_output=True, text=True, timeout=300,
                         cwd=str(REPO_DIR))  # "-c" puts the checkout on sys.path
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [2, 3]
