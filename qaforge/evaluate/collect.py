"""Collecting answers to score: question-as-answer baseline, or greedy generation from a local model.

Local generation uses the project's engine (`qaforge.engine.LLM`, backend "native") or a plain
transformers `generate` loop (backend "hf": left padding, greedy). `backend="auto"` picks native and
falls back to hf only when the engine cannot be imported. Prompts come from `qaforge.chat` (system
prompt + non-thinking template) and answers go through `clean_answer` before anyone scores them.
Endpoint collection (OpenAI-compatible or the grader's /predict) lives in `endpoint.py`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from qaforge.chat import DEFAULT_SYSTEM_PROMPT, clean_answer, prompt_token_ids
from qaforge.modeling import pick_device, pick_dtype, resolve_model_path, torch_dtype

Backend = Literal["auto", "native", "hf"]


@dataclass
class Answer:
    text: str                          # cleaned: no think block, no special tokens
    output_tokens: int | None = None   # generated tokens (EOS excluded); None when unknown
    latency_s: float | None = None     # per request for endpoints; None for batched local generation
    finish_reason: str | None = None   # "stop" | "length" | None


@dataclass
class Collection:
    """All answers of one system (fine-tuned model, base model, baseline) to the exam, in exam order."""
    label: str
    source: str                        # model path, endpoint URL or "baseline"
    answers: list[Answer]
    wall_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # backend, device, api, model name, ...


def question_as_answer(questions: list[str]) -> Collection:
    """The course project's baseline: answer every question with the question itself."""
    return Collection("question-as-answer", "baseline", [Answer(q) for q in questions])


def pick_backend(backend: Backend) -> str:
    if backend in ("native", "hf"):
        return backend
    if backend != "auto":
        raise ValueError(f"backend must be auto, native or hf, got {backend!r}")
    try:
        from qaforge.engine import LLM, SamplingParams  # noqa: F401
    except ImportError:
        return "hf"
    return "native"


def _generate_native(path: Path, prompts: list[list[int]], max_tokens: int, batch_size: int, device: str,
                     dtype: str, eos_ids: set[int], progress: bool,
                     repetition_penalty: float = 1.0) -> tuple[list[tuple[list[int], str]], float]:
    from qaforge.engine import LLM, SamplingParams

    llm = LLM(str(path), device=device, dtype=dtype,
              max_model_len=max(len(p) for p in prompts) + max_tokens + 8, max_num_seqs=batch_size)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, repetition_penalty=repetition_penalty)
    results: list[tuple[list[int], str]] = []
    started = time.perf_counter()  # generation only: loading the model is not answering
    with tqdm(total=len(prompts), desc=f"generate {path.name} (native)", disable=not progress) as bar:
        # Chunks of a few batches keep a progress bar without starving the engine's continuous batching.
        chunk = batch_size * 4
        for start in range(0, len(prompts), chunk):
            for out in llm.generate(prompts[start:start + chunk], params):
                ids = [t for t in out.token_ids if t not in eos_ids]
                results.append((ids, out.finish_reason or "stop"))
            bar.update(min(chunk, len(prompts) - start))
    return results, time.perf_counter() - started


def _generate_hf(path: Path, tokenizer: Any, prompts: list[list[int]], max_tokens: int, batch_size: int,
                 device: str, dtype: str, eos_ids: set[int], progress: bool,
                 repetition_penalty: float = 1.0) -> tuple[list[tuple[list[int], str]], float]:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype)).to(device).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    # A fresh greedy config: Qwen ships sampling defaults (temperature 0.6, top_p 0.95) we must not inherit.
    gen_config = GenerationConfig(do_sample=False, max_new_tokens=max_tokens, eos_token_id=sorted(eos_ids),
                                  pad_token_id=pad_id, repetition_penalty=repetition_penalty)
    # Longest first, so batches hold similar lengths (less padding) and an OOM shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[tuple[list[int], str] | None] = [None] * len(prompts)
    started = time.perf_counter()
    with tqdm(total=len(prompts), desc=f"generate {path.name} (hf)", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            # Left padding: every prompt ends at the same column, so new tokens append cleanly.
            input_ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in batch])
            attention = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch])
            with torch.no_grad():
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                     generation_config=gen_config)
            for row, i in zip(out[:, width:].tolist(), batch):
                ids, reason = [], "length"
                for token in row:
                    if token in eos_ids:
                        reason = "stop"
                        break
                    ids.append(token)
                results[i] = (ids, reason)
            bar.update(len(batch))
    return results, time.perf_counter() - started  # type: ignore[return-value]


def eos_token_ids(path: Path, tokenizer: Any) -> set[int]:
    """EOS ids from generation_config.json / config.json (Qwen3 stops on <|im_end|> and <|endoftext|>)."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        file = path / name
        if file.is_file():
            value = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError(f"{path}: no eos_token_id in generation_config.json, config.json or the tokenizer")
    return ids


def collect_from_model(model: str, questions: list[str], label: str, max_tokens: int = 384,
                       backend: Backend = "auto", batch_size: int | None = None, device: str = "auto",
                       system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, progress: bool = True,
                       repetition_penalty: float = 1.0) -> Collection:
    """Greedy answers of a local model to every question, cleaned, in question order.
    `batch_size` None: 256 sequences at once on a GPU (the engine batches continuously; 16 would leave
    it mostly idle), 16 on CPU (memory)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model)
    chosen = pick_backend(backend)
    device = pick_device(device)
    dtype = pick_dtype("auto", device)
    batch_size = batch_size or (256 if device.startswith("cuda") else 16)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompts = [prompt_token_ids(tokenizer, q, system_prompt) for q in questions]
    eos_ids = eos_token_ids(path, tokenizer)
    if chosen == "native":
        generated, wall = _generate_native(path, prompts, max_tokens, batch_size, device, dtype, eos_ids, progress,
                                           repetition_penalty)
    else:
        generated, wall = _generate_hf(path, tokenizer, prompts, max_tokens, batch_size, device, dtype, eos_ids,
                                       progress, repetition_penalty)
    answers = [Answer(clean_answer(tokenizer.decode(ids, skip_special_tokens=True)), len(ids), None, reason)
               for ids, reason in generated]
    return Collection(label, str(path), answers, wall,
                      {"backend": chosen, "device": device, "max_tokens": max_tokens,
                       "batch_size": batch_size, "repetition_penalty": repetition_penalty,
                       "system_prompt": system_prompt, "tokenizer": str(path)})
