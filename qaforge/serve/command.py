"""`qaforge serve`: start the HTTP server (grader API + OpenAI API).

Every flag left out falls back to its QAFORGE_* environment variable, then to the default, so
`qaforge serve` and `uvicorn serve:app` read the same settings. Heavy imports stay inside.
"""

from __future__ import annotations

from typing import Optional

import typer


def serve(
    model: Optional[str] = typer.Option(None, help="HF model directory or name (QAFORGE_MODEL)"),
    engine: Optional[str] = typer.Option(None, help="native | vllm (QAFORGE_ENGINE)"),
    host: str = typer.Option("0.0.0.0", help="interface to bind"),
    port: int = typer.Option(8000, help="TCP port"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (QAFORGE_DEVICE)"),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
    max_tokens: Optional[int] = typer.Option(None, help="default answer budget (384)"),
    repetition_penalty: Optional[float] = typer.Option(None, help="default repetition penalty (1.0: off)"),
    predict_thinking: Optional[bool] = typer.Option(
        None, help="/predict in thinking mode; answers stay the content only (QAFORGE_PREDICT_THINKING)"),
    max_model_len: Optional[int] = typer.Option(None, help="context: prompt + answer (512)"),
    max_num_seqs: Optional[int] = typer.Option(None, help="sequences batched at once"),
    max_pending: Optional[int] = typer.Option(None, help="sequences admitted before 429"),
    system_prompt: Optional[str] = typer.Option(None, help="system prompt ('' for none)"),
    served_model_name: Optional[str] = typer.Option(None, help="name in /v1/models"),
    quantization: Optional[str] = typer.Option(None, help="fp8: FP8 weights (the native engine and vLLM)"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="vLLM memory fraction"),
    enforce_eager: Optional[bool] = typer.Option(None, help="vLLM: no CUDA graphs"),
    request_timeout: Optional[float] = typer.Option(None, help="seconds per request"),
    warmup: Optional[bool] = typer.Option(None, help="warm up before reporting ready"),
    tensor_parallel_size: Optional[int] = typer.Option(
        None, help="vLLM: split the model over N GPUs (QAFORGE_TENSOR_PARALLEL_SIZE)"),
    data_parallel_size: Optional[int] = typer.Option(
        None, help="vLLM: M model replicas behind vLLM's own balancer (QAFORGE_DATA_PARALLEL_SIZE)"),
    api_key: Optional[str] = typer.Option(
        None, help="require 'Authorization: Bearer KEY' on /v1/* (QAFORGE_API_KEY)", show_default=False),
    protect_grader: Optional[bool] = typer.Option(
        None, "--protect-grader", help="the grader routes (GET /, POST /predict) need the key too"),
    log_level: Optional[str] = typer.Option(None, help="debug | info | warning"),
    lora: Optional[list[str]] = typer.Option(None, help="LoRA adapter served unmerged, NAME=PATH; repeatable "
                                             "(QAFORGE_LORA='a=/p,b=/q'); requests pick it by model"),
    predict_lora: Optional[str] = typer.Option(None, help="the --lora adapter /predict answers with (base if unset)"),
    graceful_timeout: float = typer.Option(60.0, help="seconds to finish in-flight requests on stop"),
) -> None:
    """Serve a model over HTTP: GET / and POST /predict (grader), /v1/* (OpenAI), /health, /metrics."""
    import uvicorn

    from qaforge.serve.app import configure_logging, create_app
    from qaforge.serve.settings import ServeSettings

    overrides = dict(model=model, engine=engine, device=device, dtype=dtype, max_tokens=max_tokens,
                     repetition_penalty=repetition_penalty, predict_thinking=predict_thinking,
                     max_model_len=max_model_len, max_num_seqs=max_num_seqs, max_pending=max_pending,
                     system_prompt=system_prompt, served_model_name=served_model_name,
                     quantization=quantization, gpu_memory_utilization=gpu_memory_utilization,
                     enforce_eager=enforce_eager, request_timeout=request_timeout, warmup=warmup,
                     tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size,
                     api_key=api_key, protect_grader=protect_grader, log_level=log_level,
                     lora=",".join(lora) if lora else None, predict_lora=predict_lora)
    try:
        settings = ServeSettings.from_env(**overrides)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not settings.model:
        raise typer.BadParameter("no model: pass --model or set QAFORGE_MODEL")
    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level,
                timeout_graceful_shutdown=graceful_timeout, backlog=4096)
