"""Engine configuration: one dataclass, validated in __post_init__."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..modeling import model_family, pick_device, pick_dtype

GEMV_MAX_ROWS = 4  # layers/gemv.py: above this many rows a weight tile is re-used enough for cuBLAS's tiles to win


@dataclass
class EngineConfig:
    model: str
    device: str = "auto"                  # "cpu", "cuda", "cuda:N" or "auto"
    dtype: str = "auto"                   # auto: bfloat16 on CUDA, float32 on CPU
    max_model_len: int = 2048             # prompt + output tokens per sequence
    max_num_seqs: int = 256               # sequences in one batch (decode batch size cap)
    max_num_batched_tokens: int = 16384   # tokens computed in one step (decodes + prompt chunks)
    enable_chunked_prefill: bool = False  # split long prompts over steps, mixed with decodes; off: slower on the H200 (docs/benchmarks.md)
    block_size: int = 16                  # tokens per KV block (prefix-cache granularity)
    gpu_memory_utilization: float = 0.90  # share of GPU memory the engine may use in total
    num_kvcache_blocks: int | None = None  # override the KV cache size (tests force preemption with it)
    kv_cache_memory_gb: float = 2.0       # KV budget on CPU when num_kvcache_blocks is None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False           # no CUDA graphs
    async_scheduling: bool | None = None  # enqueue decode step k+1 before reading step k's ids (engine/overlap.py);
                                          # None: on for CUDA (W4 +17 %, G193 +18 % on the H200), off on CPU
    cuda_graph_max_bs: int = 512          # largest decode batch captured in a CUDA graph
    attention_backend: str = "auto"       # auto (triton on CUDA with bf16/fp16, else torch) | torch | triton
    seed: int = 0
    kv_cache_dtype: str = "auto"          # auto (the model dtype) | fp8: float8 e4m3 K/V, half the bytes of bf16
    quantization: str | None = None       # None | "fp8": linear weights in float8 e4m3, per-output-channel scales
    gemv_max_rows: int = 0                # Triton GEMV (layers/gemv.py) for layer linears of steps with <= this many
                                          # rows (<= GEMV_MAX_ROWS); 0: cuBLAS everywhere (not yet measured on a GPU)
    hf_config: dict = field(default_factory=dict, repr=False)
    eos_token_ids: tuple[int, ...] = ()
    family: str = field(default="", init=False)  # "qwen3" | "qwen2", from config.json

    def __post_init__(self) -> None:
        path = Path(self.model)
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {self.model!r} has no config.json (the native engine needs a HF "
                             "model directory)")
        self.hf_config = json.loads((path / "config.json").read_text())
        self.family = check_architecture(self.hf_config)
        self.device = pick_device(self.device)
        self.dtype = pick_dtype(self.dtype, self.device)
        if self.async_scheduling is None:  # the CPU tests run both paths explicitly (tests/test_engine_overlap.py)
            self.async_scheduling = self.device.startswith("cuda")
        for name in ("enable_chunked_prefill", "async_scheduling"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError("attention_backend must be auto, torch or triton")
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.block_size % 8 != 0 and self.block_size != 1:
            raise ValueError("block_size must be 1 or a multiple of 8")
        max_pos = int(self.hf_config.get("max_position_embeddings", self.max_model_len))
        if self.max_model_len > max_pos:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's max_position_embeddings {max_pos}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            # a whole prompt must fit one prefill step
            self.max_num_batched_tokens = self.max_model_len
        if not 0.05 <= self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in [0.05, 1]")
        if self.num_kvcache_blocks is not None:
            need = -(-self.max_model_len // self.block_size)
            if self.num_kvcache_blocks < need:
                raise ValueError(f"num_kvcache_blocks must hold one full sequence ({need} blocks of {self.block_size})")
        _check_fp8_options(self)
        if self.cuda_graph_max_bs < 1:
            raise ValueError("cuda_graph_max_bs must be >= 1")
        if not 0 <= int(self.gemv_max_rows) <= GEMV_MAX_ROWS:
            raise ValueError(f"gemv_max_rows must be in [0, {GEMV_MAX_ROWS}] (0: off), got {self.gemv_max_rows!r}")
        self.eos_token_ids = tuple(_eos_ids(path, self.hf_config))

    @property
    def max_blocks_per_seq(self) -> int:
        """Block-table width, rounded up to a multiple of 16 (one Triton specialization for every batch)."""
        n = -(-self.max_model_len // self.block_size)
        return (n + 15) // 16 * 16


KV_CACHE_DTYPES = {"auto": "auto", "fp8": "fp8", "fp8_e4m3": "fp8"}  # vLLM's spellings of the same thing
QUANTIZATIONS = ("fp8",)


def _check_fp8_options(c: EngineConfig) -> None:
    kv = str(c.kv_cache_dtype).lower()
    if kv not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {sorted(KV_CACHE_DTYPES)}, got {c.kv_cache_dtype!r}")
    c.kv_cache_dtype = KV_CACHE_DTYPES[kv]
    q = (c.quantization or "").lower() or None  # "" means off, as serve's setting spells it
    if q is not None and q not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)} or None, got {c.quantization!r}")
    c.quantization = q


def check_architecture(hf: dict) -> str:
    """The model family ("qwen3" | "qwen2") of a config.json the engine can run exactly; a ValueError naming
    what it cannot: another architecture, a RoPE scaling type, sliding-window layers."""
    family = model_family(hf)  # names the architecture and the supported ones
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"config.json: rope type {rope_type!r} is not supported by the native engine, which "
                         "implements the default RoPE only; serve this model with --engine vllm")
    _check_full_attention(hf)
    return family


def _check_full_attention(hf: dict) -> None:
    """Sliding-window layers would silently attend too far with the engine's full causal attention: refuse
    them. A layer slides as in transformers and vLLM: `layer_types` when config.json has it, else
    use_sliding_window with a window and a layer index >= max_window_layers."""
    types = hf.get("layer_types")
    if types is None:
        slide = bool(hf.get("use_sliding_window")) and hf.get("sliding_window") is not None
        first = int(hf.get("max_window_layers", 28))
        types = ["sliding_attention" if slide and i >= first else "full_attention"
                 for i in range(int(hf["num_hidden_layers"]))]
    other = sorted({t for t in types if t != "full_attention"})
    if other:
        n = sum(t != "full_attention" for t in types)
        raise ValueError(f"config.json asks for {', '.join(other)} in {n} of {len(types)} layers "
                         f"(use_sliding_window={hf.get('use_sliding_window')}, sliding_window="
                         f"{hf.get('sliding_window')}, max_window_layers={hf.get('max_window_layers')}): the native "
                         "engine implements full attention only; serve this model with --engine vllm")


def _eos_ids(path: Path, hf: dict) -> list[int]:
    ids: list[int] = []
    for src in (path / "generation_config.json", None):
        if src is None:
            val = hf.get("eos_token_id")
        elif src.is_file():
            val = json.loads(src.read_text()).get("eos_token_id")
        else:
            continue
        if val is None:
            continue
        for v in (val if isinstance(val, list) else [val]):
            if int(v) not in ids:
                ids.append(int(v))
    return ids

