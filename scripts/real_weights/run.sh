#!/usr/bin/env bash
# The real-weights path on one GPU machine, stage by stage (docs/quality.md reports what it measured).
# Usage, from the repository root:  bash scripts/real_weights/run.sh STAGE [STAGE ...]
# Environment: W (work folder, default /tmp/rw), OUT (where result archives go, default $W/out),
# GGUF (the model file, default /tmp/q.gguf), DATA (a folder holding train.jsonl + exam.jsonl drawn by
# `qaforge split`; default $W/data), WHEELS (a folder of wheels the GPU image lacks, installed into $W/site).
# Each stage appends its console output to $W/log/STAGE.log and its figures under $W/res/.
set -uo pipefail
W=${W:-/tmp/rw}; OUT=${OUT:-$W/out}; GGUF=${GGUF:-/tmp/q.gguf}; DATA=${DATA:-$W/data}
mkdir -p "$W"/{log,res,runs} "$OUT"
export PYTHONPATH="$W/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1
Q="python3 -m qaforge"
BASE=$W/proxy                   # the GGUF converted to an HF directory (bf16)
EXAM=$DATA/exam.jsonl; TRAIN=$DATA/train.jsonl

wait_ready() {  # url seconds
  local t=0; until curl -sf "$1" >/dev/null 2>&1; do sleep 1; t=$((t+1)); [ $t -ge "$2" ] && return 1; done; echo "ready after ${t}s"
}
start_server() {  # name port args...  -> background server in its own session, log in $W/log/serve_NAME.log
  local name=$1 port=$2; shift 2
  setsid $Q serve --host 127.0.0.1 --port "$port" "$@" >"$W/log/serve_$name.log" 2>&1 &
  echo $! >"$W/serve_$name.pid"
}
stop_server() { [ -f "$W/serve_$1.pid" ] && kill -TERM -- -"$(cat "$W/serve_$1.pid")" 2>/dev/null; sleep 2; rm -f "$W/serve_$1.pid"; }

