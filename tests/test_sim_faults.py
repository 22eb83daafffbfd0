"""Simulator scenarios of issue #4 (continued): partition and heal, a flood at 10x capacity, and
10,000 identities churning through one node."""

from __future__ import annotations

from simkit import assert_bounded

from quicmesh.testing.scenarios import FloodScenario, IdentityChurnScenario, PartitionScenario, run


def test_partition_120s_then_heal_reconverges_within_30s() -> None:
    r = run(PartitionScenario())
    print(r.format())
    f = r.figures
    assert f["overlay_split_during_partition"] is True
    assert f["delivery_within_sides"] == 1.0
    assert 0 <= f["realm_overlay_connected_after_s"] <= 30
    assert 0 <= f["swarm_overlay_connected_after_s"] <= 30
    assert 0 <= f["cross_delivery_a_to_b_s"] <= 30
    assert 0 <= f["cross_delivery_b_to_a_s"] <= 30
    assert_bounded(r)


def test_flood_at_10x_capacity_keeps_every_container_within_bounds() -> None:
    r = run(FloodScenario())
    print(r.format())
    assert_bounded(r)
    f = r.figures
    # the flood really reached the caps
    for name in ("addressbook.peers", "gossip.seen_ids", "mesh.connections", "mesh.dial_queue",
                 "topics.publishers", "plumtree.missing", "membership.passive", "mesh.swarms"):
        peak, cap = r.containers[name]
        assert peak == cap, name
    assert f["connections_refused"] > 0 and f["topic_limit_hits"] > 0 and f["dial_queue_dropped"] > 0


def test_10000_identity_cycles_against_one_node_stay_bounded() -> None:
    r = run(IdentityChurnScenario())
    print(r.format())
    assert_bounded(r)
    f = r.figures
    assert f["address_book_size"] <= f["address_book_capacity"]
    assert f["address_book_evictions"] > 0
    assert f["realm_active"] <= 5 and f["realm_passive"] <= 30
    # once the churn stops, per-peer tables drain back to the stable peers
    assert f["connections_after_60s"] <= 8
    assert f["dial_queues_after_60s"] <= 2
    assert f["seen_ids"] <= 100_000
