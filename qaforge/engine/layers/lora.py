"""LoRA adapters applied unmerged, several per batch: `y += scale * B[a] @ (A[a] @ x)` for the rows of adapter a.

An adapter is a PEFT directory as `qaforge train` (or any PEFT LoRA run) writes it: adapter_config.json +
adapter_model.safetensors. Loading checks it against the base model's config.json (target modules, layer
count, every A/B shape) and refuses anything it could not apply exactly (DoRA, trained biases, modules_to_save,
per-module rank/alpha patterns), naming the adapter and the file.

The engine fuses q/k/v and gate/up into one matmul each, so an adapter's A matrices of a fused group are
stacked along the rank (A_qkv = [A_q; A_k; A_v]) and its B matrices placed block-diagonally: one pair of
small matmuls per group gives exactly the three per-module updates. Adapters are stacked along a first
dimension ([n_adapters, rank, in] / [n_adapters, out, rank], ranks zero-padded to the largest), with each
adapter's scale folded into its B in fp32 before the cast to the model dtype.

Per batch (`LoraWeights.batch`), every distinct adapter gets a 0/1 mask over the batch's tokens; the update
of adapter a is computed for the whole batch and masked, so base-model rows get an exact 0 and no host sync
or gather is needed. A batch with no adapter row has no LoraBatch at all: zero cost.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

SUPPORTED_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# the engine's fused projections, in the order their outputs are concatenated (engine/models/qwen.py)
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
          "down": ("down_proj",)}
GROUP_OF = {m: g for g, mods in GROUPS.items() for m in mods}
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
# PEFT's saved names drop the adapter name (".lora_A.weight"); a raw state dict keeps it (".lora_A.default.weight")
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+?)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


class LoraError(ValueError):
    """An adapter that cannot be served on this base model; the message names the adapter and the file."""


def module_shapes(hf_config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every LoRA-able projection of a Qwen3/Qwen2 config.json."""
    h, inter = int(hf_config["hidden_size"]), int(hf_config["intermediate_size"])
    heads = int(hf_config["num_attention_heads"])
    kv = int(hf_config.get("num_key_value_heads") or heads)
    d = int(hf_config.get("head_dim") or h // heads)
    return {"q_proj": (h, heads * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d), "o_proj": (heads * d, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


@dataclass
class LoraAdapter:
    name: str
    path: Path
    rank: int
    alpha: float
    scale: float
    base_model: str                  # base_model_name_or_path as recorded at training
    target_modules: tuple[str, ...]  # the modules the weights actually cover
    # (layer, module) -> (A [r, in], scale * B [out, r]), fp32 on CPU
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)


def read_adapter_config(name: str, path: str | Path) -> dict:
    """adapter_config.json of a PEFT LoRA directory, refused with a clear message when it asks for
    something the engine cannot apply exactly."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    where = f"LoRA adapter {name!r} ({cfg_file})"
    if not cfg_file.is_file():
        raise LoraError(f"LoRA adapter {name!r}: {path} has no {CONFIG_FILE} (a PEFT adapter directory, as "
                        "`qaforge train` writes it, is needed)")
    if not (path / WEIGHTS_FILE).is_file():
        raise LoraError(f"LoRA adapter {name!r}: {path} has no {WEIGHTS_FILE}")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LoraError(f"{where}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(cfg, dict):
        raise LoraError(f"{where}: must hold a JSON object")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise LoraError(f"{where}: peft_type {cfg.get('peft_type')!r} is not LORA")
    refused = {"use_dora": "DoRA", "lora_bias": "a trained LoRA bias", "modules_to_save": "modules_to_save",
               "rank_pattern": "a per-module rank_pattern", "alpha_pattern": "a per-module alpha_pattern",
               "trainable_token_indices": "trainable token embeddings"}
    for key, what in refused.items():
        if cfg.get(key):
            raise LoraError(f"{where}: {what} ({key}={cfg[key]!r}) cannot be served unmerged; merge it "
                            "instead (qaforge train writes merged_model/)")
    if cfg.get("bias", "none") != "none":
        raise LoraError(f"{where}: bias={cfg['bias']!r} trains base-model biases; only bias='none' can be "
                        "served unmerged")
    targets = cfg.get("target_modules")
    if isinstance(targets, list):
        other = sorted(set(targets) - set(SUPPORTED_MODULES))
        if other:
            raise LoraError(f"{where}: target modules {other} are not supported (supported: "
                            f"{', '.join(SUPPORTED_MODULES)})")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise LoraError(f"{where}: {key} must be a positive number, got {cfg.get(key)!r}")
    return cfg


def load_adapter(name: str, path: str | Path, hf_config: dict) -> LoraAdapter:
    """Read and check one adapter against the base model's config.json; weights stay fp32 on CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_adapter_config(name, path)
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    wfile = path / WEIGHTS_FILE
    where = f"LoRA adapter {name!r} ({wfile})"
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(wfile)).items():
        m = _KEY.search(key)
        if m is None or m.group(2) not in SUPPORTED_MODULES:
            raise LoraError(f"{where}: weight {key!r} is not a LoRA A/B matrix of a supported module "
                            f"({', '.join(SUPPORTED_MODULES)})")
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t
    if not pairs:
        raise LoraError(f"{where}: no LoRA weights")
    adapter = LoraAdapter(name, path, rank, alpha, scale, str(cfg.get("base_model_name_or_path") or ""),
                          tuple(sorted({mod for _, mod in pairs}, key=SUPPORTED_MODULES.index)))
    _check_and_scale(adapter, pairs, hf_config, where)
    return adapter


def _check_and_scale(adapter: LoraAdapter, pairs: dict, hf_config: dict, where: str) -> None:
    shapes, layers = module_shapes(hf_config), int(hf_config["num_hidden_layers"])
    base = f" (trained on {adapter.base_model!r})" if adapter.base_model else ""
    for (layer, mod), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise LoraError(f"{where}: layers.{layer}.{mod} has lora_{''.join(ab)} without its pair")
        a, b = ab["A"], ab["B"]
        if layer >= layers:
            raise LoraError(f"{where}: weights for layer {layer}, but the base model has {layers} layers{base}")
        fan_in, fan_out = shapes[mod]
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or tuple(a.shape) != (r, fan_in) or tuple(b.shape) != (fan_out, r):
            raise LoraError(f"{where}: layers.{layer}.{mod} has A {tuple(a.shape)} and B {tuple(b.shape)}, but "
                            f"the base model needs A (r, {fan_in}) and B ({fan_out}, r): the adapter does not "
                            f"fit this base model{base}")
        if r != adapter.rank:
            raise LoraError(f"{where}: layers.{layer}.{mod} has rank {r}, adapter_config.json says r="
                            f"{adapter.rank}")
        adapter.weights[(layer, mod)] = (a.float(), b.float() * adapter.scale)


class LoraWeights:
    """The registered adapters of one engine, stacked per layer and fused group on the model's device.
    Adapter ids: 0 is the base model, 1..n the adapters in registration order."""

    def __init__(self, adapters: list[LoraAdapter], hf_config: dict, dtype: torch.dtype, device: torch.device):
        if not adapters:
            raise ValueError("LoraWeights needs at least one adapter")
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise LoraError(f"LoRA adapter names must be unique, got {names}")
        self.adapters = adapters
        self.ids = {a.name: i + 1 for i, a in enumerate(adapters)}
        self.dtype, self.device = dtype, device
        shapes = module_shapes(hf_config)
        # stacks[layer][group] = (A [n, R, in], B [n, out, R]); a group no adapter targets is absent
        self.stacks: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        for layer in range(int(hf_config["num_hidden_layers"])):
            per_group = {}
            for group, mods in GROUPS.items():
                stack = self._stack(layer, mods, shapes)
                if stack is not None:
                    per_group[group] = stack
            self.stacks.append(per_group)

    def _stack(self, layer: int, mods: tuple[str, ...], shapes: dict):
        ranks = [sum(ad.weights[(layer, m)][0].shape[0] for m in mods if (layer, m) in ad.weights)
                 for ad in self.adapters]
        if not any(ranks):
            return None
        n, R = len(self.adapters), max(ranks)
        fan_in = shapes[mods[0]][0]
        outs = [shapes[m][1] for m in mods]
        A = torch.zeros(n, R, fan_in)
        B = torch.zeros(n, sum(outs), R)
        for j, ad in enumerate(self.adapters):
            r_off, o_off = 0, 0
            for m, out in zip(mods, outs):
                if (layer, m) in ad.weights:
                    a, b = ad.weights[(layer, m)]
                    A[j, r_off: r_off + a.shape[0]] = a
                    B[j, o_off: o_off + out, r_off: r_off + a.shape[0]] = b
                    r_off += a.shape[0]
                o_off += out
        return A.to(self.device, self.dtype), B.to(self.device, self.dtype)

    @property
    def names(self) -> list[str]:
        return list(self.ids)

    def adapter_id(self, name: str | None) -> int:
        if name is None:
            return 0
        if name not in self.ids:
            raise ValueError(f"unknown LoRA adapter {name!r}; registered: {', '.join(self.ids) or 'none'}")
        return self.ids[name]

    def batch(self, seq_adapter_ids: list[int], cu_seqlens_q: torch.Tensor, num_tokens: int) -> "LoraBatch | None":
        """The per-token masks of one batch (sequence i owns tokens cu[i]:cu[i+1]); None when every row
        is the base model."""
        used = sorted(set(seq_adapter_ids) - {0})
        if not used:
            return None
        seq_ids = torch.tensor(seq_adapter_ids, device=cu_seqlens_q.device)
        qlens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
        # output_size: no device-to-host sync to learn the total
        tok = torch.repeat_interleave(seq_ids, qlens, output_size=num_tokens)
        masks = [(j - 1, (tok == j).unsqueeze(1).to(self.dtype)) for j in used]
        return LoraBatch(self.stacks, masks)


class LoraBatch:
    """The adapters of one batch; `apply` adds their updates to a fused projection's output."""

    def __init__(self, stacks: list[dict], masks: list[tuple[int, torch.Tensor]]):
        self.stacks, self.masks = stacks, masks

    def apply(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        stack = self.stacks[layer].get(group)
        if stack is None:
            return y
        A, B = stack
        for j, mask in self.masks:
            y = y + ((x @ A[j].t()) * mask) @ B[j].t()
        return y


def load_lora_weights(adapters: dict[str, str | Path], hf_config: dict, dtype: torch.dtype,
                      device: torch.device) -> LoraWeights:
    """name -> adapter directory, loaded, checked and stacked for the engine."""
    return LoraWeights([load_adapter(n, p, hf_config) for n, p in adapters.items()], hf_config, dtype, device)
