# Two commands on a fresh machine:  `make run` (the main job)  and  `make test` (the whole suite).
# Each sets up .venv first if needed. On a GPU box or Colab, skip make: `pip install -e .` keeps your torch.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of torch 2.13.0 is what this kit is tested with; override with `make TORCH=torch` elsewhere.
TORCH  ?= torch==2.13.0
PRESET ?= smoke

.PHONY: setup run test bench clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-embedded.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps -r requirements-embedded.txt
	touch $@

run: setup
	KIT_PRESET=$(PRESET) $(PY) -m kit notebooks --out runs/$(PRESET)

# --reruns 1: a notebook kernel has twice stalled with nbclient waiting on a lost message under heavy load;
# a stalled cell times out after 15 min and the notebook is run once more.
test: setup
	$(PY) -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=900 --reruns 1 tests notebooks

bench: setup
	$(PY) bench/store.py
	$(PY) bench/train.py
	$(PY) bench/collector.py
	$(PY) bench/sweep.py

clean-runs:
	rm -rf runs
