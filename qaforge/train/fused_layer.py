"""A fused Qwen3 / Qwen2 decoder layer for LoRA training on packed rows.

HF + PEFT run a decoder layer as ~40 Python modules: 7 LoRA wrappers (each its own dropout mask and
two small matmuls), two RMSNorms, q/k norms (Qwen3), RoPE on [B, H, T, D] tensors that are transposed
back and forth around attention. `fused_decoder_layer` is the same function written as one pure
function over the layer's own parameters (read from PEFT's modules at every call, so the adapter
PEFT saves, merges and the Trainer optimises is exactly the one trained here):

* the three projections that read one input (q/k/v; gate/up) share ONE dropout mask and ONE
  LoRA-A matmul over their concatenated A matrices: 4 dropout masks and 4 A-matmuls per layer
  instead of 7 + 7. (PEFT draws an independent mask per adapter; with dropout 0 or in eval the
  two are the same function, which tests/test_train_fused.py proves.)
* each LoRA-B product is accumulated into the frozen projection's output (including its frozen
  bias: Qwen2's q/k/v) by one `addmm` (cuBLAS beta=1 epilogue) instead of a matmul + scale + add;
* q/k norm (Qwen3 only) and RoPE work in the [tokens, heads, head_dim] layout that varlen attention takes.

The families differ only in what the weights hold (Qwen2: q/k/v biases, no q/k norm: `q_norm` is
None), so ONE function serves both. It is compiled ONCE (token dimensions dynamic) and the same
compiled graph serves all layers of a model, because the weights are arguments rather than module
attributes; optionally the compiled layers replay as CUDA graphs. Evaluation (no grad) runs the same
function uncompiled: a few batches per epoch do not pay for a second compilation. Falls back to the
layer's own forward for anything it does not cover (other layer classes, sliding-window attention, no
packing metadata, merged/disabled adapters, DoRA, several adapters), and says so in the log.
"""

from __future__ import annotations

import logging
import types
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from qaforge.train import fast

log = logging.getLogger("qaforge.train")
# The decoder layer classes whose function `fused_decoder_layer` computes -> whether they have q/k norms.
FUSED_LAYER_CLASSES = {"Qwen3DecoderLayer": True, "Qwen2DecoderLayer": False}
_PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


class Projection(NamedTuple):
    weight: torch.Tensor  # frozen base weight [out, in]
    bias: torch.Tensor | None
    lora_a: torch.Tensor | None  # [r, in] (fp32 master weights under AMP)
    lora_b: torch.Tensor | None  # [out, r]
    scaling: float


def _projection(module: torch.nn.Module) -> Projection | None:
    """The parts of an nn.Linear or a PEFT LoRA Linear with one active plain adapter, else None."""
    if isinstance(module, torch.nn.Linear):
        return Projection(module.weight, module.bias, None, None, 1.0)
    base = getattr(module, "base_layer", None)
    if not isinstance(base, torch.nn.Linear) or getattr(module, "merged", False) or module.disable_adapters:
        return None
    active = list(module.active_adapters)
    if len(active) != 1 or any(getattr(module, "use_dora", {}).get(name, False) for name in active):
        return None
    name = active[0]
    if name not in module.lora_A or getattr(module, "lora_bias", {}).get(name, False):
        return None
    return Projection(base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight,
                      float(module.scaling[name]))


def _dropout_p(module: torch.nn.Module) -> float:
    dropout = getattr(module, "lora_dropout", None)
    if dropout is None:
        return 0.0
    layer = next(iter(dropout.values()), None)
    return float(layer.p) if isinstance(layer, torch.nn.Dropout) else 0.0


class LayerWeights(NamedTuple):
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    q_norm: torch.Tensor | None  # Qwen3's per-head RMSNorm weights; None for Qwen2
    k_norm: torch.Tensor | None
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    gate: Projection
    up: Projection
    down: Projection


