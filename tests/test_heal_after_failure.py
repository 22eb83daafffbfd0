"""Healing after many peers fail at once (#14, HyParView's massive-failure experiment).

* A realm view left with nothing to refill from (active and passive views empty, bootstrap
  contacts dead) takes candidates from the node's swarm views, else from the peers it is
  connected to (``Discovery.replenish``), and never dials for it. Before: with 80 % of 500
  nodes crashed at once, the swarm overlay healed in 6 s but two survivors' realm views stayed
  empty for the 120 s limit (every active peer dead, every passive peer they asked dead too, the
  three bootstrap nodes among the dead), though each was linked to live peers in its swarm; at
  150 nodes, 4 seeds of 12 did the same.
* A swarm view emptied by failures walks for members at once, not when the walk scheduled for
  its full view was due (up to 150 s later). Before: 80 % of 150 nodes, seed 5: one survivor
  alone in its swarm for 80 s, the swarm overlay whole after 86.5 s (5.5 s for seeds 1-4, 6).
"""

from __future__ import annotations

import itertools
from random import Random

from meshkit import timer_steps

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig
from quicmesh.core.effects import Dial, Disconnect, Effect, Send
from quicmesh.core.membership import REPAIR_INTERVAL
from quicmesh.core.mesh import Mesh
from quicmesh.core.mesh_messages import MFind, MNeighbor, MNeighborReply
from quicmesh.identity import KeyPair, NodeId
from quicmesh.testing.massive import MassiveFailureScenario, run_massive_failure

CFG = NodeConfig().membership


def nid(i: int) -> NodeId:
    return KeyPair.from_seed((i + 3000).to_bytes(32, "big")).node_id


BOOT, S, B, C = nid(1), nid(2), nid(3), nid(4)


def _alone(registry: ContainerRegistry) -> tuple[Mesh, float]:
    """A node joined through BOOT, which then dies: realm active and passive views empty."""
    m = Mesh(nid(0), ("m:0",), NodeConfig(), Random(5), registry)
    m.join([(BOOT, ("boot:1",))], 0.0)
    m.peer_connected(BOOT, ("boot:1",), True, 0.1)
    m.handle_message(BOOT, MNeighborReply("", True), 0.2)
    assert m.realm.active_peers() == [BOOT]
    m.peer_disconnected(BOOT, 1.0)
    m.dial_failed(BOOT, 1.1)
    assert len(m.realm.active) == 0 and len(m.realm.passive) == 0
    return m, 1.1


def _asks(effs: list[Effect], peer: NodeId) -> bool:
    return any((isinstance(e, Send) and e.peer == peer and isinstance(e.message, MNeighbor) and e.message.s == ""
                and e.message.high) or (isinstance(e, Dial) and e.peer == peer) for e in effs)


def _run(m: Mesh, now: float, end: float, peer: NodeId, *, redial: bool = False) -> list[float]:
    """Times until ``end`` at which the realm asked ``peer`` for a link (``peer`` never answers;
    ``redial``: its connection, closed when idle, is opened again at once, as by a peer whose log
    sync or calls keep one)."""
    hits: list[float] = []
    for t, effs in timer_steps(m, now, end):
        if _asks(effs, peer):
            hits.append(t)
            if any(isinstance(e, Dial) and e.peer == peer for e in effs):
                m.dial_failed(peer, t)
        if redial and any(isinstance(e, Disconnect) and e.peer == peer for e in effs):
            m.peer_disconnected(peer, t)
            m.peer_connected(peer, ("b:1",), True, t)
    return hits


def test_a_lost_realm_peer_is_forgotten_at_its_ttl_through_the_mesh(registry: ContainerRegistry) -> None:
    """The ``lost`` map's expiry reaches the mesh's deadline (its watch): the timer fires at the TTL,
    the entry goes, and the next deadline moves on (a deadline left in the past would have the
    driver fire its timer again and again, as a first version of the expiry did)."""
    m, now = _alone(registry)
    m.realm.next_reconnect = 1e9  # no reconnect round: only the TTL can forget BOOT
    assert BOOT in m.realm.lost
    ttl_at = m.realm.lost.deadline(BOOT)
    assert ttl_at is not None and ttl_at == 1.0 + CFG.lost_ttl
    fired = 0
    for t, _ in timer_steps(m, now, ttl_at + 1.0):
        fired += 1
        assert fired < 10_000, "the timer keeps firing"
        if BOOT not in m.realm.lost:
            assert t == ttl_at, (t, ttl_at)
            break
    assert len(m.realm.lost) == 0
    d = m.next_deadline()
    assert d is None or d > ttl_at


