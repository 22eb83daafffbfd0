"""Plumtree: eager push, prune on duplicates, IHAVE batching, GRAFT timers, caches, size limits."""

from __future__ import annotations

from random import Random

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import GossipConfig, NodeConfig, PubSubConfig
from quicmesh.core.effects import Deliver, Send
from quicmesh.core.membership import HvSend
from quicmesh.core.mesh import Mesh
from quicmesh.core.mesh_messages import MGossip, MGraft, MIHave, MNeighbor, MPrune
from quicmesh.core.plumtree import GossipCaches, Plumtree, message_id
from quicmesh.errors import MessageTooLarge
from quicmesh.identity import KeyPair, NodeId


def nid(i: int) -> NodeId:
    return KeyPair.from_seed((i + 2000).to_bytes(32, "big")).node_id


ME, A, B, C = nid(0), nid(1), nid(2), nid(3)
PUB = nid(9)


def tree(registry: ContainerRegistry, cfg: GossipConfig | None = None) -> Plumtree:
    cfg = cfg or GossipConfig()
    pt = Plumtree(ME, "s", cfg, GossipCaches(cfg, registry), Random(1), registry, max_message_size=1024)
    for p in (A, B, C):
        pt.neighbor_up(p, 0.0)
    return pt


def gossip(seq: int, hops: int = 1, payload: bytes = b"x") -> MGossip:
    return MGossip("s", "s.t", PUB.raw, 7, seq, payload, hops)


