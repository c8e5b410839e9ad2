# `make test` and `make demo` work on a fresh clone: they create .venv, install PyTorch first
# (a CPU build here; set TORCH_SPEC for another, e.g. TORCH_SPEC='torch --index-url ...'),
# then the project with its dev extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo ladder clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m experiments.run specs/quickstart.yaml

# The tutorial's ladder (a-f) with 3 seeds, then its report (with each step vs the one before):
# results/seed-ladder/report.md.
ladder: $(STAMP)
	$(PY) -m experiments.run specs/seed_ladder.yaml --no-report
	$(PY) -m analysis results/seed-ladder --consecutive

clean-venv:
	rm -rf $(VENV)
