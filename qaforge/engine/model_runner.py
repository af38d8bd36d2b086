"""Owns the model, the paged KV cache and the CUDA graphs; turns a scheduled batch into sampled token ids.

KV cache: one tensor [2, layers, num_blocks + 1, block_size, kv_heads, head_dim]; the extra block is a
trash block that padded rows of a CUDA-graph batch write into. Decode steps up to cuda_graph_max_bs
sequences replay a captured graph (batch padded to the next captured size); their inputs travel in one
host-to-device copy. One host sync per step: reading the sampled token ids.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .config import EngineConfig
from .layers.attn_meta import AttnMeta
from .layers.fp8 import check_kv_backend, kv_torch_dtype, quantize_model
from .layers.ops import TorchOps, triton_ops
from .models.qwen import QwenForCausalLM
from .sampler import Sampler
from .sequence import Sequence


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


class ModelRunner:
    def __init__(self, config: EngineConfig, block_table: np.ndarray | None = None):
        self.config = c = config
        self.device = torch.device(c.device)
        self.dtype = getattr(torch, c.dtype)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda:
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        torch.manual_seed(c.seed)
        t0 = time.perf_counter()
        self.model = QwenForCausalLM(c.model, c.hf_config, self.dtype, self.device, max_positions=c.max_model_len)
        # fp8 weights replace the loaded ones before the KV cache is sized, so the memory they free goes to KV
        self.fp8_info = quantize_model(self.model) if c.quantization == "fp8" else None
        self.load_s = time.perf_counter() - t0
        backend = c.attention_backend
        if backend == "auto":
            ok = self.is_cuda and self.dtype in (torch.bfloat16, torch.float16) and _triton_available()
            backend = "triton" if ok else "torch"
        if backend == "triton" and not self.is_cuda:
            raise ValueError("attention_backend 'triton' needs a CUDA device")
        self.backend = backend
        self.model.ops = triton_ops() if backend == "triton" else TorchOps
        self.sampler = Sampler(self.device, c.max_num_seqs)
        a = self.model.args
        self.block_size = c.block_size
        self.kv_dtype = kv_torch_dtype(c.kv_cache_dtype, self.dtype)
        check_kv_backend(self.kv_dtype, backend, self.device)
        self.block_bytes = 2 * a.num_hidden_layers * c.block_size * a.num_key_value_heads * a.head_dim \
            * torch.empty((), dtype=self.kv_dtype).element_size()
        self.num_blocks = self._num_kv_blocks()
        self.kv_cache = torch.zeros((2, a.num_hidden_layers, self.num_blocks + 1, c.block_size,
                                     a.num_key_value_heads, a.head_dim), dtype=self.kv_dtype, device=self.device)
        self.trash_slot = self.num_blocks * c.block_size
        self.block_table = block_table  # set by the engine (BlockManager.table)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.graph_sizes: list[int] = []
        self.graph_s = 0.0
        self.lora = None  # layers.lora.LoraWeights once adapters are registered (load_lora)

    # ------------------------------------------------------------------ KV sizing
    def _num_kv_blocks(self) -> int:
        c = self.config
        if c.num_kvcache_blocks is not None:
            return int(c.num_kvcache_blocks)
        need_one = -(-c.max_model_len // c.block_size)
        if not self.is_cuda:
            budget = int(c.kv_cache_memory_gb * 2**30) // self.block_bytes
            return max(need_one, min(budget, c.max_num_seqs * c.max_blocks_per_seq))
        # profile a full-size prefill with a temporary cache, then give the KV cache what is left
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        n = max(1, min(c.max_num_batched_tokens // c.max_model_len, c.max_num_seqs))
        a = self.model.args
        tmp_blocks = n * c.max_blocks_per_seq
        tmp = torch.zeros((2, a.num_hidden_layers, tmp_blocks + 1, c.block_size, a.num_key_value_heads, a.head_dim),
                          dtype=self.kv_dtype, device=self.device)
        seqs_len = c.max_model_len
        bt = torch.arange(tmp_blocks, device=self.device, dtype=torch.int64).view(n, -1)
        pos = torch.arange(seqs_len, device=self.device).repeat(n)
        slots = (torch.arange(n, device=self.device)[:, None] * (c.max_blocks_per_seq * c.block_size)
                 + torch.arange(seqs_len, device=self.device)[None, :]).reshape(-1)
        meta = AttnMeta(True, slots, torch.full((n,), seqs_len, dtype=torch.int64, device=self.device), bt,
                        torch.arange(0, (n + 1) * seqs_len, seqs_len, device=self.device, dtype=torch.int64),
                        seqs_len, seqs_len)
        ids = torch.randint(0, a.vocab_size, (n * seqs_len,), device=self.device)
        with torch.inference_mode():
            h = self.model.forward(ids, pos, meta, tmp)
            self.model.compute_logits(h[meta.cu_seqlens_q[1:] - 1])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del tmp, h
        torch.cuda.empty_cache()
        cur = torch.cuda.memory_allocated()
        free, total = torch.cuda.mem_get_info()
        used = total - free
        # logits of a full decode batch, the sampler's fp32 temporaries (it works in chunks of 256 rows) and
        # its repetition-penalty mask (one bool row per sequence slot)
        extra = c.max_num_seqs * a.vocab_size * 3 + 6 * min(256, c.max_num_seqs) * a.vocab_size * 4
        avail = total * c.gpu_memory_utilization - used - (peak - cur) - extra
        blocks = int(avail // self.block_bytes)
        if blocks < need_one:
            raise RuntimeError(f"not enough GPU memory for the KV cache ({blocks} blocks < {need_one})")
        return blocks

    # ------------------------------------------------------------------ inputs
    def _h2d(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        # each array starts at a 128-byte boundary: Triton specializes kernels on pointer alignment
        sizes = [-(-x.size // 16) * 16 for x in arrays]
        flat = np.zeros(sum(sizes), dtype=np.int64)
        off = 0
        for x, n in zip(arrays, sizes):
            flat[off: off + x.size] = x.reshape(-1)
            off += n
        t = torch.from_numpy(flat)
        if self.is_cuda:
            t = t.pin_memory().to(self.device, non_blocking=True)
        out, off = [], 0
        for x, n in zip(arrays, sizes):
            out.append(t[off: off + x.size].view(x.shape))
            off += n
        return out

    def _bt_width(self, max_ctx: int) -> int:
        return min(self.config.max_blocks_per_seq, (-(-max_ctx // self.block_size) + 15) // 16 * 16)

    def prepare_prefill(self, seqs: list[Sequence]):
        bs = self.block_size
        ids: list[int] = []
        starts = np.fromiter((s.num_cached_tokens for s in seqs), dtype=np.int64, count=len(seqs))
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        rows = np.fromiter((s.row for s in seqs), dtype=np.int64, count=len(seqs))
        for s in seqs:
            ids.extend(s.token_ids[s.num_cached_tokens:])
        qlens = lens - starts
        cu = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(qlens, out=cu[1:])
        total = int(cu[-1])
        positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1] - starts, qlens)
        tok_rows = np.repeat(rows, qlens)
        slots = self.block_table[tok_rows, positions // bs].astype(np.int64) * bs + positions % bs
        max_ctx = int(lens.max())
        bt = self.block_table[rows, : self._bt_width(max_ctx)]
        t_ids, t_pos, t_slots, t_ctx, t_bt, t_cu, t_last = self._h2d(
            [np.asarray(ids, dtype=np.int64), positions, slots, lens, bt, cu, cu[1:] - 1])
        meta = AttnMeta(True, t_slots, t_ctx, t_bt, t_cu, int(qlens.max()), max_ctx)
        return t_ids, t_pos, meta, t_last

    def prepare_decode(self, seqs: list[Sequence]):
        bs = self.block_size
        n = len(seqs)
        ids = np.fromiter((s.last_token for s in seqs), dtype=np.int64, count=n)
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
        rows = np.fromiter((s.row for s in seqs), dtype=np.int64, count=n)
        pos = lens - 1
        slots = self.block_table[rows, pos // bs].astype(np.int64) * bs + pos % bs
        max_ctx = int(lens.max())
        bt = self.block_table[rows, : self._bt_width(max_ctx)]
        return ids, pos, slots, lens, bt, max_ctx

    # ------------------------------------------------------------------ LoRA
    def load_lora(self, adapters: dict) -> None:
        """Register LoRA adapters (name -> PEFT directory); the CUDA graphs stay base-model only."""
        from .layers.lora import load_lora_weights

        self.lora = load_lora_weights(adapters, self.config.hf_config, self.dtype, self.device)

    def _lora_batch(self, seqs: list[Sequence], meta: AttnMeta):
        if self.lora is None:
            return None
        return self.lora.batch([s.lora_id for s in seqs], meta.cu_seqlens_q, int(meta.slot_mapping.shape[0]))

    # ------------------------------------------------------------------ running
    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool) -> list[int]:
        model = self.model
        if is_prefill:
            ids, pos, meta, last = self.prepare_prefill(seqs)
            model.lora_batch = self._lora_batch(seqs, meta)
            hidden = model.forward(ids, pos, meta, self.kv_cache)[last]
        else:
            ids, pos, slots, lens, bt, max_ctx = self.prepare_decode(seqs)
            n = len(seqs)
            # the graphs hold no LoRA update: a batch with adapter rows runs eagerly
            with_lora = self.lora is not None and any(s.lora_id for s in seqs)
            if self.graphs and n <= self.graph_sizes[-1] and not with_lora:
                hidden = self._replay(ids, pos, slots, lens, bt)[:n]
            else:
                cu = np.arange(n + 1, dtype=np.int64)
                t_ids, t_pos, t_slots, t_ctx, t_bt, t_cu = self._h2d([ids, pos, slots, lens, bt, cu])
                meta = AttnMeta(False, t_slots, t_ctx, t_bt, t_cu, 1, max_ctx)
                model.lora_batch = self._lora_batch(seqs, meta)
                hidden = model.forward(t_ids, t_pos, meta, self.kv_cache)
        model.lora_batch = None
        logits = model.compute_logits(hidden)
        return self.sampler(logits, seqs).tolist()

    # ------------------------------------------------------------------ CUDA graphs
    def capture_cudagraphs(self) -> None:
        c = self.config
        if not self.is_cuda or c.enforce_eager or self.backend != "triton":
            return
        t0 = time.perf_counter()
        max_bs = min(c.cuda_graph_max_bs, c.max_num_seqs)
        sizes = sorted({s for s in [1, 2, 4, 8] + list(range(16, max_bs + 1, 16)) if s <= max_bs} | {max_bs})
        MB = c.max_blocks_per_seq
        self._gmax = max_bs
        self._gbuf_host = torch.zeros(4 * max_bs + max_bs * MB, dtype=torch.int64).pin_memory()
        self._gbuf_np = self._gbuf_host.numpy()
        self._gbuf = torch.zeros_like(self._gbuf_host, device=self.device)
        buf = self._gbuf
        ids, pos, slots, ctx = (buf[i * max_bs:(i + 1) * max_bs] for i in range(4))
        bt = buf[4 * max_bs:].view(max_bs, MB)
        slots.fill_(self.trash_slot)
        pool = None
        with torch.inference_mode():
            for bs in reversed(sizes):
                meta = AttnMeta(False, slots[:bs], ctx[:bs], bt[:bs], None, 1, c.max_model_len)
                self.model.forward(ids[:bs], pos[:bs], meta, self.kv_cache)  # warm-up (compiles kernels)
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool):
                    out = self.model.forward(ids[:bs], pos[:bs], meta, self.kv_cache)
                if pool is None:
                    pool = g.pool()
                self.graphs[bs] = (g, out)
        torch.cuda.synchronize()
        self.graph_sizes = sizes
        self.graph_s = time.perf_counter() - t0

    def _replay(self, ids, pos, slots, lens, bt) -> torch.Tensor:
        n = len(ids)
        bs = next(s for s in self.graph_sizes if s >= n)
        M, MB = self._gmax, self.config.max_blocks_per_seq
        h = self._gbuf_np
        for i, (arr, fill) in enumerate(((ids, 0), (pos, 0), (slots, self.trash_slot), (lens, 0))):
            h[i * M: i * M + n] = arr
            h[i * M + n: i * M + bs] = fill
        w = bt.shape[1]
        h[4 * M: 4 * M + n * MB].reshape(n, MB)[:, :w] = bt
        k = 4 * M + n * MB
        self._gbuf[:k].copy_(self._gbuf_host[:k], non_blocking=True)
        g, out = self.graphs[bs]
        g.replay()
        return out