def test_empty_realm_view_asks_a_live_swarm_neighbour(registry: ContainerRegistry) -> None:
    m, now = _alone(registry)
    m.subscribe("news.>", now)
    (key,) = m.swarms.keys()
    m.peer_connected(S, ("s:1",), False, now)
    m.handle_message(S, MNeighbor(key, True, ["s:1"]), now)
    assert m.swarm_neighbours("news.x") == 1 and not m.realm.knows(S)
    t, effs = now, list[Effect]()
    while not _asks(effs, S):
        t = m.next_deadline() or t + 1
        assert t - now <= REPAIR_INTERVAL + 0.01, "the swarm neighbour was not asked within one repair interval"
        effs = m.handle_timer(t)
    assert m.counters["replenished"] == 1
    # S accepts (a high-priority request must be): the realm is whole again
    m.handle_message(S, MNeighborReply("", True), t + 0.01)
    assert m.realm.active_peers() == [S]


def test_empty_realm_view_without_swarms_asks_connected_peers_with_backoff(registry: ContainerRegistry) -> None:
    m, now = _alone(registry)
    m.book.add(C, ("c:1",), now)  # known (walk origins, shuffles), not connected: never dialled for this
    m.peer_connected(B, ("b:1",), True, now)  # e.g. a provider it called: connected, not in a view
    hits = _run(m, now, 3600.0, B, redial=True)
    gaps = [b - a for a, b in itertools.pairwise(hits)]
    # B never answers: asked at the next repair, then on the join backoff, not at every repair
    assert len(hits) >= 5 and hits[0] - now <= REPAIR_INTERVAL, hits
    assert min(gaps) >= CFG.join_timeout / 2, gaps
    assert max(gaps) <= CFG.join_backoff_max * 1.25 + REPAIR_INTERVAL, gaps
    assert gaps[-1] > gaps[0]
    assert _run(m, 3600.0, 7200.0, C) == []


def test_80pct_of_150_nodes_fail_realm_overlay_heals() -> None:
    # before: the realm overlay of seeds 10, 15, 17 and 18 (of 7-18) was not one component 40 s
    # after the crash (nor in the 500-node run of seed 1 after 120 s); now 5.0 s for each (one
    # runs here: 5 s of CI time each)
    r = run_massive_failure(MassiveFailureScenario(seed=15, nodes=150, fail=0.8, settle=10.0, drain=5.0,
                                                   rate=50.0, messages=20, heal_limit=40.0))
    f = r.figures
    assert 0 <= f["realm_heal_s"] <= 10.0, f
    assert f["realm_connected_after"] is True, f
    assert 0 <= f["heal_s"] <= 10.0 and f["delivery_min"] >= 0.95, f


def test_swarm_view_emptied_by_failures_walks_at_once(registry: ContainerRegistry) -> None:
    m = Mesh(nid(0), ("m:0",), NodeConfig(), Random(5), registry)
    m.join([(BOOT, ("boot:1",))], 0.0)
    m.peer_connected(BOOT, ("boot:1",), True, 0.1)
    m.handle_message(BOOT, MNeighborReply("", True), 0.2)
    m.subscribe("news.>", 0.3)
    (key,) = m.swarms.keys()
    m.peer_connected(S, ("s:1",), False, 0.4)
    m.handle_message(S, MNeighbor(key, True, ["s:1"]), 0.4)
    now = 0.4
    sw = m.swarms.peek(key)
    assert sw is not None and len(sw.hv.active) == 1
    while sw.next_find <= now + 10:  # until the walk for a linked view is scheduled (~30 s out)
        now = m.next_deadline() or now + 1
        m.handle_timer(now)
    m.peer_disconnected(S, now)  # the only swarm neighbour fails; no passive peer to promote
    assert len(sw.hv.active) == 0
    t = now
    while True:
        t = m.next_deadline() or t + 1
        assert t - now <= 1.0 * 1.25 + 0.01, f"no walk within {t - now:.1f} s of the view emptying"
        effs = m.handle_timer(t)
        if any(isinstance(e, Send) and isinstance(e.message, MFind) and e.peer == BOOT for e in effs):
            break


def test_80pct_of_150_nodes_seed_5_swarm_heals_in_seconds() -> None:
    r = run_massive_failure(MassiveFailureScenario(seed=5, nodes=150, fail=0.8, settle=10.0, drain=5.0, rate=50.0,
                                                   messages=20, heal_limit=60.0))
    f = r.figures
    assert 0 <= f["heal_s"] <= 10.0 and 0 <= f["realm_heal_s"] <= 10.0, f
    assert f["early_delivery_mean"] >= 0.95 and f["delivery_min"] >= 0.95, f
