# svrl: `make run` runs the whole pipeline on the default config, `make test` the test suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.svrl-setup-done
SYSTEM_PACKAGES := git g++ make python3-venv libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libglvnd0
export PYTHONUNBUFFERED := 1

.PHONY: setup print-torch-variant run repro exps test bench ui ui-down deploy push pull
REMOTE ?= local  # a DVC remote in .dvc/config: local (a directory) or s3 (AWS_* variables)
# torch's build: cpu or cuda; empty: cuda where `nvidia-smi -L` lists a GPU (infra/system/torch_variant.sh).
TORCH_VARIANT ?=
# An extra package index for torch's build, where the configured one lacks it (infra/README.md).
TORCH_INDEX_URL ?=
SELECT_TORCH = TORCH_VARIANT='$(TORCH_VARIANT)' TORCH_INDEX_URL='$(TORCH_INDEX_URL)' bash infra/system/torch_variant.sh

# The stamp holds the variant installed; asking for the other one explicitly installs again.
ifneq ($(TORCH_VARIANT),)
ifneq ($(TORCH_VARIANT),$(shell cat $(STAMP) 2>/dev/null))
.PHONY: $(STAMP)
endif
endif

setup: $(STAMP)

print-torch-variant:  # what `make setup` would install, and with which pip arguments; installs nothing
	@$(SELECT_TORCH)

$(STAMP): requirements.lock requirements-cuda.lock pyproject.toml Makefile infra/system/install-vulkan.sh \
          infra/system/torch_variant.sh
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi
	bash infra/system/install-vulkan.sh  # Mesa 25's Vulkan for SAPIEN (RoboTwin tasks)
	test -x $(PY) || python3.11 -m venv $(VENV)
	selection=$$($(SELECT_TORCH)) && eval "$$selection" && \
	  $(PY) -m pip install -q $$pip_args && \
	  { [ "$$variant" = cpu ] || $(PY) -c 'import torch; assert torch.version.cuda, f"torch {torch.__version__} has no CUDA"'; } && \
	  echo "$$variant" > $(STAMP).variant
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c 'from svrl_core.training.engine import prebuild_ops; prebuild_ops()'  # DeepSpeed CPU comm op, once
	mv $(STAMP).variant $(STAMP)

# A named config in configs/ (e.g. `make run CONFIG=toy`) is copied over params.yaml first.
CONFIG ?=

run: setup
	$(if $(CONFIG),cp configs/$(CONFIG).yaml params.yaml)
	$(PY) -m flows.server exec $(PY) -m flows.pipeline
	@echo "Report: reports/report.md"

repro: setup  # plain `dvc repro`, with the venv's python first on PATH (dvc.yaml runs `python -m ...`)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

exps: setup  # DVC experiments side by side: changed params and headline metrics (ARGS: dvc exp show options)
	$(PY) -m tasks.experiments $(ARGS)

# Two test processes, one file each at a time (a file's tests share module fixtures, in order); the
# pipeline file, about half the suite, starts first (tests/conftest.py).
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30 tests  # the slowest tests, to keep make test under 25 min

bench: setup
	$(PY) -m bench.update
	$(PY) -m bench.rollout
	$(PY) -m bench.learning --rl-seeds 0 1
	$(PY) -m bench.libero_render
	$(PY) -m bench.libero_experts
	$(PY) -m bench.robotwin
	$(PY) -m bench.faults --rounds 5
	$(PY) -m bench.serve
	$(PY) -m bench.openvla_oft --layout small

ui: setup  # local Prefect server + a worker for the deployments
	$(PY) -m flows.server ui

ui-down:
	$(PY) -m flows.server down

# Register infra/prefect/prefect.yaml's deployments on PREFECT_API_URL (default: the `make ui` server).
deploy: setup
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$${SVRL_PREFECT_PORT:-4200}/api} \
	  $(VENV)/bin/prefect --no-prompt deploy --all --prefect-file infra/prefect/prefect.yaml

push: setup
	$(VENV)/bin/dvc push -r $(REMOTE)

pull: setup
	$(VENV)/bin/dvc pull -r $(REMOTE)
