"""Training profiles: the `TrainConfig` dataclass, YAML loading, overrides and `TRAIN_PROFILE`.

A profile is a YAML file in `qaforge/profiles/` (or any path). A profile may name a `base:` profile and
override some of its keys, so `fast_v7_final` is `fast_v7` plus `train_on_exam: true`.
Resolution order (later wins): dataclass defaults -> base profile chain -> profile -> overrides.
Only stdlib + PyYAML here: the CLI imports this module before any heavy library.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from qaforge.chat import DEFAULT_SYSTEM_PROMPT
from qaforge.modeling import DTYPES
from qaforge.paths import PROFILES_DIR

PROFILE_ENV_VAR = "TRAIN_PROFILE"
DEFAULT_PROFILE = "fast_v7"
ALL_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts")
_DTYPES = ("auto", *DTYPES)  # resolved by qaforge.modeling.pick_dtype
_DEVICES = ("auto", "cpu", "cuda")
_ATTENTION = ("auto", "varlen", "sdpa", "eager", "flash_attention_2")


def _steps_range(text: str) -> tuple[int, int] | None:
    """'A-B' -> (A, B) with 1 <= A < B; None when the text is not that (a dash: YAML reads 40:46 as a number)."""
    a, sep, b = str(text).partition("-")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit():
        return None
    lo, hi = int(a), int(b)
    return (lo, hi) if 1 <= lo < hi else None


@dataclass
class TrainConfig:
    """Everything one LoRA SFT run depends on. Saved as `train_config.json` with every run."""

    profile: str = "custom"
    model: str = "Qwen/Qwen3-0.6B"
    data: str | None = None  # train split, alpaca jsonl (instruction/input/output[/difficulty])
    exam: str | None = None  # held-out exam split: eval_loss per epoch and ROUGE-L at the end
    output_dir: str | None = None  # default: outputs/<run_name>
    run_name: str | None = None  # default: <profile>_<model basename>
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    # sequence handling
    max_seq_len: int = 512
    packing: bool = True  # padding-free: one row per micro-batch, positions restart per sample

    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    # optimisation
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs (tests, smoke runs)
    micro_batch_size: int = 16  # samples per forward pass per process
    grad_accum_steps: int = 1  # effective batch = micro_batch_size * grad_accum_steps * world size
    seed: int = 42

    # data splits
    train_on_exam: bool = False  # fast_v7_final: the exam split is trained on -> results contaminated
    val_fraction: float = 0.05  # eval_loss split carved from train when there is no exam split

    # speed
    fused_loss: bool = True  # chunked linear + cross-entropy on labelled tokens only (no full logits)
    loss_chunk_size: int = 4096  # tokens per chunk of the fused loss
    compile: bool | None = None  # None: torch.compile the decoder layers on CUDA only
    fused_layers: bool = True  # Qwen3 layers as one fused function on packed rows (qaforge.train.fused_layer)
    # replay the compiled fused layers as CUDA graphs (CUDA + compile only). None = auto: only for runs
    # of at least CUDA_GRAPHS_MIN_STEPS forward passes, where the steps they save outweigh their one-off cost
    cuda_graphs: bool | None = None
    # packed rows are padded to a multiple of this many tokens when CUDA graphs are on: each new row
    # length costs a CUDA-graph recording, each padded token compute (512 vs 1024: docs/benchmarks.md)
    pad_to_multiple_of: int = 512
    attention: str = "auto"  # auto: varlen when packing, else sdpa
    device: str = "auto"  # auto: qaforge.modeling.pick_device (CUDA when a GPU is visible)
    dtype: str = "auto"  # auto: qaforge.modeling.pick_dtype (bfloat16 on CUDA, float32 on CPU)
    dataloader_workers: int = 0

    # outputs and evaluation
    logging_steps: int = 10
    profile_steps: str | None = None  # "A-B": torch.profiler over optimizer steps A..B-1 -> <output_dir>/step_profile.*
    save_steps: int | None = None  # None: a checkpoint at the end of every epoch
    save_total_limit: int | None = 2
    tensorboard: bool = True
    merge: bool = True
    rouge_eval: bool = True  # generation-based ROUGE-L on the exam split after training
    rouge_max_samples: int | None = None
    eval_compare_base: bool = False  # also score the untuned base model (doubles generation time)
    max_new_tokens: int = 384
    repetition_penalty: float = 1.0  # decoding of that evaluation (1.0: off); a recipe's setting, as max_new_tokens

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        need(self.max_seq_len >= 32, f"max_seq_len must be >= 32, got {self.max_seq_len}")
        need(self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}")
        need(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        need(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        self.target_modules = list(self.target_modules)
        need(bool(self.target_modules), "target_modules must not be empty")
        unknown = sorted(set(self.target_modules) - set(ALL_LORA_TARGETS))
        need(not unknown, f"unknown target_modules {unknown}; Qwen3 has {list(ALL_LORA_TARGETS)}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.lr_scheduler in _SCHEDULERS, f"lr_scheduler must be one of {_SCHEDULERS}")
        need(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.num_epochs > 0 or self.max_steps > 0, "num_epochs or max_steps must be > 0")
        need(self.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        need(self.grad_accum_steps >= 1, f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        need(0.0 <= self.val_fraction < 0.5, f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        need(self.pad_to_multiple_of >= 1, f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        need(self.loss_chunk_size >= 64, f"loss_chunk_size must be >= 64, got {self.loss_chunk_size}")
        need(self.attention in _ATTENTION, f"attention must be one of {_ATTENTION}, got {self.attention!r}")
        need(self.device in _DEVICES, f"device must be one of {_DEVICES}, got {self.device!r}")
        need(self.dtype in _DTYPES, f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        need(self.logging_steps >= 1, "logging_steps must be >= 1")
        need(self.profile_steps is None or _steps_range(self.profile_steps) is not None,
             f"profile_steps must be 'A-B' with 1 <= A < B, got {self.profile_steps!r}")
        need(self.save_steps is None or self.save_steps >= 1, "save_steps must be >= 1 or null")
        need(self.max_new_tokens >= 1, "max_new_tokens must be >= 1")
        need(0.0 < self.repetition_penalty <= 2.0, f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        need(self.attention != "varlen" or self.packing, "attention 'varlen' needs packing: true")

    @property
    def profile_window(self) -> tuple[int, int] | None:
        """profile_steps as (first, last) optimizer steps, or None when no profile was asked for."""
        return _steps_range(self.profile_steps) if self.profile_steps else None

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step on one process (times the world size under DDP)."""
        return self.micro_batch_size * self.grad_accum_steps

    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        return f"{self.profile}_{Path(str(self.model).rstrip('/')).name}".replace(" ", "_")

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("outputs") / self.resolved_run_name()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def profile_names(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))


