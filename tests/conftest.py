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


@pytest.fixture
def registry() -> Iterator[ContainerRegistry]:
    """A private container registry, so tests neither see nor disturb the process-wide one."""
    reg = ContainerRegistry("test")
    yield reg
    for container in list(reg):
        reg.unregister(container)
