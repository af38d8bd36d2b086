"""qaforge's fast training path for Qwen3 / Qwen2 + LoRA. Each piece is optional and proved equal to the
plain transformers path by tests/test_train_fast.py:

1. **varlen attention** (`attn_implementation="qaforge_varlen"`): packed rows, one attention
   problem per sample, no padding and no cross-sample attention. On CUDA it calls PyTorch's own
   flash-attention varlen kernel (`torch.nn.attention.varlen.varlen_attn`, no flash-attn package
   needed); on CPU it runs causal SDPA per sample. Without `cu_seq_lens_q` it falls back to SDPA.
2. **chunked linear + cross-entropy** on labelled tokens only: the [tokens x 151,936] logits are
   never materialised (fp32 logits of a 16x512 batch alone are 5 GiB), prompt tokens skip the
   LM head entirely, and the gradient w.r.t. the hidden states is produced chunk by chunk in the
   forward pass (the loss is a scalar, so backward only rescales it). Plain torch: Liger-Kernel's
   fused CE under torch.compile gave a wrong loss on this model (304 instead of 10.9 after 25 T1 steps on an H200, 2026-11-29).
3. **regional torch.compile** of HF's own decoder layers: the fallback when the fused layers of
   `qaforge.train.fused_layer` (the default on packed rows: one compiled function for all layers,
   replayed as CUDA graphs on GPU) do not apply; it logs a warning, as it is the slower path.
"""

from __future__ import annotations

import inspect
import logging
import types
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("qaforge.train")
VARLEN_ATTENTION = "qaforge_varlen"
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------
# 1. varlen attention
# --------------------------------------------------------------------------------------------
def _cuda_varlen_kwargs() -> dict[str, Any] | None:
    """Keyword arguments for torch's varlen_attn in this torch version (its API grew over 2.9..2.13)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, Any] = {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # causal
    elif "is_causal" in params:
        kwargs["is_causal"] = True
    else:
        return None
    kwargs["_gqa"] = "enable_gqa" in params
    kwargs["_scale"] = "scale" in params
    return kwargs


_VARLEN_KW = _cuda_varlen_kwargs()


def _segment_sdpa(query, key, value, cu_seq_lens, scaling):
    """Reference/CPU path: causal SDPA on each sample's slice of the packed row."""
    bounds = cu_seq_lens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        outputs.append(F.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
            is_causal=True, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]))
    return torch.cat(outputs, dim=2)


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             **kwargs):
    """transformers attention interface: query [1, Hq, T, D], key/value [1, Hkv, T, D] -> [1, T, Hq, D]."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:  # not a packed batch (generation, plain eval): ordinary SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"packed batches must be one row, got batch size {query.shape[0]}")
    if dropout:
        raise ValueError("attention dropout is not supported by the varlen path (Qwen3 and Qwen2 use 0)")
    window, longest = kwargs.get("sliding_window"), kwargs.get("max_length_q")
    if window is not None and (longest is None or int(longest) > int(window)):
        # within the window, sliding-window attention is plain causal attention; beyond it, it is not
        raise ValueError(f"sliding-window attention (window {window}) on samples of up to {longest} tokens is "
                         "not supported by the varlen path: lower max_seq_len or use attention=sdpa")
    out = packed_attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                           cu_seq_lens, kwargs.get("max_length_q"), scaling)
    return out.unsqueeze(0), None


def flash_varlen_available(q: torch.Tensor) -> bool:
    """Whether torch's varlen flash kernel can take `q` (this torch has it, CUDA, half precision)."""
    return q.is_cuda and _VARLEN_KW is not None and q.dtype in (torch.float16, torch.bfloat16)


