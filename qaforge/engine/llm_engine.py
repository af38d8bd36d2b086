"""The synchronous engine: `LLM(model_path, ...)`, `llm.generate(prompts, params)`, and `step()` for loops."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence as Seq

from .block_manager import BlockManager
from .config import EngineConfig
from .model_runner import ModelRunner
from .sampling_params import SamplingParams
from .overlap import OverlapPipeline
from .scheduler import Batch, Scheduler
from .sequence import Sequence

log = logging.getLogger("qaforge.engine")


@dataclass
class GenerationOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]          # generated ids; a stop/EOS id that ended the request is included
    finish_reason: str            # "stop" | "length" | "abort"
    num_cached_tokens: int = 0    # prompt tokens served from the prefix cache (last prefill)


class LLM:
    """Native paged-KV engine over token ids. Keyword arguments are `EngineConfig` fields."""

    def __init__(self, model: str, **kwargs):
        t0 = time.perf_counter()
        lora = kwargs.pop("lora", None)  # LoRA adapters: {name: PEFT adapter directory}
        config = kwargs.pop("config", None) or EngineConfig(model=str(model), **kwargs)
        self.config = config
        self.runner = ModelRunner(config)
        if lora:
            self.runner.load_lora(dict(lora))
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.max_num_seqs,
                                          config.max_blocks_per_seq, config.enable_prefix_caching)
        self.runner.block_table = self.block_manager.table
        self.scheduler = Scheduler(config, self.block_manager)
        self.runner.capture_cudagraphs()
        self.vocab_size = self.runner.model.args.vocab_size
        self.eos_token_ids = config.eos_token_ids
        self.num_steps = 0
        self.num_prefill_tokens = 0
        self.num_generated_tokens = 0
        self.pipeline = OverlapPipeline(self) if config.async_scheduling else None
        self.startup_s = time.perf_counter() - t0
        r = self.runner
        # where startup went (the server logs it; the GPU benchmark prints it)
        self.startup = {"total_s": round(self.startup_s, 3), "load_s": round(r.load_s, 3),
                        "kv_profile_s": round(r.kv_profile_s, 3), "kv_alloc_s": round(r.kv_alloc_s, 3),
                        "graphs_s": round(r.graph_s, 3), "graphs_captured": len(r.graphs),
                        "graph_sizes": len(r.graph_sizes)}
        log.info("engine startup: %s", self.startup)

    @classmethod
    def from_config(cls, config: EngineConfig, lora: dict | None = None) -> "LLM":
        return cls(config.model, config=config, lora=lora)

    @property
    def lora_names(self) -> list[str]:
        return self.runner.lora.names if self.runner.lora is not None else []

    # ------------------------------------------------------------------ requests
    def make_sequence(self, prompt_token_ids, params: SamplingParams | None = None,
                      request_id: str | None = None, lora: str | None = None) -> Sequence:
        """A validated sequence; `lora` names a registered adapter (None: the base model)."""
        if lora is not None and self.runner.lora is None:
            raise ValueError(f"unknown LoRA adapter {lora!r}: this engine has none registered")
        lora_id = self.runner.lora.adapter_id(lora) if self.runner.lora is not None else 0
        ids = list(prompt_token_ids)
        if not ids:
            raise ValueError("empty prompt")
        for t in ids:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.vocab_size:
                raise ValueError(f"prompt token ids must be ints in [0, {self.vocab_size}), got {t!r}")
        if len(ids) >= self.config.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; max_model_len is {self.config.max_model_len} "
                             "(prompt plus at least one generated token)")
        return Sequence(ids, params or SamplingParams(), request_id, lora_id)

    def add_request(self, prompt_token_ids, params: SamplingParams | None = None,
                    request_id: str | None = None, lora: str | None = None) -> Sequence:
        return self.add_sequence(self.make_sequence(prompt_token_ids, params, request_id, lora))

    def add_sequence(self, seq: Sequence) -> Sequence:
        """Queue a sequence made (and validated) by `make_sequence`, e.g. on another thread first."""
        self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence) -> bool:
        return self.scheduler.abort(seq)

    def step(self) -> list[tuple[Sequence, int]]:
        """Run one scheduled batch; return (sequence, new token id) for every sequence that got a token
        (a prompt chunk that does not end its prompt gets none). With async scheduling the pairs are those of
        the step that completed in this call, while the next decode step already runs (engine/overlap.py)."""
        if self.pipeline is not None:
            return self.pipeline.step(self)
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        return self.run_batch(batch)

    def run_batch(self, batch: Batch) -> list[tuple[Sequence, int]]:
        """The synchronous step of a scheduled batch: run, read the ids, postprocess."""
        tokens = self.runner.run(batch)
        sampled = batch.sampled
        self.scheduler.postprocess(batch, tokens)
        self.count_step(sum(batch.num_new[batch.num_decodes:]), len(tokens))
        return list(zip(sampled, tokens))

    def count_step(self, prefill_tokens: int, generated: int) -> None:
        self.num_steps += 1
        self.num_prefill_tokens += prefill_tokens
        self.num_generated_tokens += generated

    def is_finished(self) -> bool:
        return self.scheduler.is_finished()

    def bind_thread(self) -> None:
        """Make the calling thread launch its kernels on this engine's GPU (a new thread starts on
        the current default device, which need not be ours); nothing to do on CPU."""
        if self.runner.is_cuda:
            import torch

            torch.cuda.set_device(self.runner.device)

    def generate(self, prompts: Seq[Seq[int]], sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = False, lora: str | None | Seq[str | None] = None) -> list[GenerationOutput]:
        """`lora`: one adapter name (or None) for every prompt, or one per prompt."""
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]  # one prompt
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError("one SamplingParams per prompt, or one for all")
        loras = [lora] * len(prompts) if lora is None or isinstance(lora, str) else list(lora)
        if len(loras) != len(prompts):
            raise ValueError("one LoRA adapter name (or None) per prompt, or one for all")
        seqs = [self.make_sequence(p, sp, lora=a) for p, sp, a in zip(prompts, sampling_params, loras)]
        for s in seqs:
            self.scheduler.add(s)
        bar = None
        if use_tqdm:
            from tqdm import tqdm
            bar = tqdm(total=len(seqs), desc="generate")
        while not self.scheduler.is_finished():
            out = self.step()
            if bar is not None:
                bar.update(sum(1 for s, _ in out if s.is_finished))
        if bar is not None:
            bar.close()
        return [GenerationOutput(s.request_id, s.prompt_token_ids, s.completion_token_ids, s.finish_reason or "length",
                                 s.num_cached_tokens) for s in seqs]

    # ------------------------------------------------------------------ metrics
    def stats(self) -> dict:
        bm = self.block_manager
        return {
            "waiting": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "kv_usage": round(bm.usage, 4),
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_free": bm.num_free_blocks,
            "block_size": bm.block_size,
            "prefix_cache_hit_tokens": bm.prefix_hit_tokens,
            "prefix_cache_query_tokens": bm.prefix_query_tokens,
            "prefix_cache_hit_rate": round(bm.prefix_hit_tokens / bm.prefix_query_tokens, 4)
            if bm.prefix_query_tokens else 0.0,
            "num_preemptions": self.scheduler.num_preemptions,
            "num_steps": self.num_steps,
            "prefill_tokens": self.num_prefill_tokens,
            "generated_tokens": self.num_generated_tokens,
            "overlapped_steps": self.pipeline.num_overlapped if self.pipeline is not None else 0,
        }
