# Each target creates .venv when missing and installs the package with its dev extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit soak sim-large bench image clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/quicmesh demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

soak: $(STAMP)
	QUICMESH_SOAK=1 $(BIN)/pytest -m soak -p no:cacheprovider

sim-large: $(STAMP)
	QUICMESH_SIM_LARGE=1 $(BIN)/python -m quicmesh.testing.scenarios --large

bench: $(STAMP)
	$(BIN)/python bench/two_nodes.py
	$(BIN)/python bench/bounded_ops.py

# the container image (deploy/Containerfile); ENGINE=podman works too
ENGINE ?= docker
IMAGE ?= quicmesh:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	$(ENGINE) build $(if $(filter podman,$(notdir $(ENGINE))),--format docker) -f deploy/Containerfile -t $(IMAGE) .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