def packed_attention(q, k, v, cu_seq_lens, max_len: int, scaling: float | None):
    """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D]: causal attention within each packed sample.

    CUDA in fp16/bf16: torch's flash-attention varlen kernel; otherwise SDPA per sample (the reference).
    """
    if flash_varlen_available(q):
        from torch.nn.attention.varlen import varlen_attn
        call_kwargs = {k_: v_ for k_, v_ in _VARLEN_KW.items() if not k_.startswith("_")}
        if k.shape[1] != q.shape[1]:
            if _VARLEN_KW["_gqa"]:
                call_kwargs["enable_gqa"] = True
            else:
                groups = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if _VARLEN_KW["_scale"] and scaling is not None:
            call_kwargs["scale"] = scaling
        elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-12:
            raise ValueError("this torch's varlen_attn has no `scale` argument and the model needs a custom one")
        return varlen_attn(q, k, v, cu_seq_lens, cu_seq_lens, max_len, max_len, **call_kwargs)
    if torch.compiler.is_compiling():
        return _block_causal_sdpa(q, k, v, cu_seq_lens, scaling)
    out = _segment_sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                        cu_seq_lens, scaling)
    return out[0].transpose(0, 1)


def _block_causal_sdpa(q, k, v, cu_seq_lens, scaling):
    """The CPU path under torch.compile: one SDPA with a block-diagonal causal mask built by tensor ops.

    `_segment_sdpa` reads the bounds on the host (.tolist()), which breaks the compiled graph into pieces
    (and restarts Dynamo's analysis: AOTAutograd then traced each graph twice, on a warm cache too).
    This keeps the CPU graph in one piece, the shape of the CUDA graph around torch's varlen kernel, so CPU
    tests of compilation and its cache see what a GPU run compiles. [T, T] mask: CPU test sizes only.
    """
    tokens = q.shape[0]
    position = torch.arange(tokens, device=q.device)
    # (the full cu_seq_lens: slicing off its leading 0 made Dynamo specialise on the segment count)
    segment = torch.searchsorted(cu_seq_lens.to(position.dtype), position, right=True) - 1
    mask = (segment[:, None] == segment[None, :]) & (position[:, None] >= position[None, :])
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask, scale=scaling)
    return out.transpose(0, 1)


def register_varlen_attention() -> str:
    from transformers import AttentionInterface
    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    return VARLEN_ATTENTION


# --------------------------------------------------------------------------------------------
# 2. chunked linear + cross-entropy
# --------------------------------------------------------------------------------------------
class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), gradients computed chunk-wise during forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, compiled=True):
        # Grad mode is always off inside Function.forward: ask ctx which inputs need gradients.
        need_grad_h, need_grad_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc_dtype = torch.promote_types(hidden.dtype, torch.float32)  # fp32 for bf16/fp32, fp64 stays
        total = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_grad_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_grad_w else None
        fused_chunk = (_compiled_ce_chunk() if compiled and hidden.is_cuda and need_grad_h and not need_grad_w
                       else None)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            if fused_chunk is not None:  # one Inductor pass over the logits instead of ~8 eager ones
                chunk_loss, grad_h[start:start + chunk_size] = fused_chunk(h, weight, t)
                total += chunk_loss
                continue
            logits = (h @ weight.t()).to(acc_dtype)  # the one [chunk x vocab] buffer we hold
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_grad_h or need_grad_w:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax in place: no second buffer
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad_logits = probs.to(hidden.dtype)
                if need_grad_h:
                    grad_h[start:start + chunk_size] = grad_logits @ weight
                if need_grad_w:
                    grad_w += grad_logits.t().to(acc_dtype) @ h.to(acc_dtype)
            del logits
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_output.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_output).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None


def ce_chunk_with_grad(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """(sum of CE of h @ weight.T vs targets, d loss / d h) for one chunk; compiled on CUDA.

    Eager, this is ~8 passes over the [chunk x 151,936] logits (upcast, logsumexp, gather, sub, exp,
    one-hot sub, downcast): 25 ms of a 144 ms T1 step on the H200. Inductor fuses the upcast into the
    logsumexp reduction and the softmax-minus-one-hot into one pointwise pass writing bf16.
    """
    logits = h @ weight.t()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 for bf16, fp64 stays
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    one_hot = torch.arange(logits.shape[1], device=logits.device)[None, :] == targets[:, None]
    grad_logits = (torch.exp(logits - lse[:, None]) - one_hot.to(logits.dtype)).to(h.dtype)
    return (lse - target_logit).sum(), grad_logits @ weight


_COMPILED_CE: dict[str, Any] = {}


def _compiled_ce_chunk():
    if "fn" not in _COMPILED_CE:
        _COMPILED_CE["fn"] = torch.compile(ce_chunk_with_grad, dynamic=True)
    return _COMPILED_CE["fn"]


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 chunk_size: int = 4096, compiled: bool = True) -> torch.Tensor:
    """Sum of token cross-entropies of `hidden @ weight.T` against `targets` (all must be valid ids).

    `compiled=False` keeps each chunk eager on CUDA too: a run without torch.compile compiles nothing."""
    if hidden.ndim != 2 or targets.ndim != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"expected hidden [N, H] and targets [N], got {tuple(hidden.shape)} and "
                         f"{tuple(targets.shape)}")
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph connected when a micro-batch has no labels
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, compiled)