def layer_weights(layer: torch.nn.Module) -> tuple[LayerWeights, float] | None:
    """(weights, lora dropout p) of a Qwen3/Qwen2 decoder layer, or None when the fused path does not apply."""
    attn, mlp = layer.self_attn, layer.mlp
    modules = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    projections = [_projection(m) for m in modules]
    if any(p is None for p in projections):
        return None
    p = max((_dropout_p(m) for m in modules), default=0.0)
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    weights = LayerWeights(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                           None if q_norm is None else q_norm.weight, None if k_norm is None else k_norm.weight,
                           *projections)
    return weights, p


def uncovered_reason(layer: torch.nn.Module, config) -> str | None:
    """Why `fused_decoder_layer` would not compute this layer's function, or None when it would."""
    name = type(layer).__name__
    if name not in FUSED_LAYER_CLASSES:
        return f"{name} is not one of {', '.join(FUSED_LAYER_CLASSES)}"
    for part, names in _PROJECTIONS.items():
        if any(not hasattr(getattr(layer, part, None), n) for n in names):
            return f"{name} lacks the {part} projections {', '.join(names)}"
    if FUSED_LAYER_CLASSES[name] != hasattr(layer.self_attn, "q_norm"):
        return f"{name} {'lacks' if FUSED_LAYER_CLASSES[name] else 'has'} q/k norms"
    if getattr(layer.self_attn, "sliding_window", None) is not None:
        return f"{name} uses sliding-window attention (use_sliding_window=true)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (the fused function computes SiLU)"
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) != 0.0:
        return f"attention_dropout={config.attention_dropout} (varlen attention has no dropout)"
    if layer_weights(layer) is None:
        return "its LoRA setup (merged, disabled, DoRA, lora bias or several adapters)"
    return None


