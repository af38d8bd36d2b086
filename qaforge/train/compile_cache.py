"""A torch.compile cache that outlives the process, so a second run of the same model skips most compilation.

Inductor already caches compiled FX graphs and AOT-autograd graphs on disk, but by default under
/tmp/torchinductor_<user>, which many machines (and every container restart) wipe. A run here points
Inductor's cache (and Triton's, which Inductor keeps below it) at a stable folder

    ~/.cache/qaforge/compile/<torch version>-<model/LoRA shape key>/      ($XDG_CACHE_HOME respected)

and also stores torch's portable compile-artifact bundle (`torch.compiler.save_cache_artifacts`) there,
loaded back before the first compile of the next run: copying the folder to another machine with the
same torch and GPU carries the compilation along. Dynamo's own tracing is not cached by torch, so a
warm run still spends some seconds; what it skips is Inductor's code generation and Triton's autotuning.

Where the folder comes from (first that applies): `config.compile_cache` when TrainConfig has that field,
`$QAFORGE_COMPILE_CACHE` (what `qaforge train --compile-cache DIR` sets; `off` disables it), a
`$TORCHINDUCTOR_CACHE_DIR` the user set (respected as is), else the default above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("qaforge.train")
ENV_VAR = "QAFORGE_COMPILE_CACHE"
ARTIFACTS = "compile_artifacts.bin"
MARKER = "qaforge_compile_cache.json"
_SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")


@dataclass
class CompileCache:
    """Where this run's compile cache lives and what was in it when the run began."""
    directory: Path | None  # None: caching left to torch's defaults (disabled by the user)
    source: str  # which rule chose the folder
    warm: bool = False  # an earlier run with the same key finished and left its marker
    loaded_artifacts: bool = False
    previous: dict[str, Any] = field(default_factory=dict)  # the marker of the earlier run

    def to_dict(self) -> dict[str, Any]:
        return {"dir": str(self.directory) if self.directory else None, "source": self.source, "warm": self.warm,
                "loaded_artifacts": self.loaded_artifacts,
                "previous_first_step_s": self.previous.get("first_step_s")}


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qaforge" / "compile"


def cache_key(hf_config: Any, extra: dict[str, Any]) -> str:
    """torch version + the shapes that decide what gets compiled: same key, same graphs."""
    import torch

    shapes = {name: getattr(hf_config, name, None) for name in _SHAPE_FIELDS}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    blob = json.dumps({"shapes": shapes, "extra": extra, "device": device}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"torch{torch.__version__.replace('+', '_')}-{shapes['model_type'] or 'model'}-{digest}"


def resolve(explicit: str | None, key: str) -> CompileCache:
    """The folder for this run by the rules in the module docstring; nothing is created or changed yet."""
    choice = explicit if explicit is not None else os.environ.get(ENV_VAR)
    if choice is not None and choice.strip().lower() in ("off", "none", "false", "0", ""):
        return CompileCache(None, "disabled")
    if choice:
        return CompileCache(Path(choice).expanduser() / key, "compile_cache" if explicit else ENV_VAR)
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return CompileCache(Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]), "TORCHINDUCTOR_CACHE_DIR")
    return CompileCache(default_root() / key, "default")


def peek(cache: CompileCache) -> CompileCache:
    """Fill `warm`/`previous` from the folder's marker (read-only: the compile decision needs it first)."""
    marker = cache.directory / MARKER if cache.directory else None
    if marker is not None and marker.is_file():
        try:
            cache.previous = json.loads(marker.read_text())
            cache.warm = True
        except (OSError, ValueError):
            log.warning("compile cache marker %s is unreadable; treating the cache as cold", marker)
    return cache


def activate(cache: CompileCache) -> CompileCache:
    """Point Inductor at the folder (before anything compiles) and load the artifact bundle if present."""
    if cache.directory is None:
        return cache
    cache.directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache.directory)
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    try:
        import torch._functorch.config as functorch_config
        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):
        pass
    bundle = cache.directory / ARTIFACTS
    if bundle.is_file() and hasattr(torch.compiler, "load_cache_artifacts"):
        try:
            torch.compiler.load_cache_artifacts(bundle.read_bytes())
            cache.loaded_artifacts = True
        except Exception as exc:  # noqa: BLE001 - a stale bundle (other torch) must only cost the speed-up
            log.warning("compile cache %s: could not load %s (%s); compiling from scratch", cache.directory,
                        ARTIFACTS, exc)
    log.info("compile cache: %s (%s, %s)", cache.directory, cache.source, "warm" if cache.warm else "cold")
    return cache


# torch's counters that say whether this process compiled or loaded from the cache (torch._dynamo.utils.counters)
_COUNTERS = {"inductor": ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass"),
             "aot_autograd": ("autograd_cache_hit", "autograd_cache_miss", "autograd_cache_bypass",
                              "autograd_cache_saved"),
             "frames": ("total", "ok"), "stats": ("unique_graphs",)}
_PHASES = 10  # the slowest compile phases reported (torch._dynamo.utils.compilation_time_metrics)


def stats() -> dict[str, Any]:
    """What this process's torch.compile did so far: cache hits/misses, graphs, recompiles, slowest phases.

    `recompiles` counts guard failures (a compiled frame compiled again for new inputs); `phases_s` sums
    torch's own timers, e.g. `aot_trace_joint_graph` (AOTAutograd work a cache hit skips) or
    `_compile.compile_inner` (Dynamo's tracing, which no cache of torch skips)."""
    try:
        from torch._dynamo import utils as dynamo_utils
    except ImportError:
        return {}
    out: dict[str, Any] = {}
    for group, names in _COUNTERS.items():
        values = dynamo_utils.counters.get(group, {})
        out.update({f"{group}.{name}": int(values.get(name, 0)) for name in names if values.get(name, 0)})
    out["recompiles"] = sum(len(v) for v in dynamo_utils.guard_failures.values())
    metrics = getattr(dynamo_utils, "compilation_time_metrics", {})
    phases = sorted(((name, sum(v)) for name, v in metrics.items()), key=lambda kv: -kv[1])[:_PHASES]
    out["phases_s"] = {name: round(seconds, 2) for name, seconds in phases}
    return out


def finish(cache: CompileCache | None, timing: dict[str, Any]) -> None:
    """After a run: save the artifact bundle and the marker that makes the next run count as warm."""
    if cache is None or cache.directory is None or not timing:
        return
    import torch

    try:
        saved = torch.compiler.save_cache_artifacts() if hasattr(torch.compiler, "save_cache_artifacts") else None
        if saved:
            (cache.directory / ARTIFACTS).write_bytes(saved[0])
        (cache.directory / MARKER).write_text(json.dumps(
            {"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
             "first_step_s": timing.get("first_step_s (includes compilation)"),
             "median_step_ms": timing.get("median_step_ms"), "compile_stats": stats()}, indent=1))
    except OSError as exc:
        log.warning("compile cache %s: not saved (%s)", cache.directory, exc)
