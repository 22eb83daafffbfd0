"""Simulator scenarios of issue #4 (continued): partition and heal, a flood at 10x capacity, and
10,000 identities churning through one node."""

from __future__ import annotations

from collections.abc import Callable
from random import Random

import pytest
from simkit import assert_bounded

from quicmesh.config import NodeConfig
from quicmesh.core.plumtree import Arrived
from quicmesh.testing.report import _sim, build_overlay
from quicmesh.testing.scenarios import SWARM, TOPIC, FloodScenario, IdentityChurnScenario, PartitionScenario, run
from quicmesh.testing.sim import SimNode


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


def test_a_publisher_first_heard_after_a_heal_is_not_held_for_the_gap_timeout() -> None:
    """#14: seed 8 of the partition run. The probes published 1 s after the heal reached every node
    across in ~1.2 s, but one node held them 9 s longer: it had never heard from that publisher,
    its first message opened a start wait, and since its swarm was repairing one other message
    when that wait ended, the wait was extended once to the whole 10 s gap timeout. Now the wait
    is re-checked every quarter of it and ended when the repair is: 1.42 s (was 10.17)."""
    r = run(PartitionScenario(seed=8))
    f = r.figures
    assert 0 < f["cross_delivery_a_to_b_s"] <= 2.0, f
    assert 0 < f["cross_delivery_b_to_a_s"] <= 2.0, f
    assert_bounded(r)


@pytest.mark.parametrize(("busy", "seed", "cut"), [(0, 3, 60), (4, 1, 40)])
def test_a_stream_heard_before_a_partition_resumes_after_the_heal_within_the_gap_hold(
        busy: int, seed: int, cut: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """#14: a publisher heard on both sides publishes once a second before, during and after a
    partition longer than the payload caches keep a message. After the heal every node across has
    a gap behind its next message that no cache can fill any more (the cut's messages); it was
    held the whole 10 s gap timeout (120 s cut, 100 nodes: 10.24 s at every node). Now it is held
    ``reorder_gap_hold`` (3 s) and then only while repairs go on: 3.27 s (was 10.27) at the last
    node across without ``busy``, and from the fourth message on, on time.

    ``busy``: as many other publishers (half on each side) publish ten messages a second all
    along. While the trees re-form after the heal, a node often holds ids announced a few
    milliseconds before their payloads; counted as repairs at every check, they held the gap on
    check after check (here one node held it 4.25 s, and the first message after the heal reached
    the last node across 4.70 s after it was published; 9.0 s in a run of 100 nodes). Now such an
    id counts only at the gap's first check: every node across holds the gap at most
    ``reorder_gap_hold`` and one re-check (3.25 s) from the message's arrival (3.70 s in all)."""
    sim = _sim(seed, NodeConfig(), 0.010)
    nodes = build_overlay(sim, 30)
    sim.run_for(5.0)
    for n in nodes:
        sim.subscribe(n, "news.>")
    sim.run_for(5.0)
    order = list(nodes)
    Random(seed).shuffle(order)
    side_a, side_b = order[:15], order[15:]
    pub = side_a[0]
    others = side_a[1:1 + busy // 2] + side_b[:busy - busy // 2]
    arrived: dict[tuple[int, int], float] = {}  # (node index, seq) -> when its batch reached the ordering
    for n in side_b:
        def offer(a: Arrived, now: float, _n: SimNode = n, _offer: Callable[..., list[Arrived]] = n.mesh.ordering.offer,
                  ) -> list[Arrived]:
            if a.publisher == pub.id:
                arrived.setdefault((_n.index, a.seq), now)
            return _offer(a, now)
        monkeypatch.setattr(n.mesh.ordering, "offer", offer)

    def run_for(seconds: float) -> None:
        end = sim.now + seconds
        while sim.now < end - 1e-9:
            for p in others:
                sim.publish(p, "news.busy", b"b" * 50)
            sim.run_for(min(0.1, end - sim.now))

    def publish_for(seconds: int) -> list[tuple[int, float]]:
        sent = []
        for _ in range(seconds):
            sw = pub.mesh.swarms.peek(SWARM)
            assert sw is not None
            sent.append((sw.next_seq, sim.now))
            sim.publish(pub, TOPIC, b"x")
            run_for(1.0)
        return sent

    before = publish_for(5)
    sim.partition([side_a, side_b])
    publish_for(cut)  # longer than the payload caches keep a message (~30 s): some are gone
    sim.heal()
    after = publish_for(8)
    sim.run_for(12.0)

    def delivered(n: SimNode, seq: int) -> float:
        got = [d.time for d in n.deliveries if d.publisher == pub.id and d.seq == seq]
        assert got, f"seq {seq} missing at {n.index}"
        return got[0]

    def worst(seq: int, at: float) -> float:
        return max(delivered(n, seq) for n in side_b) - at

    assert all(worst(seq, at) < 1.0 for seq, at in before)
    late = [round(worst(seq, at), 3) for seq, at in after]
    first = after[0][0]
    holds = sorted(round(delivered(n, first) - arrived[(n.index, first)], 3) for n in side_b)
    print("after the heal, latency at the last node across (s):", late, "held (s):", holds)
    assert holds[-1] <= 3.0 + 0.25 + 0.002, holds  # gap_hold and one re-check (busy: 4.25 before)
    if not busy:
        assert late[0] <= 3.5, late  # was 10.2: the gap timeout
    assert max(late[4:]) <= 0.5, late
    assert sum(n.mesh.ordering.counters["late"] for n in nodes) == 0


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
