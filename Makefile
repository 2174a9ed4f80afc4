# Quick start: `make demo` (five synthetic folds on Ray with the live dashboard) and
# `make test` (`make test-faults`: the fault matrix). Both create the virtual environment
# on first use.
#   PYTHON=...  interpreter for a new environment (default: Python 3.7 when one is
#               found - the Ascend hosts' TF 1.15 lane - else the newest python3)
#   VENV=...    environment directory (default .venv)
#   VENV_ARGS=--system-site-packages  on Ascend hosts, so the venv sees CANN's npu_bridge

VENV ?= .venv
# Candidates are tried in order and kept only if they run and are 3.7 or 3.10+ (the two
# lanes); a pyenv shim of an inactive version fails to run, so pyenv's own 3.7 is looked
# up directly as well.
LANE_OK := import sys; v = sys.version_info[:2]; sys.exit(not (v == (3, 7) or v >= (3, 10)))
PYTHON ?= $(shell for p in python3.7 $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.7*/bin/python3.7 2>/dev/null) \
	python3.13 python3.12 python3.11 python3.10 python3; do \
	"$$p" -c '$(LANE_OK)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
PY := $(VENV)/bin/python

.PHONY: demo test test-faults bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python 3.7 or 3.10+ found; run make PYTHON=/path/to/python3.7 ..."; exit 2; }
	@"$(PYTHON)" -c '$(LANE_OK)' || { echo "$(PYTHON) is neither Python 3.7 (tf1 lane) nor 3.10+ (tf2 lane)"; exit 2; }
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; "$(PYTHON)" -m venv $(VENV_ARGS) $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@# Editable: `python -m scheduler` / `python -m lmtcnn` from any directory, Ray workers
	@# of this environment included, and the checkout's edits take effect at once.
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

demo: $(VENV)/.installed
	$(PY) -m scheduler run configs/demo.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not faults" tests

# The fault matrix of docs/RELIABILITY.md (killed workers, hangs, lost nodes, signals, a
# full disk, ...): real Ray and TensorFlow, several minutes. FAULT_REPORT=file.jsonl
# records each scenario's figures (bench/fault_matrix.py prints them as a table).
test-faults: $(VENV)/.installed
	LMTCNN_FAULT_REPORT=$(FAULT_REPORT) $(PY) -m pytest -q -m "faults or matrix" tests

bench: $(VENV)/.installed
	$(PY) bench/step_speed.py
	$(PY) bench/pipeline_threads.py
	$(PY) bench/scheduler_overhead.py
	$(PY) bench/prepare_workers.py
	$(PY) bench/export_formats.py

clean:
	rm -rf .venv .venv-tf1 .venv-tf2 .pytest_cache
