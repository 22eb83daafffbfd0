"""Replicated logs in the simulator, through NodeCore (the code real nodes run): 12 nodes append
240 entries while the network is split in two for 20 s and one node crashes and restarts."""

from __future__ import annotations

import pytest

from quicmesh.testing.log_sim import LogScenario, run_logs
from quicmesh.testing.scenarios import Report


@pytest.fixture(scope="module")
def logs() -> Report:
    return run_logs(LogScenario())


def test_nothing_acknowledged_is_lost_and_every_replica_is_identical(logs: Report) -> None:
    f = logs.figures
    assert f["nodes"] == 12 and f["append_attempts"] == 240
    assert f["acknowledged"] >= 220  # all but the appends scheduled while the crashed node was down
    assert f["refused"] == 0
    assert f["lost"] == 0  # acknowledged and missing from some replica
    assert f["replicas_identical"] is True
    assert f["invalid_operations"] == 0  # no replica ever saw a malformed or forked operation
    assert f["operations_refused_ahead_of_clock"] == 0  # every writer checks its own as peers do
    assert f["operations_stored"] >= f["acknowledged"] * (f["nodes"] - 1)  # everyone stored everyone's
    assert logs.containers_within_bounds()
    assert logs.containers["logsync.store_requests"][0] > 0  # the store was really asked, as outputs


def test_the_log_scenario_is_deterministic() -> None:
    sc = LogScenario(seed=3, nodes=6, appends_per_node=5)
    assert run_logs(sc).figures == run_logs(sc).figures
