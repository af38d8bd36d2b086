#!/usr/bin/env bash
# Issue 13's speed figures on one GPU machine, stage by stage (docs/benchmarks.md reports what they measured).
# Usage, from the repository root:  bash scripts/speed/run.sh STAGE [STAGE ...]
# Environment: W (work folder, default /tmp/sp), OUT (result archives, default $W/out), TOK (a folder with a
# real Qwen tokenizer: tokenizer.json, tokenizer_config.json, chat_template.jinja), EXAM (real exam questions,
# alpaca jsonl), WHEELS (wheels the GPU image lacks; scripts/speed/prepare.sh makes them, the tokenizer and the
# data). The model is Qwen3-0.6B with random bf16 weights (speed does not depend on the weights' values), given
# the real tokenizer so that HTTP figures count real tokens.
set -uo pipefail
W=${W:-/tmp/sp}; OUT=${OUT:-$W/out}; TOK=${TOK:-$PWD/.tok}; EXAM=${EXAM:-/tmp/rwdata/exam.jsonl}
mkdir -p "$W"/{log,res} "$OUT"
export PYTHONPATH="$W/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_WORKER_MULTIPROC_METHOD=spawn
MODEL=/tmp/qwen3rand; MODEL2=/tmp/qwen2rand
PY=python3

