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
# real networks and timers. ``make test`` runs three workers with ``--dist loadgroup``: these files
# go to one worker, one after another, and first (the longest group starts at once), while the
# other two take the rest file by file. So at most one core is busy with simulations, and the
# waiting tests overlap.
SIMULATOR_FILES = frozenset({
    "test_sim_scenarios.py", "test_sim_loss.py", "test_sim_faults.py", "test_rpc_sim.py", "test_sim_tree.py",
})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests for ``--dist loadgroup``: the simulator files together, every other file by
    itself; the simulator group first."""
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("simulator" if name in SIMULATOR_FILES else item.path.stem))
    items.sort(key=lambda item: item.path.name not in SIMULATOR_FILES)  # stable: file order kept otherwise


@pytest.fixture
def registry() -> Iterator[ContainerRegistry]:
    """A private container registry, so tests neither see nor disturb the process-wide one."""
    reg = ContainerRegistry("test")
    yield reg
    for container in list(reg):
        reg.unregister(container)