def fused_causal_lm_loss(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                         num_items_in_batch=None, chunk_size: int = 4096,
                         label_positions: torch.Tensor | None = None, compiled: bool = True) -> torch.Tensor:
    """transformers' ForCausalLMLoss semantics (shift by one, ignore -100, mean or sum/num_items).

    `label_positions` (flat indices t whose next-token label labels[t + 1] is not -100, made on the
    host by the collator) saves the `nonzero()` here, which stalls the CPU until the GPU has run the
    whole forward pass.
    """
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)
    flat_hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    if label_positions is not None:
        keep = label_positions.reshape(-1).to(device=flat_hidden.device, dtype=torch.long)
    else:
        keep = (shift_labels != IGNORE_INDEX).nonzero().squeeze(1)
    loss_sum = chunked_linear_cross_entropy(flat_hidden.index_select(0, keep), lm_head_weight,
                                            shift_labels.index_select(0, keep), chunk_size, compiled)
    if num_items_in_batch is None:
        return loss_sum / max(int(keep.numel()), 1)
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch


def install_fused_loss(causal_lm: torch.nn.Module, chunk_size: int = 4096, compile: bool = True) -> None:
    """Replace this model instance's forward: with labels, compute the fused loss and return no logits.

    Patched on the instance (not the class) so PEFT and DDP wrappers still call through it, and
    generation (no labels) keeps the original forward.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    lm_head = causal_lm.get_output_embeddings()
    if not isinstance(lm_head, torch.nn.Linear) or lm_head.bias is not None:
        raise ValueError("fused loss needs a bias-free nn.Linear LM head (do not put LoRA on lm_head)")
    original_forward = causal_lm.forward

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None,
                num_items_in_batch=None, label_positions=None, **kwargs):
        if labels is None:
            return original_forward(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids, **kwargs)
        kwargs.pop("logits_to_keep", None)
        kwargs.pop("use_cache", None)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False, **kwargs)
        loss = fused_causal_lm_loss(outputs.last_hidden_state, self.get_output_embeddings().weight,
                                    labels, num_items_in_batch, chunk_size, label_positions, compile)
        return CausalLMOutputWithPast(loss=loss, logits=None)

    causal_lm.forward = types.MethodType(forward, causal_lm)
    causal_lm._qaforge_original_forward = original_forward


def uninstall_fused_loss(causal_lm: torch.nn.Module) -> None:
    if hasattr(causal_lm, "_qaforge_original_forward"):
        del causal_lm.forward  # the class's forward shows through again
        del causal_lm._qaforge_original_forward


# --------------------------------------------------------------------------------------------
# 3. regional compile
# --------------------------------------------------------------------------------------------
def compile_decoder_layers(causal_lm: torch.nn.Module) -> int:
    """torch.compile every decoder layer in place (module structure, state_dict and PEFT untouched)."""
    import torch._dynamo

    # Packed rows change length every step. dynamic=True makes the token count (and max_length_q)
    # symbolic from the first call; with automatic dynamism each new length recompiled until the
    # recompile limit, after which dynamo silently ran the layer EAGERLY: on the H200 the fast_v7
    # run then took 278 ms/step against 147 ms in the benchmark loop (2026-11-29).
    torch._dynamo.config.recompile_limit = max(getattr(torch._dynamo.config, "recompile_limit", 8), 64)
    layers = causal_lm.model.layers
    log.warning("compiling HF's own %d %s layers: the SLOWER fallback path, used where qaforge's fused "
                "layers (qaforge.train.fused_layer) do not apply",
                len(layers), type(layers[0]).__name__ if len(layers) else "decoder")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
