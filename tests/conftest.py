"""Shared fixtures. Keep this file small: fixtures used by one test file live in that file."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from quicmesh.bounded import ContainerRegistry

pytest_plugins = ["labkit"]  # the network lab's ``lab`` fixture (tests/labkit.py)

# CI (CI=true) runs the property tests derandomized, so a run's outcome depends only on the code;
# locally they explore new examples each run. Settings objects built in test modules inherit this.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI") or os.environ.get("QUICMESH_HYPOTHESIS_DERANDOMIZE"):
    settings.load_profile("ci")


# The simulator's scenarios are CPU-bound for minutes; the lab and process tests mostly wait on
# real networks and timers. ``make test`` runs three workers, a file at a time each
# (``--dist loadfile --no-loadscope-reorder``), with these files first: the simulations share the
# cores at the start, and the timing-sensitive tests run after them on a quieter machine. (Running
# them in a second session at ``nice 19`` beside the rest was tried: the rest starved them, and the
# run took longer; the suite is CPU-bound, ~2,000 CPU-seconds on 2 cores.)
SIMULATOR_FILES = frozenset({
    "test_sim_scenarios.py", "test_sim_loss.py", "test_sim_faults.py", "test_rpc_sim.py", "test_sim_tree.py",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The simulator files first (stable: the order of everything else is kept)."""
    items.sort(key=lambda item: item.path.name not in SIMULATOR_FILES)


@pytest.fixture
def registry() -> Iterator[ContainerRegistry]:
    """A private container registry, so tests neither see nor disturb the process-wide one."""
    reg = ContainerRegistry("test")
    yield reg
    for container in list(reg):
        reg.unregister(container)


_TIMELINE = os.environ.get("QMTEST_TIMELINE")


if _TIMELINE:  # a run's schedule, for balancing the workers: one JSON line per test phase
    import json
    import time

    def pytest_runtest_logreport(report: pytest.TestReport) -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(str(_TIMELINE), "a", encoding="utf-8") as f:
            f.write(json.dumps({"w": worker, "id": report.nodeid, "when": report.when, "end": time.time(),
                                "dur": report.duration, "outcome": report.outcome,
                                "cpu": time.process_time()}) + "\n")