# --------------------------------------------------------------------------------------------
# the pure function
# --------------------------------------------------------------------------------------------
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Qwen3RMSNorm: statistics in fp32, normalised value cast back before the weight multiply
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _dropout(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Inverted dropout with a tensor keep-probability: keep == 1 is the identity (eval) in the same graph.

    The uniform draw and the 1/keep scale are fp32 (a bf16 draw is too coarse, bf16(1/0.9) is off by 0.2 %).
    """
    mask = torch.rand(x.shape, device=x.device, dtype=torch.float32) < keep
    return (x.float() * mask / keep).to(x.dtype)


def _project_group(x: torch.Tensor, x_drop: torch.Tensor, group: list[Projection]) -> list[torch.Tensor]:
    """Projections reading the same input: frozen matmuls + one shared LoRA-A matmul + addmm per LoRA-B."""
    outputs = [F.linear(x, p.weight, p.bias) for p in group]
    with_lora = [i for i, p in enumerate(group) if p.lora_a is not None]
    if not with_lora:
        return outputs
    a_all = torch.cat([group[i].lora_a for i in with_lora]).to(x.dtype)
    hidden = F.linear(x_drop, a_all)  # [T, sum of ranks]
    offset = 0
    for i in with_lora:  # x is [T, in]: out = base + scaling * (hidden_i @ B^T), one GEMM
        p = group[i]
        rank = p.lora_a.shape[0]
        outputs[i] = torch.addmm(outputs[i], hidden[:, offset:offset + rank], p.lora_b.to(x.dtype).t(),
                                 alpha=p.scaling)
        offset += rank
    return outputs


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def fused_decoder_layer(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seq_lens: torch.Tensor,
                        max_len: int, w: LayerWeights, keep: torch.Tensor, eps: float, qk_eps: float,
                        attn_scaling: float, num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """One Qwen3 or Qwen2 decoder layer on a packed row: x [T, H] -> [T, H]; cos/sin [T, head_dim].

    Qwen2 is `w.q_norm is None` (qk_eps unused) with q/k/v biases in the projections; under
    torch.compile the None is a guard, so a model's layers still share one graph.
    """
    tokens = x.shape[0]
    h = _rms_norm(x, w.input_norm, eps)
    q, k, v = _project_group(h, _dropout(h, keep), [w.q, w.k, w.v])
    q, k = q.view(tokens, num_heads, head_dim), k.view(tokens, num_kv_heads, head_dim)
    if w.q_norm is not None:
        q = _rms_norm(q, w.q_norm, qk_eps)
        k = _rms_norm(k, w.k_norm, qk_eps)
    cos, sin = cos[:, None, :], sin[:, None, :]
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    attn = fast.packed_attention(q, k, v.view(tokens, num_kv_heads, head_dim), cu_seq_lens, max_len, attn_scaling)
    attn = attn.reshape(tokens, num_heads * head_dim)
    (o,) = _project_group(attn, _dropout(attn, keep), [w.o])
    x = x + o
    h = _rms_norm(x, w.post_norm, eps)
    gate, up = _project_group(h, _dropout(h, keep), [w.gate, w.up])
    m = F.silu(gate) * up
    (down,) = _project_group(m, _dropout(m, keep), [w.down])
    return x + down


# --------------------------------------------------------------------------------------------
# installing it on a model instance
# --------------------------------------------------------------------------------------------
_COMPILED: dict[str, Any] = {}
_KEEP: dict[tuple, torch.Tensor] = {}


def _keep_tensor(value: float, device: torch.device) -> torch.Tensor:
    """0-dim fp32 keep-probability, made once per (value, device): no fill kernel per layer call."""
    key = (value, str(device))
    if key not in _KEEP:
        _KEEP[key] = torch.full((), value, dtype=torch.float32, device=device)
    return _KEEP[key]


def _compiled_layer_fn(cuda_graphs: bool):
    key = "cuda_graphs" if cuda_graphs else "plain"
    if key not in _COMPILED:
        import torch._dynamo
        torch._dynamo.config.recompile_limit = max(getattr(torch._dynamo.config, "recompile_limit", 8), 64)
        if cuda_graphs:
            _no_gc_per_graph_capture()
            import torch._inductor.config as inductor_config
            # debug assertions on the (re)recording path; off: a new row shape should cost a capture, no more
            inductor_config.triton.slow_path_cudagraph_asserts = False
        # "reduce-overhead": Inductor's CUDA-graph trees replay each layer's kernels (fwd and bwd) as one
        # graph. Without it the step is launch-bound: ~2,700 kernels per T1 step cost more host time
        # (157 ms) than the GPU needs to run them (75 ms), measured on the H200 2026-12-01.
        # dynamic=None + the token dimensions marked dynamic at each call (_mark_token_dims): ONE graph for all
        # row lengths with everything else static. dynamic=True made every size symbolic, weights and head
        # counts included, and duck sizing then tied a token-dependent size to a weight's whenever the first
        # batch made them equal (cu_seq_lens' 4 entries == LoRA rank 4 on CPU): a recompile per new length.
        _COMPILED[key] = torch.compile(fused_decoder_layer, dynamic=None,
                                       mode="reduce-overhead" if cuda_graphs else None)
    return _COMPILED[key]


def _no_gc_per_graph_capture() -> None:
    """Each layer's fwd and bwd graph (56 per row shape) is a separate capture; older torch runs a full
    gc.collect() before every capture, seconds per shape in a process holding a model and a dataset."""
    import gc

    config = getattr(torch.compiler, "config", None)
    if config is not None and hasattr(config, "force_cudagraph_gc"):
        config.force_cudagraph_gc = False
    else:  # no switch in this torch: move what exists now out of the collector's reach
        gc.collect()
        gc.freeze()


SEGMENT_SLOTS = 16  # cu_seq_lens is padded to a multiple of this many entries
MAX_LEN_BOUND = 512  # the compiled layer gets max_len rounded up to a multiple of this (a static int)


def _mark_token_dims(x, cos, sin, cu_seq_lens, max_len: int):
    """Before a compiled call: the token and segment counts are dynamic (one graph serves every row), and
    max_len becomes a bound that rarely changes. Flash attention uses max_len only to size its grid (the
    segments are in cu_seq_lens); a raw max_len, different nearly every step, would be one recompile as
    Dynamo makes it dynamic, and a symbol (with its guards) in every graph after that."""
    for tensor in (x, cos, sin, cu_seq_lens):
        torch._dynamo.maybe_mark_dynamic(tensor, 0)
    return -(-max_len // MAX_LEN_BOUND) * MAX_LEN_BOUND


def _pad_packed_row(x, cos, sin, cu_seq_lens, max_len: int, multiple: int):
    """Give the row a shape from a small set: CUDA graphs are recorded once per input shape.

    Tokens: one dummy segment up to a multiple of `multiple`. Segments: cu_seq_lens is padded to a
    multiple of SEGMENT_SLOTS entries by repeating its end (empty trailing segments, which flash
    attention skips), so 11, 16 or 17 samples give one shape. max_len is rounded up like the tokens
    (flash attention uses it only as a bound).
    """
    tokens = x.shape[0]
    pad = -tokens % multiple
    bound = -(-max(max_len, pad) // multiple) * multiple
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        cos, sin = F.pad(cos, (0, 0, 0, pad)), F.pad(sin, (0, 0, 0, pad))  # zero rows: the dummy's q, k are 0
    entries = cu_seq_lens.shape[0] + (1 if pad else 0)
    slots = -(-entries // SEGMENT_SLOTS) * SEGMENT_SLOTS
    tail = torch.full((slots - cu_seq_lens.shape[0],), tokens + pad, dtype=cu_seq_lens.dtype,
                      device=cu_seq_lens.device)
    return x, cos, sin, torch.cat([cu_seq_lens, tail]), bound


def _fused_forward(original_forward, statics: dict, layer_fn, first: bool, cuda_graphs: bool,
                   pad_to_multiple_of: int | None, fallback_warned: dict):
    """The instance forward of one layer: the fused function on packed rows, else the layer's own."""

    def forward(self, hidden_states, *args, **kwargs):
        cu_seq_lens = kwargs.get("cu_seq_lens_q")
        found = layer_weights(self) if cu_seq_lens is not None and hidden_states.shape[0] == 1 else None
        if found is None or kwargs.get("position_embeddings") is None:
            if self.training and torch.is_grad_enabled() and not fallback_warned:
                fallback_warned["warned"] = True  # once per model: a slower step must not go unnoticed
                packed_row = cu_seq_lens is not None and hidden_states.shape[0] == 1
                why = ("no packed row (cu_seq_lens_q, one row)" if not packed_row
                       else "LoRA merged/disabled, DoRA or several adapters" if found is None
                       else "no position_embeddings")
                log.warning("fused layers: a training step runs HF's own, slower layer forward (%s)", why)
            return original_forward(hidden_states, *args, **kwargs)
        weights, p = found
        cos, sin = kwargs["position_embeddings"]
        keep = _keep_tensor(1.0 - p if self.training else 1.0, hidden_states.device)
        if torch.is_grad_enabled() and not hidden_states.requires_grad:
            # layer 0's input (frozen embeddings) needs no grad, every later layer's does: a
            # detached leaf that asks for one lets all layers share one compiled graph
            # (a second compile costs ~15 s; the unused dx of layer 0 ~0.5 ms per step)
            hidden_states = hidden_states.detach().requires_grad_()
        x, cos, sin = hidden_states[0], cos[0].to(hidden_states.dtype), sin[0].to(hidden_states.dtype)
        tokens, max_len = x.shape[0], int(kwargs["max_length_q"])
        run = layer_fn
        if not torch.is_grad_enabled():
            # evaluation (a few batches per epoch): the same function eagerly. A compiled inference
            # graph is one more compilation, and recording inference CUDA graphs for each eval row
            # shape took 5.3 s at fast_v7's first eval on the H200.
            run = fused_decoder_layer
        else:
            if cuda_graphs and first:
                # a new forward pass begins: graph outputs of the previous one may be overwritten
                # (what the Trainer keeps, loss and grads, are made outside the graphs)
                torch.compiler.cudagraph_mark_step_begin()
            if pad_to_multiple_of:
                x, cos, sin, cu_seq_lens, max_len = _pad_packed_row(x, cos, sin, cu_seq_lens, max_len,
                                                                    pad_to_multiple_of)
            if run is not fused_decoder_layer:
                max_len = _mark_token_dims(x, cos, sin, cu_seq_lens, max_len)
        out = run(x, cos, sin, cu_seq_lens, max_len, weights, keep, **statics)
        return out[:tokens][None]

    return forward


def _layer_statics(layer: torch.nn.Module, config) -> dict:
    attn = layer.self_attn
    q_norm = getattr(attn, "q_norm", None)
    return dict(eps=layer.input_layernorm.variance_epsilon,
                qk_eps=q_norm.variance_epsilon if q_norm is not None else 0.0,
                attn_scaling=float(attn.scaling), num_heads=config.num_attention_heads,
                num_kv_heads=config.num_key_value_heads, head_dim=attn.head_dim)


def _log_coverage(causal_lm, uncovered: dict[str, list[int]], installed: int, mode: str) -> None:
    total = len(causal_lm.model.layers)
    if not uncovered:
        log.info("fused layers: all %d %s layers run the fused function (%s)", total,
                 type(causal_lm.model.layers[0]).__name__ if total else "-", mode)
        return
    parts = "; ".join(f"{len(idx)} layer(s) [{idx[0]}..{idx[-1]}]: {reason}" for reason, idx in uncovered.items())
    log.warning("fused layers cover %d of %d decoder layers of %s; the others keep HF's own layer forward, "
                "the SLOWER fallback path (%s). Supported: %s.", installed, total, type(causal_lm).__name__,
                parts, ", ".join(FUSED_LAYER_CLASSES))


def install_fused_layers(causal_lm: torch.nn.Module, compile: bool = True, cuda_graphs: bool = False,
                         pad_to_multiple_of: int | None = None) -> int:
    """Route each decoder layer's packed-row forward through `fused_decoder_layer` (instance patch).

    Module structure, parameters and state_dict are untouched: PEFT save/merge and the optimizer see
    the same tensors. Layers whose structure the fused function does not cover keep their forward
    (logged as a warning naming the reason). `cuda_graphs` (needs compile) replays every layer as CUDA
    graphs; rows are then padded to a multiple of `pad_to_multiple_of` (default 512) tokens.
    Returns the number of layers installed.
    """
    # The per-sample SDPA fallback reads segment bounds on the host (.tolist()), which a CUDA graph
    # cannot capture: graphs need torch's varlen kernel (torch >= 2.9 on CUDA) and a half dtype.
    probe = next(causal_lm.parameters())  # the frozen weights' dtype is the activations' dtype here
    cuda_graphs = bool(cuda_graphs and compile and fast.flash_varlen_available(
        torch.empty(0, device=probe.device, dtype=probe.dtype)))
    if cuda_graphs and pad_to_multiple_of is None:
        pad_to_multiple_of = 512
    config = causal_lm.config
    layer_fn = _compiled_layer_fn(cuda_graphs) if compile else fused_decoder_layer
    uncovered: dict[str, list[int]] = {}
    fallback_warned: dict = {}
    installed = 0
    for index, layer in enumerate(causal_lm.model.layers):
        reason = uncovered_reason(layer, config)
        if reason is not None:
            uncovered.setdefault(reason, []).append(index)
            continue
        forward = _fused_forward(layer.forward, _layer_statics(layer, config), layer_fn, installed == 0,
                                 cuda_graphs, pad_to_multiple_of, fallback_warned)
        layer.forward = types.MethodType(forward, layer)
        layer._qaforge_fused = True
        installed += 1
    _log_coverage(causal_lm, uncovered, installed, ("compiled + CUDA graphs" if cuda_graphs else "compiled")
                  if compile else "eager")
    causal_lm._qaforge_cuda_graphs = cuda_graphs and installed > 0  # what the run reports as used
    return installed


def uninstall_fused_layers(causal_lm: torch.nn.Module) -> None:
    for layer in causal_lm.model.layers:
        if getattr(layer, "_qaforge_fused", False):
            del layer.forward
            del layer._qaforge_fused
    causal_lm.__dict__.pop("_qaforge_cuda_graphs", None)
