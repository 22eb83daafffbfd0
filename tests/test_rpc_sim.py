"""RPC across the mesh in the simulator: 50 nodes, 5 providers, 10,000 calls while 2 providers
crash; leases; stale replays; nothing left pending. Deterministic (seeded)."""

from __future__ import annotations

from typing import Any

import pytest

from quicmesh.testing.rpc_sim import FailoverScenario, LeaseScenario, run_failover, run_lease
from quicmesh.testing.scenarios import Report

TYPED_FAILURES = {"CallTimeout", "NoProvider"}


@pytest.fixture(scope="module")
def failover() -> Report:
    return run_failover(FailoverScenario())


def _zero(d: dict[str, int]) -> bool:
    return bool(d) and all(v == 0 for v in d.values())


def test_every_call_succeeds_within_its_deadline_while_two_providers_crash(failover: Report) -> None:
    f = failover.figures
    assert f["nodes"] >= 50 and f["providers"] == 5 and f["crashed"] == 2
    assert f["calls"] == 10_000
    assert f["succeeded"] == 10_000, f["errors"]  # three providers always remain: failover covers the crashes
    assert f["ended_past_deadline"] == 0
    assert f["failovers"] > 0 and f["attempts"] > f["calls"]  # the crashes were really hit
    assert f["latency_max_ms"] <= 5000


def test_with_no_provider_left_calls_fail_typed_within_their_deadline(failover: Report) -> None:
    f = failover.figures
    assert f["tail_calls"] > 0
    assert set(f["tail_outcomes"]) <= TYPED_FAILURES and f["tail_outcomes"].get("NoProvider", 0) > 0
    assert f["tail_past_deadline"] == 0


def test_crashed_providers_vanish_from_every_registry_within_lease_plus_sweep(failover: Report) -> None:
    f = failover.figures
    vanished: dict[int, float] = f["vanished_after_crash_s"]
    assert len(vanished) == 2
    assert all(v <= f["vanish_bound_s"] for v in vanished.values()), vanished
    assert f["live_entries_dropped"] == 0  # refreshes kept every live provider everywhere


def test_a_replayed_stale_advert_never_wins(failover: Report) -> None:
    f = failover.figures
    assert f["stale_replay_won"] == 0
    assert f["stale_replays_rejected"] >= 49  # every node that got the replay dropped it


def test_no_pending_entry_remains_and_containers_stay_bounded(failover: Report) -> None:
    f = failover.figures
    assert _zero(f["pending_after_calls"]), f["pending_after_calls"]
    assert _zero(f["pending_after_tail"]), f["pending_after_tail"]
    assert f["lookups"] > 0 and f["late_joiner_calls"] > 0  # late joiners looked the name up
    assert failover.containers_within_bounds()
    assert failover.containers["caller.calls"][0] > 0 and failover.containers["registry.entries"][0] == 5


def test_leases_refresh_expire_and_withdraw() -> None:
    sc = LeaseScenario()
    f = run_lease(sc).figures
    assert f["leases_outlived_by_live_provider"] >= 20
    assert f["live_provider_missing_checks"] == 0 and f["live_provider_checks"] > 10_000
    assert 0 < f["silent_vanished_after_s"] <= sc.ttl + sc.sweep_interval + sc.clock_skew
    assert 0 < f["withdrawn_vanished_after_s"] <= 1.0  # a withdrawal removes it at once
    assert f["expired"] > 0 and f["withdrawn"] > 0 and f["invalid_signature"] == 0


@pytest.mark.parametrize("policy", ["round_robin", "lowest_rtt"])
def test_other_policies_fail_over_too(policy: str) -> None:
    f = run_failover(FailoverScenario(calls=1500, tail_calls=30, policy=policy, seed=3)).figures
    assert f["succeeded"] == 1500 and f["ended_past_deadline"] == 0
    assert _zero(f["pending_after_tail"])


def test_scenarios_are_deterministic() -> None:
    def figures() -> dict[str, Any]:
        return run_failover(FailoverScenario(nodes=20, calls=300, tail_calls=20, seed=5)).figures

    assert figures() == figures()
