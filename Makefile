# Each target creates .venv when missing and installs the package with its dev extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit pythons soak lab lab-soak sim-large bench bench-peers image clean

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

# Three workers (pytest-xdist), one test file each at a time; tests/conftest.py puts the
# simulator's CPU-bound files first (--no-loadscope-reorder keeps that order), so the lab and
# process tests, which mostly wait on real networks, run after them. JOBS=0 runs it serially.
JOBS ?= 3
unit: $(STAMP)
	$(BIN)/pytest $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadfile --no-loadscope-reorder)

test: lint typecheck unit

# The unit suite under other CPython versions, each in a virtualenv of its own (.venv-3.12, ...).
# PYTHONS names the interpreters; by default each of VERSIONS is looked for as pythonX.Y on PATH,
# then in pyenv's versions. A version with no working interpreter fails the target.
VERSIONS ?= 3.12 3.13
PYTHONS ?= $(foreach v,$(VERSIONS),$(or $(shell for c in python$(v) $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(v).*/bin/python 2>/dev/null | sort -V | tail -1); do $$c -c '' >/dev/null 2>&1 && { echo $$c; break; }; done),missing-python$(v)))
pythons:
	@for py in $(PYTHONS); do \
	  $$py -c '' >/dev/null 2>&1 || { echo "make pythons: no working $${py#missing-} (set PYTHONS=...)"; exit 1; }; \
	  v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  echo "== $$py (CPython $$v): .venv-$$v"; \
	  $(MAKE) --no-print-directory unit PYTHON=$$py VENV=.venv-$$v || exit 1; \
	done

soak: $(STAMP)
	QUICMESH_SOAK=1 $(BIN)/pytest -m soak -p no:cacheprovider

# The network lab's long form (needs root, iproute2 and nftables): 10 SIGKILL trials, 10 minutes of
# pauses, a 120 s partition, 10,000 messages under loss, 5 minutes of the set test's faults; the same
# scenarios again with plain `quicmesh node` processes (tests/test_lab_plain.py).
lab: $(STAMP)
	QMLAB_TRIALS=10 QMLAB_PAUSE_S=600 QMLAB_PARTITION_S=120 QMLAB_MESSAGES=10000 \
	QMLAB_JEPSEN_S=300 $(BIN)/pytest -p no:cacheprovider -s -q tests/test_lab.py tests/test_lab_failure.py \
	tests/test_lab_scenarios.py tests/test_lab_jepsen.py tests/test_lab_plain.py

# An hour of identity churn and faults in the lab (opt-in: long), judged on RSS slope and recovery.
lab-soak: $(STAMP)
	QMLAB_SOAK_S=3600 $(BIN)/pytest -p no:cacheprovider -s -q tests/test_lab_soak.py

sim-large: $(STAMP)
	QUICMESH_SIM_LARGE=1 $(BIN)/python -m quicmesh.testing.scenarios --large
	QUICMESH_SIM_LARGE=1 $(BIN)/pytest -p no:cacheprovider -q tests/test_sim_tree.py

bench: $(STAMP)
	$(BIN)/python bench/two_nodes.py
	$(BIN)/python bench/bounded_ops.py

# quicmesh (asyncio and uvloop), NATS, Zenoh and the raw qh3 ceiling side by side, one run (#14); the
# bench extra comes from pip, nats-server from apt (bench/peers.py installs it when run as root)
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-peers: $(BENCH_STAMP)
	$(BIN)/python bench/peers.py $(ARGS)

# the container image (deploy/Containerfile); ENGINE=podman works too
ENGINE ?= docker
IMAGE ?= quicmesh:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	$(ENGINE) build $(if $(filter podman,$(notdir $(ENGINE))),--format docker) -f deploy/Containerfile -t $(IMAGE) .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
