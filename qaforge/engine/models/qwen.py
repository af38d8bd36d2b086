"""The Qwen dense families (Qwen3, Qwen2/Qwen2.5) for the engine, loaded straight from HF safetensors.

Per layer: RMSNorm -> fused qkv projection (+ bias) -> per-head q/k RMSNorm (Qwen3 only) + RoPE (+ KV store
into the paged cache) -> paged attention (GQA) -> o projection -> residual add + RMSNorm -> fused gate/up
projection -> SiLU*mul -> down projection. Tied or separate lm_head. Weights are plain tensors; ops come
from an `ops` module (torch reference or Triton) chosen by the model runner.

The two families share every line of the forward pass; what differs is data in `FAMILIES` (Qwen2 has q/k/v
biases and no q/k norm; Qwen3 has q/k norm and biases only with `attention_bias`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..config import check_architecture
from ..layers.attn_meta import AttnMeta


class Family(NamedTuple):
    qk_norm: bool            # RMSNorm over each q and k head before RoPE
    qkv_bias: bool | None    # None: as config.json's attention_bias says
    o_bias: bool | None


FAMILIES = {"qwen3": Family(qk_norm=True, qkv_bias=None, o_bias=None),
            "qwen2": Family(qk_norm=False, qkv_bias=True, o_bias=False)}


@dataclass
class QwenArgs:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qk_norm: bool
    qkv_bias: bool
    o_bias: bool

    @classmethod
    def from_hf(cls, hf: dict) -> "QwenArgs":
        family = check_architecture(hf)
        rope = hf.get("rope_parameters") or {}
        theta = hf.get("rope_theta", rope.get("rope_theta", 1000000.0))
        n_heads = hf["num_attention_heads"]
        fam = FAMILIES[family]
        attention_bias = bool(hf.get("attention_bias", False))
        return cls(
            family=family, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=n_heads, num_key_value_heads=hf.get("num_key_value_heads", n_heads),
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta), tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qk_norm=fam.qk_norm, qkv_bias=attention_bias if fam.qkv_bias is None else fam.qkv_bias,
            o_bias=attention_bias if fam.o_bias is None else fam.o_bias)


class Layer:
    __slots__ = ("in_w", "qkv_w", "qkv_b", "q_norm", "k_norm", "o_w", "o_b", "post_w", "gate_up_w", "down_w")


def _load_state(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f), device=str(device)))  # straight onto the device
    return state


class QwenForCausalLM:
    def __init__(self, path: str | Path, hf_config: dict, dtype: torch.dtype, device: torch.device,
                 max_positions: int):
        self.args = a = QwenArgs.from_hf(hf_config)
        self.dtype, self.device = dtype, device
        state = _load_state(Path(path), device)
        prefix = "model." if any(k.startswith("model.") for k in state) else ""

        def get(name: str, required: bool = True):
            t = state.pop(prefix + name, None)
            if t is None:
                if required:
                    raise KeyError(f"missing weight {prefix + name} in {path} ({a.family} checkpoint)")
                return None
            return t.to(device=device, dtype=dtype).contiguous()

        self.embed = get("embed_tokens.weight")
        self.layers: list[Layer] = []
        for i in range(a.num_hidden_layers):
            p = f"layers.{i}."
            L = Layer()
            L.in_w = get(p + "input_layernorm.weight")
            L.post_w = get(p + "post_attention_layernorm.weight")
            L.qkv_w = torch.cat([get(p + f"self_attn.{n}_proj.weight") for n in "qkv"]).contiguous()
            L.qkv_b = torch.cat([get(p + f"self_attn.{n}_proj.bias") for n in "qkv"]).contiguous() \
                if a.qkv_bias else None
            L.q_norm = get(p + "self_attn.q_norm.weight") if a.qk_norm else None
            L.k_norm = get(p + "self_attn.k_norm.weight") if a.qk_norm else None
            L.o_w = get(p + "self_attn.o_proj.weight")
            L.o_b = get(p + "self_attn.o_proj.bias") if a.o_bias else None
            L.gate_up_w = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]).contiguous()
            L.down_w = get(p + "mlp.down_proj.weight")
            self.layers.append(L)
        self.norm_w = get("norm.weight")
        lm = state.pop("lm_head.weight", None)
        self.lm_head = self.embed if (a.tie_word_embeddings or lm is None) else lm.to(device=device, dtype=dtype)
        del state
        # RoPE tables exactly as transformers builds them (fp32)
        D = a.head_dim
        inv_freq = 1.0 / (a.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).to(torch.float) / D))
        freqs = torch.arange(max_positions, dtype=torch.float)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(device)
        self.sin = emb.sin().to(device)
        self.scale = D ** -0.5
        self.ops = None  # set by the model runner
        self.lora_batch = None  # a layers.lora.LoraBatch while a batch with LoRA rows runs (model runner)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMeta,
                kv_cache: torch.Tensor) -> torch.Tensor:
        """Returns the residual stream after the last layer (before the final norm), [T, hidden]."""
        a, ops, lora = self.args, self.ops, self.lora_batch
        eps = a.rms_norm_eps
        h = F.embedding(input_ids, self.embed)
        residual = None
        for i, L in enumerate(self.layers):
            if residual is None:
                residual = h
                x = ops.rms_norm(h, L.in_w, eps)
            else:
                x, residual = ops.add_rms_norm(h, residual, L.in_w, eps)
            qkv = ops.linear(x, L.qkv_w, L.qkv_b)
            if lora is not None:
                qkv = lora.apply(i, "qkv", x, qkv)
            k_cache, v_cache = kv_cache[0, i], kv_cache[1, i]
            # q_norm/k_norm are None for Qwen2: the op then only applies RoPE
            q = ops.qk_norm_rope_store(qkv, positions, meta.slot_mapping, k_cache, v_cache, L.q_norm, L.k_norm,
                                       self.cos, self.sin, a.num_attention_heads, a.num_key_value_heads,
                                       a.head_dim, eps)
            o = ops.paged_attention(q, k_cache, v_cache, meta, self.scale)
            o = o.reshape(o.shape[0], -1)
            h = ops.linear(o, L.o_w, L.o_b)
            if lora is not None:
                h = lora.apply(i, "o", o, h)
            x, residual = ops.add_rms_norm(h, residual, L.post_w, eps)
            gu = ops.linear(x, L.gate_up_w)
            if lora is not None:
                gu = lora.apply(i, "gate_up", x, gu)
            m = ops.silu_mul(gu)
            h = ops.linear(m, L.down_w)
            if lora is not None:
                h = lora.apply(i, "down", m, h)
        return residual + h

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ops.rms_norm(hidden, self.norm_w, self.args.rms_norm_eps), self.lm_head)