stage_wheels() {  # install what the GPU image lacks (qaforge's deps, vLLM's deps, the vLLM wheel if assembled)
  local whl=(${WHEELS:-/tmp/wh}/*.whl)
  [ -f /tmp/vllm-0.24.0-cp38-abi3-manylinux_2_28_x86_64.whl ] && whl+=(/tmp/vllm-0.24.0-cp38-abi3-manylinux_2_28_x86_64.whl)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" "${whl[@]}" 2>&1 | tail -3
  python3 -c "import fastapi, jieba, gguf, openai; print('deps ok', fastapi.__version__, openai.__version__)"
}
stage_convert() {
  [ -f "$GGUF" ] || { cat /tmp/gp/gpart.* > "$GGUF"; }
  echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  $GGUF" | sha256sum -c - || return 1
  /usr/bin/time -f "convert wall %e s" $Q convert "$GGUF" --out "$BASE" --dtype bfloat16
}
stage_gputests() {  # the CUDA tests of the engine and the fused training path (skipped on CPU machines)
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_engine_qwen2.py tests/test_train_fused.py \
    tests/test_engine_core.py 2>&1 | tail -25
}
stage_gen() {  # a real model writes the dataset: qaforge serve (native) as the OpenAI endpoint, qaforge generate
  start_server gen 8011 --model "$BASE" --engine native --max-model-len 8192 --max-num-seqs 256 \
    --served-model-name proxy --max-tokens 2048
  wait_ready http://127.0.0.1:8011/health 300 || { tail -30 "$W/log/serve_gen.log"; return 1; }
  $Q generate --generator llm --api-base http://127.0.0.1:8011/v1 --api-key none --model proxy \
    --corpus data/corpus --out "$W/res/gen" --concurrency 64 ${GEN_ARGS:-} 2>&1 | tail -60
  curl -s http://127.0.0.1:8011/metrics | grep -E "^qaforge_(generated|prompt)_tokens" || true
  stop_server gen
}
stage_untuned() {  # question-as-answer + the untuned proxy on the held-out split, with the contamination check
  $Q eval --base-model "$BASE" --data "$EXAM" --train-data "$TRAIN" --out "$W/res/eval_untuned" ${EVAL_ARGS:-} 2>&1 | tail -25
}
stage_train() {  # RECIPE=profile yaml (path) ; NAME=run name ; extra args in TRAIN_ARGS
  local name=${NAME:?NAME} recipe=${RECIPE:?RECIPE}
  /usr/bin/time -f "train wall %e s" $Q train --profile "$recipe" --model "$BASE" --data "$TRAIN" --exam "$EXAM" \
    --output-dir "$W/runs/$name" ${TRAIN_ARGS:-} 2>&1 | tail -40
  mkdir -p "$W/res/train_$name"
  cp "$W/runs/$name"/{eval_results.json,eval_report.md,train_config.json,README.md} "$W/res/train_$name/" 2>/dev/null
  cp "$W/runs/$name"/*.png "$W/res/train_$name/" 2>/dev/null || true
  cp -r "$W/runs/$name/eval" "$W/res/train_$name/eval" 2>/dev/null || true
}
stage_decode() {  # NAME=run ; DECODE="label:--max-tokens 256 --repetition-penalty 1.1;label2:..."
  local name=${NAME:?NAME}; IFS=';' read -ra variants <<<"${DECODE:?DECODE}"
  for v in "${variants[@]}"; do
    local label=${v%%:*} args=${v#*:}
    $Q eval --model "$W/runs/$name/merged_model" --data "$EXAM" --train-data "$TRAIN" \
      --out "$W/res/decode_${name}_$label" $args 2>&1 | tail -8
  done
}
stage_serve() {  # NAME=run: the grader simulator over HTTP on the merged model, native then vLLM, same questions
  local name=${NAME:?NAME} model=$W/runs/${NAME}/merged_model
  for engine in native vllm; do
    start_server "$engine" 8000 --model "$model" --engine "$engine" ${SERVE_ARGS:-}
    wait_ready http://127.0.0.1:8000/ 600 || { tail -40 "$W/log/serve_$engine.log"; stop_server "$engine"; continue; }
    $Q eval --grader http://127.0.0.1:8000 --data "$EXAM" --tokenizer "$model" --repeat ${REPEAT:-3} \
      --out "$W/res/grader_$engine" 2>&1 | tail -15
    grep -iE "ready|startup|warm" "$W/log/serve_$engine.log" | tail -5
    stop_server "$engine"
  done
  python3 scripts/real_weights/compare_engines.py "$W/res/grader_native" "$W/res/grader_vllm" --tokenizer "$model" \
    --data "$EXAM" --out "$W/res/engines_compared.json"
}
stage_agree() {  # NAME=run: greedy ids of native, vLLM and transformers in bf16 and fp32; fp32 logits at each parting
  local model=$W/runs/${NAME:?NAME}/merged_model A="python3 -m scripts.real_weights.agreement" runs=()
  for v in "native bfloat16" "vllm bfloat16" "hf bfloat16" "native float32" "hf float32" "vllm float32 --eager"; do
    set -- $v
    $A gen --engine "$1" --dtype "$2" ${3:-} --model "$model" --data "$EXAM" --out "$W/res/ids_$1_$2.json" 2>&1 | tail -2
    [ -f "$W/res/ids_$1_$2.json" ] && runs+=("$W/res/ids_$1_$2.json")
  done
  $A judge --model "$model" "${runs[@]}" --out "$W/res/agreement_bf16.json" 2>&1 | grep -v "Loading weights"
  # the same partings question for the two engines in fp32: do they still part, and where?
  [ -f "$W/res/ids_vllm_float32.json" ] && $A judge --model "$model" "$W/res/ids_native_float32.json" \
    "$W/res/ids_vllm_float32.json" --out "$W/res/agreement_fp32.json" 2>&1 | grep -v "Loading weights" | tail -2
}
stage_compare() {  # NAME=run: untuned and fine-tuned in one eval run (what the judge reads), DECODE_ARGS as chosen
  $Q eval --model "$W/runs/${NAME:?NAME}/merged_model" --base-model "$BASE" --data "$EXAM" --train-data "$TRAIN" \
    --out "$W/res/compare_$NAME" ${DECODE_ARGS:-} 2>&1 | tail -10
}
stage_judge() {  # the untuned proxy, served by qaforge, judges the answers of stage_compare's run
  start_server judge 8012 --model "$BASE" --engine native --max-model-len 4096 --served-model-name judge
  wait_ready http://127.0.0.1:8012/health 300 || { tail -30 "$W/log/serve_judge.log"; return 1; }
  local run=$W/res/compare_${NAME:?NAME} jargs=(--api-base http://127.0.0.1:8012/v1 --api-key none --model judge --concurrency 64 --quiet)
  $Q judge "$run" --mode answers --out "$W/res/judge_answers" "${jargs[@]}" 2>&1 | tail -20
  $Q judge "$run" --mode pairwise --system fine-tuned --system "base (untuned)" --out "$W/res/judge_pairwise" \
    "${jargs[@]}" 2>&1 | tail -20
  stop_server judge
}
stage_bench() {  # training speed on the real model: plain HF + PEFT, + torch.compile, qaforge (same batches)
  python3 -m scripts.bench_train --model "$BASE" --data "$TRAIN" --out "$W/res/bench_train" ${BENCH_ARGS:-} 2>&1 | tail -30
}
stage_pack() {  # one archive of the figures (a GPU call returns at most 8 files)
  tar czf "$OUT/res_$(date +%H%M%S).tgz" -C "$W" res log 2>/dev/null; ls -la "$OUT"
}

for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  start=$(date +%s)
  "stage_$stage" 2>&1 | tee -a "$W/log/$stage.log"
  echo "=== $stage done in $(( $(date +%s) - start )) s"
done
