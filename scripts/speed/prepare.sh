#!/usr/bin/env bash
# Makes, from a developer's checkout (its .venv and ../shared), the ignored folders the GPU runbooks carry to a
# GPU machine whose image has torch, transformers, peft, triton and numpy but not qaforge's serving deps:
#   .wh2  wheels for that image's Python 3.12: qaforge's deps it lacks (fastapi, uvicorn, openai, jieba, ...),
#         at the versions of ../shared/anchors/prepare_vllm_offline.sh's .vdeps where both need one (two versions
#         of a package stop `pip install --target`), else at this .venv's versions; ~31 MB
#   .tok  the real Qwen2.5 tokenizer and config (from the proxy GGUF: tokenizer.json, tokenizer_config.json,
#         chat_template.jinja, config.json, generation_config.json); ~11 MB
#   .qd   train.jsonl + exam.jsonl: `qaforge split` of the seed pairs, 300 held out, seed 0 (docs/quality.md); ~3 MB
# Run from the repository root after `make setup`, ../shared/anchors/prepare_vllm_offline.sh (.vdeps) and
# ../shared/anchors/prepare_real_proxy.sh (.gp/q.gguf). Then, e.g. (docs/benchmarks.md has the figures' commands):
#   device run, carry [".wh2", ".tok", ".qd"]:
#     mkdir -p /tmp/wh /tmp/tok /tmp/rwdata && cp .wh2/* /tmp/wh/ && cp .tok/* /tmp/tok/ && cp .qd/* /tmp/rwdata/ \
#       && TOK=/tmp/tok bash scripts/speed/run.sh wheels model2 train
# The grader stages also need .vdeps copied into /tmp/wh (openai 3.57 imports httpx2, which only .vdeps has).
set -euo pipefail
PY=${PY:-.venv/bin/python}
[ -d .vdeps ] || { echo "no .vdeps: run ../shared/anchors/prepare_vllm_offline.sh first" >&2; exit 1; }
[ -f .gp/q.gguf ] || { echo "no .gp/q.gguf: run ../shared/anchors/prepare_real_proxy.sh first" >&2; exit 1; }
for p in .wh2 .tok .qd .qdata; do grep -qx "/$p/" .git/info/exclude 2>/dev/null || echo "/$p/" >> .git/info/exclude; done

rm -rf .wh2 && mkdir -p .wh2
# shared with vLLM's set: the same files
for p in fastapi-0 starlette openai-3 pydantic-2 pydantic_core typing_inspection annotated_types jiter llguidance \
         uvicorn httptools websockets watchfiles python_dotenv sniffio python_multipart; do
  cp .vdeps/$p*.whl .wh2/
done
ver() { { $PY -m pip show "$1" 2>/dev/null || true; } | sed -n 's/^Version: //p'; }  # empty: not installed here
plat=""; for n in 17 24 27 28 31 34 35; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
binary=()
for name in nltk datasketch json_repair orjson pypdf gguf distro; do
  v=$(ver "$name"); binary+=("$name${v:+==$v}")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .wh2 "${binary[@]}"
# sdist-only on PyPI: pure Python, so a wheel built here installs there
$PY -m pip wheel -q --no-deps -w .wh2 "jieba==$(ver jieba)" "rouge-score==$(ver rouge-score)"

tmp=$(mktemp -d)
$PY -m qaforge convert .gp/q.gguf --out "$tmp/proxy" --dtype bfloat16 >/dev/null 2>&1
rm -rf .tok && mkdir -p .tok
cp "$tmp"/proxy/{tokenizer.json,tokenizer_config.json,chat_template.jinja,config.json,generation_config.json} .tok/
rm -rf "$tmp"

$PY -m qaforge split ../shared/seed_data/pmpp_qa_v2.jsonl --out .qdata/data --exam-size 300 --seed 0 | tail -2
rm -rf .qd && mkdir -p .qd && cp .qdata/data/train.jsonl .qdata/data/exam.jsonl .qd/
du -sh .wh2 .tok .qd