def test_new_message_is_pushed_to_eager_and_delivered_once(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    out, arrived = pt.handle(A, gossip(0), 0.0)
    assert arrived is not None and arrived.seq == 0 and arrived.hops == 1
    assert {o.peer for o in out} == {B, C}
    assert all(isinstance(o.message, MGossip) and o.message.hops == 2 for o in out)
    out, arrived = pt.handle(B, gossip(0), 0.01)
    assert arrived is None
    assert out == [HvSend(B, MPrune("s"))]
    assert B in pt.lazy and B not in pt.eager


def test_id_is_computed_from_content_not_trusted() -> None:
    a = message_id(PUB.raw, 7, 0, "s.t", b"x")
    assert a == message_id(PUB.raw, 7, 0, "s.t", b"x")
    assert a != message_id(PUB.raw, 7, 0, "s.t", b"y")
    assert a != message_id(PUB.raw, 8, 0, "s.t", b"x")
    assert len(a) == 16


def test_lazy_peers_get_batched_ihaves(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    pt.handle(C, MPrune("s"), 0.0)
    pt.handle(A, gossip(0), 0.0)
    pt.handle(A, gossip(1), 0.002)
    assert pt.next_deadline() == pytest.approx(0.005)
    out = pt.handle_timer(0.005)
    ihaves = [o for o in out if isinstance(o.message, MIHave)]
    assert len(ihaves) == 1 and ihaves[0].peer == C
    assert len(ihaves[0].message.ids) == 2  # type: ignore[union-attr]


def test_missing_message_is_grafted_after_timeouts_rotating_announcers(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    mid = message_id(PUB.raw, 7, 5, "s.t", b"x")
    pt.handle(A, MIHave("s", [mid], [2]), 0.0)
    pt.handle(B, MIHave("s", [mid], [3]), 0.01)
    assert pt.handle_timer(0.079) == []
    out = pt.handle_timer(0.080)
    assert out == [HvSend(A, MGraft("s", mid))] and A in pt.eager
    out = pt.handle_timer(0.120)
    assert out == [HvSend(B, MGraft("s", mid))]
    _, arrived = pt.handle(B, gossip(5, hops=4), 0.13)
    assert arrived is not None
    assert mid not in pt.missing and pt.handle_timer(0.2) == []


def test_graft_is_answered_from_the_payload_cache(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    pt.handle(C, MPrune("s"), 0.0)
    pt.handle(A, gossip(3), 0.0)
    mid = message_id(PUB.raw, 7, 3, "s.t", b"x")
    out, _ = pt.handle(C, MGraft("s", mid), 0.1)
    assert len(out) == 1 and out[0].peer == C and isinstance(out[0].message, MGossip)
    assert C in pt.eager
    out, _ = pt.handle(C, MGraft("s", b"\0" * 16), 0.1)
    # not cached (never seen, or evicted): say so, so the grafter asks someone else at once
    assert [(h.peer, type(h.message).__name__) for h in out] == [(C, "MGone")]


def test_caches_are_bounded_and_purged(registry: ContainerRegistry) -> None:
    cfg = GossipConfig(seen_capacity=50, payload_cache_capacity=20, payload_cache_bytes=2_000)
    pt = tree(registry, cfg)
    for i in range(500):
        pt.handle(A, gossip(i, payload=b"p" * 100), i * 0.001)
    assert len(pt.caches.seen) == 50 and pt.caches.seen.stats().peak == 50
    assert len(pt.caches.payloads) <= 20 and pt.caches.payloads.nbytes <= 2_000
    assert pt.caches.count("s") > 0
    pt.caches.purge("s")
    assert pt.caches.count("s") == 0
    pt.close()
    assert not any(c.name.startswith("plumtree.") for c in registry)


def test_neighbor_down_forgets_the_peer(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    mid = message_id(PUB.raw, 7, 1, "s.t", b"x")
    pt.handle(A, MIHave("s", [mid], [1]), 0.0)
    pt.neighbor_down(A)
    assert A not in pt.eager and A not in pt.lazy
    assert pt.handle_timer(0.1) == []  # no graft towards a departed peer


# -- through the facade ------------------------------------------------------------------------------


def mesh(registry: ContainerRegistry) -> Mesh:
    cfg = NodeConfig(pubsub=PubSubConfig(max_message_size=1000))
    return Mesh(ME, ("me:1",), cfg, Random(3), registry)


def test_publish_too_large_raises_and_receive_too_large_is_dropped(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    m.subscribe("s.>", 0.0)
    with pytest.raises(MessageTooLarge):
        m.publish("s.t", b"x" * 1001, 0.0)
    m.peer_connected(A, ("a:1",), False, 0.0)
    m.handle_message(A, MNeighbor("s", True, ["a:1"]), 0.0)
    effs = m.handle_message(A, gossip(0, payload=b"y" * 1001), 0.1)
    assert effs == []
    assert m.counters["too_large_received"] == 1


def test_publish_delivers_locally_and_pushes_to_swarm(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    m.subscribe("s.*", 0.0)
    m.peer_connected(A, ("a:1",), False, 0.0)
    m.handle_message(A, MNeighbor("s", True, ["a:1"]), 0.0)
    effs = m.publish("s.t", b"hi", 1.0)
    assert Deliver("s.t", b"hi", ME, 0, 0) in effs
    assert any(isinstance(e, Send) and isinstance(e.message, MGossip) and e.peer == A for e in effs)
    effs = m.publish("s.a.b", b"no", 1.0)  # does not match s.*: pushed, not delivered locally
    assert not any(isinstance(e, Deliver) for e in effs)


def test_gossip_for_unjoined_swarm_is_refused(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    m.peer_connected(A, ("a:1",), False, 0.0)
    effs = m.handle_message(A, gossip(0), 0.0)
    assert [type(e.message).__name__ for e in effs if isinstance(e, Send)] == ["MLeave"]
    assert m.counters["unknown_swarm"] == 1 and len(m.caches.seen) == 0


def test_subscriptions_are_reference_counted(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    m.subscribe("s.>", 0.0)
    m.subscribe("s.>", 0.0)
    m.subscribe("s.t", 0.0)
    m.unsubscribe("s.>", 1.0)
    m.unsubscribe("s.t", 1.0)
    assert m.swarms.peek("s") is not None  # one reference to s.> left
    m.publish("s.x", b"1", 1.0)
    m.unsubscribe("s.>", 2.0)
    assert m.swarms.peek("s") is None and m.topic_state("s") == 0
    assert not any(c.name.startswith(("swarm.", "plumtree.")) for c in registry)
    m.unsubscribe("s.>", 3.0)  # unknown: ignored


def test_publish_only_membership_is_left_after_linger(registry: ContainerRegistry) -> None:
    from quicmesh.core.mesh import PUBLISH_LINGER

    m = mesh(registry)
    effs = m.publish("s.t", b"x", 0.0)
    assert not any(isinstance(e, Deliver) for e in effs)  # no local subscription
    assert m.swarms.peek("s") is not None
    now = 0.0
    while now <= PUBLISH_LINGER + 1:
        d = m.next_deadline()
        assert d is not None
        now = max(d, now + 0.001)
        m.handle_timer(now)
        if m.swarms.peek("s") is None:
            break
    assert m.swarms.peek("s") is None and m.topic_state("s") == 0
    assert now >= PUBLISH_LINGER
