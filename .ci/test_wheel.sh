#!/usr/bin/env bash
# The wheel test (`make test-wheel`, run by `make test` before pytest): build qaforge's wheel, install it into a
# fresh virtualenv outside the checkout and use it from /tmp as a user would, so that a data file missing from
# the wheel, a path that points into the checkout or a run written into site-packages fails CI.
#   .ci/test_wheel.sh [CHECKOUT_VENV]     (default .venv; about 2-4 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOUT=$(pwd -P)
VENV=${1:-.venv}
PY="$CHECKOUT/$VENV/bin/python"
WORK=$(mktemp -d /tmp/qaforge-wheel-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n== wheel test: %s\n' "$*"; }

step "build the wheel from a copy of the checkout's files (tracked + new, not ignored)"
# A copy, not the checkout itself: setuptools' in-tree build/ keeps files deleted since, and they would
# end up in the wheel.
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"; done | tar -cf - --null -T - | tar -xf - -C "$WORK/src"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/qaforge-*.whl)
"$PY" -m zipfile -l "$WHEEL" > "$WORK/wheel_files.txt"
grep -q "qaforge/data/corpus/ch01_" "$WORK/wheel_files.txt" || { echo "FAIL: the sample textbook is not in $WHEEL"; exit 1; }

step "install it into a fresh venv in $WORK/venv"
"$PY" -m venv "$WORK/venv"
WPY="$WORK/venv/bin/python"
SITE=$("$WPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The dependencies (torch, transformers, ...) come from the checkout's venv through a .pth line: installing
# them afresh costs many minutes and the network, and the wheel itself is what is under test. A path in a .pth
# file is only appended to sys.path (the .pth files inside it, such as the checkout's editable-install hook,
# are not run), so the qaforge imported below is the wheel's; the check after the install makes sure of it.
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$SITE/qaforge-test-deps.pth"
"$WPY" -m pip install -q --no-deps --no-index "$WHEEL"

mkdir "$WORK/user" && cd "$WORK/user"
export PATH="$WORK/venv/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step "qaforge is the wheel's, not the checkout's"
where=$(python -c 'import qaforge; print(qaforge.__file__)')
echo "qaforge.__file__ = $where"
case "$where" in
  "$SITE"/*) ;;
  *) echo "FAIL: qaforge was imported from $where, not from the wheel in $SITE"; exit 1 ;;
esac
[ "$(command -v qaforge)" = "$WORK/venv/bin/qaforge" ] || { echo "FAIL: qaforge script is $(command -v qaforge)"; exit 1; }

step "qaforge --help, python -m qaforge --help, qaforge profiles"
qaforge --help > help.txt && grep -q "generate" help.txt
python -m qaforge --help > help_m.txt && grep -q "profiles" help_m.txt
qaforge profiles | tee profiles.txt && grep -q "fast_v7_long" profiles.txt

step "qaforge generate --generator rules on the packaged sample textbook"
qaforge generate --generator rules --out runs/data --exam-size 20 --quiet > generate.txt 2>&1 || { cat generate.txt; exit 1; }
tail -3 generate.txt
test -s runs/data/train.jsonl && test -s runs/data/exam.jsonl && test -s runs/data/README.md

step "qaforge tiny + a one-step qaforge train --profile tiny"
qaforge tiny --out runs/tiny --pretrain-steps 2
qaforge train --profile tiny --model runs/tiny --data runs/data/train.jsonl --exam runs/data/exam.jsonl \
  --max-steps 1 --no-rouge --output-dir runs/train --set tensorboard=false > train.txt 2>&1 || { tail -40 train.txt; exit 1; }
python - <<'EOF'
import json
results = json.load(open("runs/train/eval_results.json"))
assert results["train"]["global_step"] == 1, results["train"]
assert results["config"]["profile"] == "tiny"
print("one step trained:", results["train"]["global_step"], "step, merged model in runs/train/merged_model")
EOF
test -s runs/train/merged_model/config.json

step "the runs went under the working directory, nothing into the package"
if [ -e "$SITE/runs" ] || [ -e "$SITE/qaforge/runs" ]; then echo "FAIL: a run was written into site-packages"; exit 1; fi
echo "wheel test passed: $(basename "$WHEEL")"
