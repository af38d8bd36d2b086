# qaforge inference image for one NVIDIA GPU (the course grader: RTX 5090, no internet at run time).
# Built on the vLLM OpenAI image so CUDA, PyTorch and vLLM match; the model is baked in at build time.
#   ./build.sh                                   # Qwen/Qwen3-0.6B from ModelScope
#   MODEL=runs/demo/merged ./build.sh            # a local merged model directory
#   docker run --gpus all -p 8000:8000 qaforge   # GET / -> {"status": "batch"} once warmed up
ARG VLLM_VERSION=v0.11.0
FROM vllm/vllm-openai:${VLLM_VERSION}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# qaforge without its training dependencies: the image's own torch/transformers/vLLM must stay
# untouched (--no-deps); the server needs only what vLLM's image lacks.
COPY pyproject.toml README.md ./
# The package carries its data files (warm-up questions, profiles, sample textbook): qaforge/data, qaforge/profiles.
COPY qaforge ./qaforge
COPY serve.py ./
RUN pip install --no-deps -e . \
    && pip install "typer>=0.12" "rich>=13" "modelscope>=1.20" "huggingface_hub>=0.25"

# The model: a local directory staged by build.sh into build/docker-model, else downloaded here.
ARG MODEL=Qwen/Qwen3-0.6B
ARG MODEL_SOURCE=modelscope
COPY build/docker-model/ /models/model/
RUN if [ ! -f /models/model/config.json ]; then \
        qaforge download "${MODEL}" --source "${MODEL_SOURCE}" --out /models/model; \
    fi \
    && test -f /models/model/config.json

# The seed's vLLM settings: FP8 weights, 95 % of GPU memory, 512-token context, big batches,
# prefix caching (the shared system prompt) and CUDA graphs (enforce_eager off).
# DL3064 reads "TOKENS" in the names as a secret; these are token counts.
# hadolint ignore=DL3064
ENV QAFORGE_MODEL=/models/model \
    QAFORGE_ENGINE=vllm \
    QAFORGE_DTYPE=bfloat16 \
    QAFORGE_QUANTIZATION=fp8 \
    QAFORGE_GPU_MEMORY_UTILIZATION=0.95 \
    QAFORGE_MAX_MODEL_LEN=512 \
    QAFORGE_MAX_NUM_SEQS=4096 \
    QAFORGE_MAX_NUM_BATCHED_TOKENS=16384 \
    QAFORGE_ENABLE_PREFIX_CACHING=1 \
    QAFORGE_ENFORCE_EAGER=0 \
    QAFORGE_MAX_TOKENS=384 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

EXPOSE 8000
# The vLLM image's entrypoint starts its own server; ours is the grader's CMD.
ENTRYPOINT []
CMD ["uvicorn", "serve:app", "--host", "0.0.0.0", "--port", "8000"]