stage_wheels() {
  local whl=(${WHEELS:-/tmp/wh}/*.whl)
  [ -f /tmp/vllm-0.24.0-cp38-abi3-manylinux_2_28_x86_64.whl ] && whl+=(/tmp/vllm-0.24.0-cp38-abi3-manylinux_2_28_x86_64.whl)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" "${whl[@]}" 2>&1 | tail -3
  $PY -c "import fastapi, jieba, openai, llguidance; print('deps ok')"
}
stage_model() {  # the random-weight Qwen3-0.6B, with the real tokenizer beside it
  $PY -c "from qaforge.bench.engine import make_random_qwen3_06b as m; m('$MODEL')"
  cp "$TOK"/tokenizer.json "$TOK"/tokenizer_config.json "$TOK"/chat_template.jinja "$MODEL"/ && ls "$MODEL"
}
stage_model2() {  # Qwen2.5-0.5B's architecture (the real proxy's config.json in $TOK), random bf16 weights
  $PY -c "
import torch
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.from_pretrained('$TOK'); torch.manual_seed(0)
with torch.device('cuda'):
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
m.save_pretrained('$MODEL2')"
  cp "$TOK"/tokenizer.json "$TOK"/tokenizer_config.json "$TOK"/chat_template.jinja "$TOK"/generation_config.json "$MODEL2"/
  ls "$MODEL2"
}
stage_gputests() {  # the CUDA tests of the new engine paths (fp8, LoRA, chunked prefill)
  local files=(${GPUTESTS:-tests/test_engine_fp8.py tests/test_engine_lora.py tests/test_engine_chunked.py tests/test_engine_qwen2.py
    tests/test_engine_overlap.py tests/test_engine_gemv.py tests/test_train_fused.py})
  $PY -m pytest -q -s -m gpu -p no:cacheprovider -o log_cli=false --tb=short "${files[@]}" 2>&1 \
    | grep -vE "^\s*$|Warning|warnings\.warn|Loading weights|Writing model" | tail -30  # keeps "N passed, M warnings"
}
stage_engines() {  # CONFIGS: --config args (no spaces inside); the defaults: native async/sync beside vLLM bf16 and the seed config
  local cfg=(${CONFIGS:-})
  # (native = async scheduling on, the CUDA default since 2026-12-03; native_sync turns it off; native_gemv: the
  # few-row GEMV of layers/gemv.py, off by default until this stage has measured it)
  [ ${#cfg[@]} -eq 0 ] && cfg=(--config 'native:{"max_num_seqs": 512}' --config 'native_sync:{"max_num_seqs": 512, "async_scheduling": false}'
    --config 'native_1024:{}' --config 'native_gemv:{"max_num_seqs": 512, "gemv_max_rows": 4}'
    --config 'vllm_bf16:{"max_num_seqs": 512}'
    --config 'vllm_fp8:{"max_num_seqs": 4096, "quantization": "fp8", "gpu_memory_utilization": 0.95}')
  # the whole log stays in res/ (a failed vLLM start names its root cause far above the traceback's end)
  $PY -m scripts.engines_same_run --model "$MODEL" "${cfg[@]}" ${WORKLOADS:+--workloads $WORKLOADS} --timeout 240 \
    --out "$W/res/engines.json" 2>&1 \
    | tee "$W/res/engines_full.log" | grep -vE "INFO|WARNING|it/s\]" | tail -40
}
stage_train() {  # fast_v7 end to end on TRAIN_MODEL (default: the Qwen2.5 shape), seed lengths: plain HF + PEFT (eager and
  # torch.compile), qaforge cold and its second run (warm compile cache); the batch-shape count first (CPU, seconds)
  $PY -m scripts.bench_train.shapes --tokenizer "$TOK" --data "${TRAIN_DATA:-/tmp/rwdata/train.jsonl}" \
    > "$W/res/train_shapes.json" 2>&1; tail -c 600 "$W/res/train_shapes.json"
  $PY -m scripts.bench_train --model "${TRAIN_MODEL:-$MODEL2}" --data "${TRAIN_DATA:-/tmp/rwdata/train.jsonl}" --exam "$EXAM" \
    --out "$W/res/bench_train" ${BENCH_ARGS:---budget-s 420 --timeout-s 200} \
    2>&1 | grep -vE "it/s\]|Warning" | tail -40
}
stage_profile() {  # where a step's time goes: fast_v7 (compiled, then eager) profiled over steps 40..45 on the Qwen2.5
  # shape, then the kernels inside the engine's decode graph at batch 1 and 16 (scripts/profile_engine_gpu.py)
  for c in ${PROF_MODES:-compile no-compile}; do
    $PY -m qaforge train --profile fast_v7 --model "${TRAIN_MODEL:-$MODEL2}" --data "${TRAIN_DATA:-/tmp/rwdata/train.jsonl}" \
      --exam "$EXAM" --output-dir "$W/res/prof_$c" --max-steps ${PROF_STEPS:-60} --no-rouge --$c \
      --set profile_steps=40-46 --set tensorboard=false 2>&1 | grep -E "step profile|Error|error" | tail -5
    head -c 5000 "$W/res/prof_$c/step_profile.txt"; cat "$W/res/prof_$c/step_profile.json"
    rm -rf "$W/res/prof_$c/merged_model" "$W/res/prof_$c"/checkpoint-* "$W/res/prof_$c"/adapter_model.safetensors
  done
  [ -n "${PROF_ENGINE-1}" ] && OUT="$W/res" $PY -m scripts.profile_engine_gpu --kernels-only 2>&1 | grep -E "^\[|us  x" | head -60
}
wait_ready() {  # url [pid]: seconds until GET / answers 200 (the grader's "ready"); gives up at once if pid exits
  $PY -c "import os,sys,time,httpx
t=time.time()
pid = int(sys.argv[2]) if len(sys.argv) > 2 else None
while True:
    try:
        if httpx.get(sys.argv[1], timeout=2).status_code == 200: break
    except httpx.HTTPError: pass
    if pid is not None and not os.path.exists(f'/proc/{pid}'): sys.exit(f'server (pid {pid}) exited before ready')
    if time.time() - t > 300: sys.exit('not ready after 300 s')
    time.sleep(0.2)
print(f'ready after {time.time() - t:.1f} s (HTTP GET / = 200)')" "$@"
}
stage_serve() {  # the grader over HTTP (192 questions, x3) and the same prompts through the engine alone
  head -192 "$EXAM" > "$W/exam192.jsonl"
  setsid $PY -m qaforge serve --model "$MODEL" --engine native --port 8000 --max-model-len 1024 --max-num-seqs 512 \
    ${SERVE_ARGS:-} > "$W/log/serve.log" 2>&1 & echo $! > "$W/serve.pid"
  wait_ready http://127.0.0.1:8000/
  grep -iE "ready|startup|load|graph|warm" "$W/log/serve.log" | tail -8
  $PY -m qaforge eval --grader http://127.0.0.1:8000 --data "$W/exam192.jsonl" --tokenizer "$MODEL" --repeat 3 \
    --out "$W/res/grader_native" 2>&1 | tail -12
  $PY -m scripts.soak run --url http://127.0.0.1:8000 --exam "$EXAM" --minutes ${SOAK_MIN:-2} --clients 8 --batch 64 \
    --server-pid "$(cat $W/serve.pid)" --out "$W/res/soak.json" 2>&1 | tail -12
  kill -TERM -- -"$(cat $W/serve.pid)"; sleep 3
  $PY -m scripts.soak restart --exam "$EXAM" --batch 192 --kill-after 1.5 --out "$W/res/restart.json" -- \
    --model "$MODEL" --engine native --max-model-len 1024 --max-num-seqs 512 2>&1 | tail -3
  $PY -m scripts.grader_engine_alone --model "$MODEL" --data "$W/exam192.jsonl" --out "$W/res/grader_engine.json" \
    --max-num-seqs 512 2>&1 | tail -5
}
stage_grader_native() {  # the grader over HTTP only, once per engine-args JSON in GRADER_CONFIGS (label=json without spaces, space-separated)
  head -192 "$EXAM" > "$W/exam192.jsonl"
  local configs=${GRADER_CONFIGS-}
  [ -n "$configs" ] || configs='native={}'  # (not ${X:-native={}}: bash ends that at the first })
  for item in $configs; do
    local label=${item%%=*} args=${item#*=}
    QAFORGE_ENGINE_ARGS="$args" setsid $PY -m qaforge serve --model "$MODEL" --engine native --port 8000 --max-model-len 1024 \
      --max-num-seqs 512 > "$W/log/serve_$label.log" 2>&1 & echo $! > "$W/serve.pid"
    echo "--- $label: QAFORGE_ENGINE_ARGS=$args"
    wait_ready http://127.0.0.1:8000/ "$(cat $W/serve.pid)" || { tail -5 "$W/log/serve_$label.log"; continue; }
    $PY -m qaforge eval --grader http://127.0.0.1:8000 --data "$W/exam192.jsonl" --tokenizer "$MODEL" --repeat 3 \
      --out "$W/res/grader_$label" 2>&1 | tail -6
    $PY -c "import httpx; print(httpx.get('http://127.0.0.1:8000/health').text[:600])"
    kill -TERM -- -"$(cat $W/serve.pid)"; sleep 3
  done
}
stage_grader_vllm() {  # the grader over HTTP against `qaforge serve --engine vllm`; VLLM_ARGS default: the seed's config
  head -192 "$EXAM" > "$W/exam192.jsonl"
  setsid $PY -m qaforge serve --model "$MODEL" --engine vllm --port 8001 --max-model-len 1024 \
    ${VLLM_ARGS:---quantization fp8 --max-num-seqs 4096 --gpu-memory-utilization 0.95} > "$W/log/serve_vllm.log" 2>&1 &
  echo $! > "$W/serve_vllm.pid"
  wait_ready http://127.0.0.1:8001/ || tail -40 "$W/log/serve_vllm.log"
  $PY -m qaforge eval --grader http://127.0.0.1:8001 --data "$W/exam192.jsonl" --tokenizer "$MODEL" --repeat 3 \
    --out "$W/res/grader_vllm" 2>&1 | tail -12
  kill -TERM -- -"$(cat $W/serve_vllm.pid)"; sleep 5
}
stage_ready() {  # seconds until GET / = 200 for the native server, READY_RUNS fresh processes (scripts/ready_time.py)
  $PY -m scripts.ready_time --runs ${READY_RUNS:-3} --out "$W/res/ready_native.json" -- --model "$MODEL" --engine native \
    --max-model-len 1024 --max-num-seqs 512 2>&1 | tail -12
}
stage_pack() { tar czf "$OUT/speed_$(date +%H%M%S).tgz" -C "$W" res log 2>/dev/null; ls -la "$OUT"; }

for stage in "$@"; do
  echo "=== $stage $(date +%T)"; start=$(date +%s)
  "stage_$stage" 2>&1 | tee -a "$W/log/$stage.log"
  echo "=== $stage done in $(( $(date +%s) - start )) s"
done