def profile_description(path: Path) -> str:
    """One line about a profile: its leading `#` comment, else the first sentence of its `description:`."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    comments = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("#").strip())
    if any(comments):
        return " ".join(c for c in comments if c)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return ""
    flat = " ".join(str(raw.get("description") or "").split()) if isinstance(raw, dict) else ""
    first, dot, _ = flat.partition(". ")
    return first + dot.strip()


def list_profiles(profiles_dir: Path = PROFILES_DIR) -> list[tuple[str, str]]:
    """(name, one-line description) of every profile in the folder, sorted by name."""
    return [(name, profile_description(Path(profiles_dir) / f"{name}.yaml")) for name in profile_names(profiles_dir)]


def _profile_path(name: str, profiles_dir: Path, near: Path | None = None) -> Path:
    """A YAML path as given, else a name in `profiles_dir`, else (for a `base:`) a YAML beside the profile `near`."""
    candidate = Path(name).expanduser()
    if candidate.suffix in (".yaml", ".yml") or os.sep in name or candidate.is_file():
        if near is not None and not candidate.is_absolute() and (near.parent / candidate).exists():
            return near.parent / candidate
        if not candidate.is_file():
            raise FileNotFoundError(f"profile file not found: {candidate} (profile names: "
                                    f"{', '.join(profile_names(profiles_dir))}, or a path to a YAML file)")
        return candidate
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.exists() and near is not None and (near.parent / f"{name}.yaml").exists():
        return near.parent / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown training profile {name!r}; available: {', '.join(profile_names(profiles_dir))} "
                         f"(`qaforge profiles` describes them), or a path to a YAML file")
    return path


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or exc
        raise ValueError(f"profile {where}: not valid YAML ({problem})") from None


def read_profile_yaml(name: str, profiles_dir: Path = PROFILES_DIR, _seen: tuple = ()) -> dict[str, Any]:
    """The merged key/value mapping of a profile and its `base:` chain (types checked, ranges not yet)."""
    path = _profile_path(name, profiles_dir, near=_seen[-1] if _seen else None)
    if path.resolve() in _seen:
        raise ValueError(f"profile {name!r}: circular 'base:' chain {[p.name for p in _seen]}")
    raw = _load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"profile {path}: expected a mapping at the top level, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    base = raw.pop("base", None)
    if base:
        values.update(read_profile_yaml(str(base), profiles_dir, _seen + (path.resolve(),)))
    raw.pop("description", None)  # documentation only
    unknown = sorted(set(raw) - set(field_names()))
    if unknown:
        raise ValueError(f"profile {path}: unknown keys {unknown}; valid keys: {field_names()}")
    check_types(raw, f"profile {path}")
    values.update(raw)
    values["profile"] = path.stem
    return values


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),),
          "list[str]": (list, str)}


def check_types(values: dict[str, Any], source: str) -> None:
    """A wrong type (`lora_r: eight`) is a clear error naming the source, not a TypeError deep in a check."""
    declared = {f.name: str(f.type) for f in fields(TrainConfig)}
    for key, value in values.items():
        if key not in declared:
            continue
        allowed = tuple(t for part in declared[key].split("|") for t in _TYPES.get(part.strip(), (object,)))
        bad_bool = isinstance(value, bool) and bool not in allowed  # YAML's yes/no is not a number
        if bad_bool or not isinstance(value, allowed):
            raise ValueError(f"{source}: {key} must be {declared[key]}, got {value!r}")


def load_profile(name: str | None = None, profiles_dir: Path = PROFILES_DIR, **overrides: Any) -> TrainConfig:
    """Load a profile by name (or YAML path) and apply overrides; `None` values do not override.

    With no name, `$TRAIN_PROFILE` is used, else `fast_v7` (the best profile that keeps the exam held out).
    """
    name = name or os.environ.get(PROFILE_ENV_VAR) or DEFAULT_PROFILE
    values = read_profile_yaml(name, profiles_dir)
    unknown = sorted(set(overrides) - set(field_names()))
    if unknown:
        raise ValueError(f"unknown override(s) {unknown}; valid keys: {field_names()}")
    given = {k: v for k, v in overrides.items() if v is not None}
    check_types(given, "override")
    values.update(given)
    return TrainConfig(**values)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with `to_dict()` (e.g. from train_config.json)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})
