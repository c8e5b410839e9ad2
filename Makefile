# `make test` and `make demo` work on a fresh clone: they create .venv, install PyTorch first
# (TORCH_SPEC: the CPU build here; where nvidia-smi lists a GPU, the CUDA build from PyTorch's
# CUDA_INDEX; set TORCH_SPEC for another), then the project with its dev extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
CUDA_INDEX ?= https://download.pytorch.org/whl/cu130
HAS_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo yes)
TORCH_SPEC ?= torch==$(TORCH_VERSION)$(if $(HAS_GPU), --index-url $(CUDA_INDEX))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make gpu-check: the CUDA checks (tests/gpu_check.py), one CSV and one log in GPU_CHECK_OUT.
GPU_CHECK_OUT ?= gpu-check
GPU_VENV ?= .venv-gpu
GPU_WHEELS ?= .whl

.PHONY: test demo ladder clean-venv gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m experiments.run specs/quickstart.yaml

# The tutorial's ladder (a-h) with 3 seeds, then its report (with each step vs the one before):
# results/seed-ladder/report.md.
ladder: $(STAMP)
	$(PY) -m experiments.run specs/seed_ladder.yaml --no-report
	$(PY) -m analysis results/seed-ladder --consecutive

clean-venv:
	rm -rf $(VENV)

# The CUDA paths on a GPU (README.md, "Checking a GPU"): ~5-8 minutes. Its Python: .venv if its torch sees
# CUDA, else .venv-gpu (on top of a GPU image's own Python when that one's torch sees CUDA, else with
# TORCH_SPEC's CUDA build); missing packages come from GPU_WHEELS when that folder exists (offline hosts).
gpu-check:
	@test -n "$(HAS_GPU)" || { echo "make gpu-check: no NVIDIA GPU on this machine (nvidia-smi lists none): nothing was checked. It runs the CUDA checks on a GPU host; see README.md, 'Checking a GPU'." >&2; exit 2; }
	@GPU_PY=$$($(PYTHON) tests/gpu_env.py --venv $(VENV) --gpu-venv $(GPU_VENV) --torch-spec "$(TORCH_SPEC)" --wheels $(GPU_WHEELS)) && \
	echo "gpu-check: $$GPU_PY" && $$GPU_PY tests/gpu_check.py --out $(GPU_CHECK_OUT)
