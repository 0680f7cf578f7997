# The README's quick start: `make run` (the whole job on CPU) and `make test` (the test suite).
PYTHON ?= python3
BOOKS ?= ../shared/corpus/books
OUT ?= artifacts/cpu-small
SKY_VENV ?= .venv-sky
TEST_ARGS ?=
# Where torch comes from: empty = pip's configured indexes (this workplace's hold the CPU build). On a machine
# whose pip reaches PyPI, whose Linux torch is the CUDA build, pass TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_INDEX ?=

.PHONY: install install-sky lint run test bench container-base smoke-container

install:
	# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels on a CPU machine.
	$(PYTHON) -m pip install --quiet "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PYTHON) -m pip install --quiet -e ".[dev,faiss]"

# SkyPilot pins click<8.2, so it gets an environment of its own (used only by the YAML tests).
install-sky:
	test -x $(SKY_VENV)/bin/python || $(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install --quiet "skypilot==0.14.1"

run: install
	HF_HUB_OFFLINE=1 bookmatch pipeline --preset cpu-small --books $(BOOKS) --out $(OUT)

test: install install-sky lint
	HF_HUB_OFFLINE=1 BOOKMATCH_SKY_PYTHON=$(SKY_VENV)/bin/python $(PYTHON) -m pytest -m "not slow and not gpu" $(TEST_ARGS)

# ruff (pyproject.toml [tool.ruff]): lint and format are checked, never rewritten, by the test run.
lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

bench: install
	$(PYTHON) scripts/bench_prepare.py --books $(BOOKS)

# Container smoke test (README "Docker"): builds docker/Dockerfile.cpu with docker or podman and runs `bookmatch
# --help`, the pipeline (tiny steps) and two-stage inference inside it (tests/test_container_smoke.py, slow).
# SMOKE_ARGS: the smoke script's options; the default pulls the base image or builds it from Debian's packages
# where no registry answers, and has pip in the build use this machine's pip settings.
SMOKE_ARGS ?= --local-base --host-pip

container-base:
	bash scripts/container_base.sh

smoke-container:
	BOOKMATCH_SMOKE_ARGS="$(SMOKE_ARGS)" $(PYTHON) -m pytest tests/test_container_smoke.py -m slow -s $(TEST_ARGS)
