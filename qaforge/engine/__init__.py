"""qaforge's native inference engine (nano-vllm style): token ids in, token ids out.

    from qaforge.engine import LLM, SamplingParams
    llm = LLM(model_path, device="cpu", dtype="float32", max_model_len=2048, max_num_seqs=256)
    outs = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=16, temperature=0.0))

`AsyncLLM` (continuous batching behind async streams) lives in `qaforge.engine.async_engine`.
"""
from .config import EngineConfig
from .llm_engine import LLM, GenerationOutput
from .sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "EngineConfig", "GenerationOutput", "AsyncLLM", "RequestOutput"]


def __getattr__(name):
    if name in ("AsyncLLM", "RequestOutput"):
        from . import async_engine
        return getattr(async_engine, name)
    raise AttributeError(name)
