"""FP8 (float8 e4m3, max 448) in the engine: the KV-cache conversions and weight-quantised linear layers.

KV cache (`kv_cache_dtype="fp8"`): K and V are stored as float8_e4m3fn with a fixed scale of 1.0, vLLM's default
when a checkpoint ships no calibrated scales. Why not per-layer scales measured at warm-up: e4m3's relative step
is the same (2^-4) everywhere from 2^-6 to 448, so a scale only changes (a) what saturates and (b) what falls
into the subnormals below 0.0156, whose absolute error (<= 2^-10) hardly moves a dot product. Qwen3's K is
RMS-normalised per head and V stays far below 448 in these models, so with 1.0 nothing saturates; a scale
measured on warm-up prompts would fit those prompts and could clip real text, a worse failure than a few
subnormals. Stores clamp to +-448 first: a cast of an out-of-range value is NaN on some torch builds.

Weights (`quantization="fp8"`, the seed's vLLM setting): every decoder linear's weight becomes float8_e4m3fn
with one fp32 scale per output channel (the fused qkv and gate/up rows each get their own). Activations are
quantised per token at run time. On CUDA with compute capability >= 8.9 the GEMM is `torch._scaled_mm`
(row-wise scales, fp8 tensor cores); elsewhere (CPU, older GPUs) the same arithmetic is emulated: the fp8
activation times the fp8 weight, both upcast to fp32, scaled, so CPU tests measure the numerics of the GPU path.
The embedding and lm_head stay in the model dtype (they are tied in the small Qwens and pick the token).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
_MIN_AMAX = 1e-12          # an all-zero row gets scale 1e-12/448 instead of a division by zero
LINEARS = ("qkv_w", "o_w", "gate_up_w", "down_w")   # the Layer slots that hold decoder weights


def kv_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The KV cache's element type: the model dtype for "auto", float8_e4m3fn for "fp8"."""
    return FP8 if kv_cache_dtype == "fp8" else model_dtype


def to_kv(x: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """x in the cache's dtype; fp8 saturates at +-448 (scale 1.0)."""
    if cache_dtype == FP8:
        return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return x.to(cache_dtype)


def from_kv(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cache values for the attention math: fp8 upcast to the compute dtype, anything else unchanged."""
    return x.to(dtype) if x.dtype == FP8 else x


def check_kv_backend(kv_dtype: torch.dtype, backend: str, device: torch.device) -> None:
    """Triton converts to and from e4m3 only on compute capability >= 8.9 (Ada, Hopper and later)."""
    if kv_dtype == FP8 and backend == "triton" and torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(f"kv_cache_dtype='fp8' with the Triton kernels needs compute capability >= 8.9, this GPU "
                         f"has {torch.cuda.get_device_capability(device)}: use kv_cache_dtype='auto' or "
                         "attention_backend='torch'")


# ---------------------------------------------------------------- weights
@dataclass
class Fp8Weight:
    """A linear weight w [N, K] as qweight * scale[:, None]."""
    qweight: torch.Tensor      # [N, K] float8_e4m3fn, row-major (its .t() is the column-major B of _scaled_mm)
    scale: torch.Tensor        # [1, N] float32
    scaled_mm: bool            # True: torch._scaled_mm; False: the emulated (dequantised) matmul

    @property
    def shape(self) -> torch.Size:
        return self.qweight.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.float() * self.scale.t()).to(dtype)


def quantize_weight(w: torch.Tensor, scaled_mm: bool = False) -> Fp8Weight:
    """Per-output-channel symmetric quantisation: each row's amax maps to 448."""
    wf = w.float()
    scale = wf.abs().amax(dim=1, keepdim=True).clamp_min(_MIN_AMAX) / FP8_MAX      # [N, 1]
    q = (wf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).contiguous()
    return Fp8Weight(q, scale.t().contiguous(), scaled_mm)


def quantize_rows_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantisation of x [M, K]: (fp8 [M, K], fp32 scale [M, 1])."""
    xf = x.float()
    s = xf.abs().amax(dim=1, keepdim=True).clamp_min(_MIN_AMAX) / FP8_MAX
    return (xf / s).clamp(-FP8_MAX, FP8_MAX).to(FP8), s


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Triton launch on CUDA (the torch version costs five passes over x), torch elsewhere."""
    if x.is_cuda and x.shape[1] <= 8192:
        from .fp8_triton import quantize_rows_triton
        return quantize_rows_triton(x, FP8, FP8_MAX, _MIN_AMAX)
    return quantize_rows_torch(x)


def fp8_linear(x: torch.Tensor, w: Fp8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ w.T (+ bias) in x's dtype, with x quantised per token."""
    lead, K = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, K)
    N = w.qweight.shape[0]
    if x2.shape[0] == 0:
        out = x2.new_empty((0, N))
    elif w.scaled_mm:
        xq, sx = quantize_rows(x2)
        # row-wise scaling produces bf16 only
        out = torch._scaled_mm(xq, w.qweight.t(), scale_a=sx, scale_b=w.scale, out_dtype=torch.bfloat16)
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
    else:
        xq, sx = quantize_rows_torch(x2)
        out = ((xq.float() @ w.qweight.float().t()) * sx * w.scale).to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, N)


def linear(x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The model's one linear: a plain tensor goes to F.linear, an Fp8Weight to fp8_linear."""
    if type(w) is Fp8Weight:
        return fp8_linear(x, w, bias)
    return F.linear(x, w, bias)


def scaled_mm_works(device: torch.device) -> bool:
    """Whether row-wise `torch._scaled_mm` runs here: CUDA, compute capability >= 8.9, and a probe GEMM that
    matches the emulation (a torch build or card without it gets the emulated path and a warning)."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm"):
        return False
    if torch.cuda.get_device_capability(device) < (8, 9):
        log.warning("fp8: compute capability %s < 8.9, no fp8 tensor cores: emulated fp8 GEMMs (slow)",
                    torch.cuda.get_device_capability(device))
        return False
    try:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(5, 64, device=device, dtype=torch.bfloat16, generator=g)
        w = torch.randn(32, 64, device=device, dtype=torch.bfloat16, generator=g)
        fast, slow = quantize_weight(w, True), quantize_weight(w, False)
        a, b = fp8_linear(x, fast).float(), fp8_linear(x, slow).float()
        ok = bool(((a - b).norm() / b.norm()) < 2e-2)
    except Exception as exc:  # noqa: BLE001 - any failure means: use the emulation
        log.warning("fp8: torch._scaled_mm with row-wise scales failed (%s): emulated fp8 GEMMs (slow)", exc)
        return False
    if not ok:
        log.warning("fp8: torch._scaled_mm disagrees with the emulation: emulated fp8 GEMMs (slow)")
    return ok


def quantize_model(model) -> dict:
    """Replace each decoder layer's linear weights (model.layers[i].qkv_w, o_w, gate_up_w, down_w) by
    Fp8Weight, one tensor at a time so the peak stays near the bf16 model. Returns what was done."""
    use_mm = scaled_mm_works(model.device)
    before = after = 0
    for L in model.layers:
        for name in LINEARS:
            w = getattr(L, name)
            if type(w) is Fp8Weight:
                continue
            # _scaled_mm wants both GEMM dimensions divisible by 16
            q = quantize_weight(w, use_mm and w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0)
            before += w.numel() * w.element_size()
            after += q.qweight.numel() + q.scale.numel() * 4
            setattr(L, name, q)
            del w
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    info = {"gemm": "scaled_mm" if use_mm else "emulated", "linear_bytes_before": before,
            "linear_bytes_after": after}
    log.info("fp8 weights: %s", info)
    return info
