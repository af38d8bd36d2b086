"""Server settings: one dataclass, filled from `qaforge serve` flags or `QAFORGE_*` environment variables.

Docker runs `uvicorn serve:app`, which passes no flags, so every setting has an env var:
the field name upper-cased with a `QAFORGE_` prefix (`max_tokens` -> `QAFORGE_MAX_TOKENS`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

ENV_PREFIX = "QAFORGE_"
ENGINES = ("native", "vllm")


@dataclass
class ServeSettings:
    model: str = ""                      # HF directory or a name resolve_model_path knows
    engine: str = "native"               # native | vllm
    served_model_name: str = ""          # name in /v1/models; default: the model directory's name
    device: str = "auto"                 # auto | cpu | cuda
    dtype: str = "auto"                  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    system_prompt: str | None = None     # None: qaforge.chat.DEFAULT_SYSTEM_PROMPT; "" disables it
    max_tokens: int = 384                # default answer budget for /predict and the OpenAI API
    temperature: float = 0.0             # /predict sampling (greedy: the grader wants stable answers)
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0      # default for /predict and the OpenAI API; 1 is off
    predict_thinking: bool = False       # /predict in Qwen3's thinking mode (answers: the content only)
    max_model_len: int = 512             # the course project's context: prompt + answer
    max_num_seqs: int = 256              # sequences the engine runs at once (the course project's vLLM: 4096)
    max_num_batched_tokens: int = 16384
    # Backpressure: sequences admitted (running + queued in the engine). Past it: 429 + Retry-After.
    max_pending: int = 8192
    max_batch: int = 4096                # longest /predict list or /v1/completions prompt list
    request_timeout: float = 600.0       # seconds per HTTP request; then abort + 504
    retry_after: int = 2                 # seconds, sent with 429/503
    warmup: bool = True
    warmup_max_tokens: int = 64
    warmup_file: str = ""                # default: qaforge/data/warmup_questions.json (packaged)
    exit_on_load_failure: bool = True    # a server that cannot load should die, not hang at 503
    # vLLM only (the course project's settings; CPU needs quantization="" and a small memory fraction)
    quantization: str = ""               # "fp8": FP8 weights, on both engines (the native one: engine/layers/fp8.py)
    gpu_memory_utilization: float = 0.95
    enable_prefix_caching: bool = True
    enforce_eager: bool = False          # False: CUDA graphs
    tensor_parallel_size: int = 1       # vLLM only: GPUs one model is split over
    data_parallel_size: int = 1         # vLLM only: model replicas, vLLM balances requests over them
    log_level: str = "info"
    # LoRA adapters served unmerged, vLLM's NAME=PATH: "a=/p,b=/q" (`--lora` repeatable); requests pick one by
    # `model`. /predict answers with the base unless predict_lora names one of them.
    lora: str = ""
    predict_lora: str = ""
    # Bearer key for /v1/* (and the grader routes with protect_grader); "" leaves the server open.
    # repr=False: a settings dump (logs, tracebacks) never shows it.
    api_key: str = field(default="", repr=False)
    protect_grader: bool = False         # GET / and POST /predict need the key too
    # Engine kwargs passed through unchanged; env: QAFORGE_ENGINE_ARGS='{"kv_cache_memory_gb": 1}'
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        for name in ("max_tokens", "max_model_len", "max_num_seqs", "max_pending", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens >= self.max_model_len:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be < max_model_len "
                             f"({self.max_model_len}) to leave room for the prompt")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be > 0 seconds")
        names = self.lora_modules
        if self.model and self.model_name in names:
            raise ValueError(f"--lora: adapter name {self.model_name!r} is the base model's served name")
        if self.predict_lora and self.predict_lora not in names:
            raise ValueError(f"--predict-lora {self.predict_lora!r} is not one of the --lora adapters "
                             f"({', '.join(names) or 'none given'})")
        self._validate_parallel()
        # Never quote the key: this message may end up in a log or on a terminal someone shares.
        if self.api_key and not (self.api_key.isascii() and self.api_key.isprintable()
                                 and not any(c.isspace() for c in self.api_key)):
            raise ValueError("api_key (--api-key / QAFORGE_API_KEY) must be printable ASCII "
                             "without spaces (it travels in an HTTP header)")
        if self.protect_grader and not self.api_key:
            raise ValueError("protect_grader (--protect-grader) needs an API key: "
                             "pass --api-key or set QAFORGE_API_KEY")

    def _validate_parallel(self) -> None:
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.engine == "native" and (self.tensor_parallel_size > 1 or self.data_parallel_size > 1):
            raise ValueError(
                f"the native engine runs on one GPU (got --tensor-parallel-size "
                f"{self.tensor_parallel_size}, --data-parallel-size {self.data_parallel_size}): use "
                f"--engine vllm for tensor or data parallelism, or run one native server per GPU "
                f"(CUDA_VISIBLE_DEVICES=N) behind a load balancer (docs/serving.md, 'More than one GPU')")

    @property
    def lora_modules(self) -> dict[str, str]:
        """--lora / QAFORGE_LORA parsed: adapter name -> absolute adapter directory, in the order given."""
        return parse_lora_modules(self.lora)

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return os.path.basename(os.path.normpath(self.model)) or "qaforge"

    def replace(self, **changes: Any) -> "ServeSettings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "ServeSettings":
        """Defaults, then `QAFORGE_*` variables, then explicit overrides (flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw, f.default)
        if env.get(ENV_PREFIX + "ENGINE_ARGS"):
            try:
                values["extra"] = json.loads(env[ENV_PREFIX + "ENGINE_ARGS"])
            except json.JSONDecodeError as exc:
                raise ValueError(f"{ENV_PREFIX}ENGINE_ARGS is not valid JSON: {exc}") from None
            if not isinstance(values["extra"], dict):
                raise ValueError(f"{ENV_PREFIX}ENGINE_ARGS must be a JSON object")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The inverse of from_env: what a child process needs to rebuild these settings."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "extra":
                if value:
                    out[ENV_PREFIX + "ENGINE_ARGS"] = json.dumps(value)
                continue
            out[ENV_PREFIX + f.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def parse_lora_modules(spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        name, sep, path = (x.strip() for x in item.partition("="))
        if not sep or not name or not path:
            raise ValueError(f"--lora / {ENV_PREFIX}LORA: {item!r} is not NAME=PATH")
        if any(c.isspace() for c in name):
            raise ValueError(f"--lora / {ENV_PREFIX}LORA: adapter name {name!r} contains whitespace")
        if name in out:
            raise ValueError(f"--lora / {ENV_PREFIX}LORA: adapter name {name!r} is given twice")
        out[name] = os.path.abspath(os.path.expanduser(path))
    return out


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.strip().lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid "
                         f"{type(default).__name__}") from None
    return raw
