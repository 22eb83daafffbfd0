"""Plumtree: eager push, prune on duplicates, IHAVE batching, GRAFT timers, caches, size limits."""

from __future__ import annotations

import hashlib
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plumkit import ME, A, B, C, nid, tree

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import MAX_BATCH_MESSAGES, GossipConfig, NodeConfig, PubSubConfig
from quicmesh.core.effects import Deliver, DeliverBatch, Effect, Send
from quicmesh.core.membership import HvSend
from quicmesh.core.mesh import PUBLISH_LINGER, Mesh
from quicmesh.core.mesh_messages import MGone, MGossip, MGraft, MIHave, MNeighbor, MPrune
from quicmesh.core.plumtree import GRAFT_ANSWER_INTERVAL, batch_digest, message_id
from quicmesh.errors import LimitExceeded, MessageTooLarge

PUB = nid(9)


def gossip(seq: int, hops: int = 1, payload: bytes = b"x") -> MGossip:
    return MGossip("s", "s.t", PUB.raw, 7, seq, [payload], hops)


def test_new_message_is_pushed_to_eager_and_delivered_once(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    out, arrived = pt.handle(A, gossip(0), 0.0)
    assert arrived is not None and arrived.seq == 0 and arrived.hops == 1
    assert {o.peer for o in out} == {B, C}
    assert all(isinstance(o.message, MGossip) and o.message.hops == 2 for o in out)
    out, arrived = pt.handle(B, gossip(0), 0.01)
    assert arrived is None
    assert out == [HvSend(B, MPrune("s", PUB.raw))]  # pruned in this publisher's tree only
    assert B in pt.lazy and B not in pt.eager


def test_id_is_computed_from_content_not_trusted() -> None:
    a = message_id(PUB.raw, 7, 0, "s.t", [b"x"])
    assert a == message_id(PUB.raw, 7, 0, "s.t", [b"x"])
    assert a != message_id(PUB.raw, 7, 0, "s.t", [b"y"])
    assert a != message_id(PUB.raw, 8, 0, "s.t", [b"x"])
    # a batch's id covers every payload and where each ends
    assert message_id(PUB.raw, 7, 0, "s.t", [b"ab", b"c"]) != message_id(PUB.raw, 7, 0, "s.t", [b"a", b"bc"])
    assert message_id(PUB.raw, 7, 0, "s.t", [b"x", b"y"]) != a
    assert len(a) == 16


# digests of the released layout (publisher bytes 0..31): ids and signatures cross versions, so a
# faster digest must give these same bytes (#14: a lone message takes a one-buffer path)
_KNOWN_DIGESTS = [
    ((7, 0, "s.t", [b"x"]), "4fc6feba656c147f60ce936abd236c227859eccb7b60104aa60f49d2fdecbac9"),
    ((2**63 - 1, 5, "s.caf\u00e9", [b""]), "dd043ad3ecdc19a7196b84eb87530bd63d7b99bbbec55dc39d78ff68d143a4a2"),
    ((1, 2, "s.t", [b"ab", b"c"]), "2174ebdd621b30540b69931af10dc6ceedb56e8604b1bbdca0be5eb71234f8b4"),
    ((0, 0, "s", [bytes(1000)] * 3), "96a70f85df9429bc1ac5a89af01d9b6d0f5178dff792a4f4dde255a6883648a3"),
]


@pytest.mark.parametrize(("batch", "digest"), _KNOWN_DIGESTS)
def test_batch_digest_keeps_its_layout(batch: tuple[int, int, str, list[bytes]], digest: str) -> None:
    epoch, seq, topic, payloads = batch
    assert batch_digest(bytes(range(32)), epoch, seq, topic, payloads).hex() == digest


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1),
       st.text(min_size=1, max_size=40), st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_batch_digest_is_the_documented_layout(publisher: bytes, epoch: int, seq: int, topic: str,
                                               payloads: list[bytes]) -> None:
    t = topic.encode()
    layout = b"".join((publisher, epoch.to_bytes(8, "big"), seq.to_bytes(8, "big"), len(t).to_bytes(4, "big"), t,
                       len(payloads).to_bytes(4, "big"), *(len(p).to_bytes(4, "big") for p in payloads), *payloads))
    assert batch_digest(publisher, epoch, seq, topic, payloads) == hashlib.sha256(layout).digest()


def test_lazy_peers_get_batched_ihaves(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    pt.handle(C, MPrune("s", PUB.raw), 0.0)
    pt.handle(A, gossip(0), 0.0)
    pt.handle(A, gossip(1), 0.002)
    assert pt.next_deadline() == pytest.approx(0.005)
    out = pt.handle_timer(0.005)
    ihaves = [(o.peer, o.message) for o in out if isinstance(o.message, MIHave)]
    assert len(ihaves) == 1 and ihaves[0][0] == C
    assert len(ihaves[0][1].ids) == 2


def test_missing_message_is_grafted_after_timeouts_rotating_announcers(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    mid = message_id(PUB.raw, 7, 5, "s.t", [b"x"])
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


def test_repairing_counts_an_announced_id_once_grafted_or_where_a_gap_is_first_judged(
        registry: ContainerRegistry) -> None:
    """#14: what the ordering asks before holding a gap on. An id announced and not yet grafted is
    most often a payload a few milliseconds behind its IHAVE: it counts only when ``fresh`` (a
    gap's first check); once its GRAFT is out it counts at every check, until the payload comes
    or its announcers say it is gone."""
    pt = tree(registry)
    assert not pt.repairing(True) and not pt.repairing(False)
    mid = message_id(PUB.raw, 7, 5, "s.t", [b"x"])
    pt.handle(A, MIHave("s", [mid], [2]), 0.0)
    assert pt.repairing(True) and not pt.repairing(False)
    _, arrived = pt.handle(B, gossip(5), 0.01)  # the payload, just behind its IHAVE
    assert arrived is not None and not pt.repairing(True) and not pt.repairing(False)
    mid = message_id(PUB.raw, 7, 6, "s.t", [b"x"])
    pt.handle(A, MIHave("s", [mid], [2]), 0.1)
    assert pt.handle_timer(0.18) == [HvSend(A, MGraft("s", mid))]  # missing for real: grafted
    assert pt.repairing(False) and pt.repairing(True)
    pt.handle(A, MGone("s", mid), 0.2)  # its only announcer no longer has it
    assert not pt.repairing(False) and not pt.repairing(True)


def test_a_pull_is_sent_to_every_neighbour_and_answered_with_the_cached_batches_from_its_seq(
        registry: ContainerRegistry) -> None:
    """#14: a node whose ordering has a gap that no repair fills asks its neighbours for the
    publisher's batches from the missing seq on (an ``MGraft`` with ``e`` and ``q``). They go out
    with the next IHAVE flush, due at once. A neighbour answers with what it caches from there (as
    repairs, at most ``PULL_BATCHES``), nothing when it has none, and changes no tree."""
    pt = tree(registry)
    assert pt.pull(PUB.raw, 7, 5, 4, 1.0)
    assert pt.ihave_deadline == 1.0
    out = pt.handle_timer(1.0)
    pull = MGraft("s", None, PUB.raw, 7, 5, 4)
    assert sorted((h.peer, h.message) for h in out) == [(p, pull) for p in sorted((A, B, C))]
    assert pt.counters["pulls_sent"] == 3
    # the other side: batches 5 (two messages), 7 and 9 cached, 8 not: answered 5 and 7, in order
    other = tree(registry)
    for seq, payloads in ((5, [b"a", b"b"]), (7, [b"c"]), (9, [b"d"])):
        other.handle(A, MGossip("s", "s.t", PUB.raw, 7, seq, payloads, 1), 0.0)
    other.handle(C, MPrune("s", PUB.raw), 0.0)
    lazy_before = set(other.lazy.keys())
    out, _ = other.handle(C, MGraft("s", None, PUB.raw, 7, 5, 20), 1.0)
    assert [(h.peer, h.message.seq, h.message.r) for h in out] == [(C, 5, True), (C, 7, True)]  # type: ignore[attr-defined]
    assert set(other.lazy.keys()) == lazy_before and not other.is_eager(C, PUB.raw)  # no tree changed
    assert other.handle(C, MGraft("s", None, PUB.raw, 7, 8, 20), 1.0)[0] == []  # nothing cached from 8
    assert other.handle(C, MGraft("s", None, PUB.raw, 6, 5, 20), 1.0)[0] == []  # another epoch
    assert other.handle(C, MGraft("s", None, PUB.raw, 7, 5, 20), 1.1)[0] == []  # answered lately
    assert other.handle(nid(50), MGraft("s", None, PUB.raw, 7, 5, 20), 2.0)[0] == []  # not a neighbour
    # only the batches that start within the n messages asked for (the gap, not what follows it)
    out, _ = other.handle(B, MGraft("s", None, PUB.raw, 7, 5, 2), 2.0)
    assert [h.message.seq for h in out] == [5]  # type: ignore[attr-defined]
    assert [h.message.seq for h in other.handle(B, MGraft("s", None, PUB.raw, 7, 9), 2.0)[0]] == [9]  # type: ignore[attr-defined]
    # a node with no neighbour has nobody to ask
    alone = tree(registry)
    for p in (A, B, C):
        alone.neighbor_down(p, 0.0)
    assert not alone.pull(PUB.raw, 7, 5, 1, 1.0) and alone.handle_timer(1.0) == []


def test_the_first_graft_goes_to_the_announcer_with_the_fewest_hops(registry: ContainerRegistry) -> None:
    # #14: the first announcer is the quickest IHAVE, not the nearest path to the publisher; a
    # repair through it hung the whole subtree below that deep (1,000 nodes: hops max 19, now 13)
    pt = tree(registry)
    mid = message_id(PUB.raw, 7, 5, "s.t", [b"x"])
    pt.handle(A, MIHave("s", [mid], [9]), 0.0)
    pt.handle(B, MIHave("s", [mid], [3]), 0.01)
    pt.handle(C, MIHave("s", [mid], [3]), 0.02)
    out = pt.handle_timer(0.080)
    assert out == [HvSend(B, MGraft("s", mid))]  # of two as near, the one that announced first
    assert pt.handle_timer(0.120) == [HvSend(C, MGraft("s", mid))]  # then the rotation goes on
    assert pt.handle_timer(0.200) == [HvSend(A, MGraft("s", mid))]
    _, arrived = pt.handle(A, gossip(5, hops=10), 0.21)
    assert arrived is not None and arrived.hops == 10


def test_graft_is_answered_from_the_payload_cache(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    pt.handle(C, MPrune("s"), 0.0)
    pt.handle(A, gossip(3), 0.0)
    mid = message_id(PUB.raw, 7, 3, "s.t", [b"x"])
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
    mid = message_id(PUB.raw, 7, 1, "s.t", [b"x"])
    pt.handle(A, MIHave("s", [mid], [1]), 0.0)
    pt.neighbor_down(A, 0.0)
    assert A not in pt.eager and A not in pt.lazy
    assert pt.handle_timer(0.1) == []  # no graft towards a departed peer


def test_a_graft_is_answered_once_per_interval_while_its_answer_travels(registry: ContainerRegistry) -> None:
    """#14: on a congested link a GRAFT's answer waits behind queued data while the retries come
    (40 ms backing off to 1 s); answering each multiplied the load that delayed them."""
    pt = tree(registry)
    pt.handle(C, MPrune("s"), 0.0)
    pt.handle(A, gossip(3), 0.0)
    mid = message_id(PUB.raw, 7, 3, "s.t", [b"x"])
    out, _ = pt.handle(C, MGraft("s", mid), 0.1)
    assert len(out) == 1 and isinstance(out[0].message, MGossip) and out[0].message.r
    for t in (0.14, 0.22, 0.38, 0.59):
        assert pt.handle(C, MGraft("s", mid), t)[0] == []
    assert pt.counters["grafts_unanswered"] == 4 and pt.counters["payloads_sent"] == 3  # A's push to B, C; one answer
    out, _ = pt.handle(B, MGraft("s", mid), 0.2)  # another peer's GRAFT is its own
    assert len(out) == 1 and out[0].peer == B
    # past GRAFT_ANSWER_INTERVAL the answer may have been dropped on the way: answered again
    pt.handle_timer(0.1 + GRAFT_ANSWER_INTERVAL)
    out, _ = pt.handle(C, MGraft("s", mid), 0.11 + GRAFT_ANSWER_INTERVAL)
    assert len(out) == 1
    # a peer that left and came back gets an answer at once (what was on its way went with it)
    pt.neighbor_down(C, 0.6)
    pt.neighbor_up(C, 0.62)
    assert len(pt.handle(C, MGraft("s", mid), 0.63)[0]) == 1
    pt.handle_timer(10.0)
    assert len(pt.answered) == 0


def test_a_second_copy_of_a_repair_prunes_nothing() -> None:
    """Two answers to our own GRAFT retries are not two tree paths: the only eager peer must not
    be pruned for them (it was, and every later batch then needed an IHAVE and a GRAFT)."""
    pt = tree(ContainerRegistry())
    repair = MGossip("s", "s.t", PUB.raw, 7, 4, [b"x"], 1, r=True)
    _, arrived = pt.handle(A, repair, 0.0)
    assert arrived is not None
    out, arrived = pt.handle(A, repair, 0.3)
    assert arrived is None and out == [] and pt.is_eager(A, PUB.raw)
    assert pt.counters["duplicates"] == 1 and pt.counters["prunes_sent"] == 0
    out, _ = pt.handle(A, gossip(4), 0.4)  # an eager push of a seen batch still prunes its sender
    assert out == [HvSend(A, MPrune("s", PUB.raw))] and not pt.is_eager(A, PUB.raw)


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
    assert Deliver("s.t", b"hi", ME, 0, 0) in effs  # delivered locally at once
    assert not any(isinstance(e, Send) for e in effs)  # ...and batched until the flush
    assert m.has_batches and (m.next_deadline() or 9.0) <= 1.0  # due now: a timer-only driver flushes too
    effs = m.flush(1.0)
    assert [(e.peer, e.message.payloads) for e in effs if isinstance(e, Send) and isinstance(e.message, MGossip)] \
        == [(A, [b"hi"])]
    assert not m.has_batches and m.flush(1.0) == []
    effs = m.publish("s.a.b", b"no", 1.0) + m.handle_timer(1.0)  # does not match s.*: pushed, not delivered
    assert delivered(effs) == []
    assert any(isinstance(e, Send) and isinstance(e.message, MGossip) for e in effs)


def gossip_sends(effs: list[Any]) -> list[MGossip]:
    return [e.message for e in effs if isinstance(e, Send) and isinstance(e.message, MGossip)]


def test_publishes_in_one_iteration_travel_as_batches(registry: ContainerRegistry) -> None:
    cfg = NodeConfig(gossip=GossipConfig(batch_max_messages=3, batch_max_bytes=100))
    m = Mesh(ME, ("me:1",), cfg, Random(3), registry)
    m.peer_connected(A, ("a:1",), False, 0.0)
    m.subscribe("s.>", 0.0)
    m.handle_message(A, MNeighbor("s", True, ["a:1"]), 0.0)
    effs: list[Any] = []
    for i in range(5):  # 3 fill a batch, which leaves at once; 2 wait for the flush
        effs += m.publish("s.t", b"%d" % i, 1.0)
    effs += m.publish("s.u", b"other", 1.0)  # another topic closes the open batch
    effs += m.publish("s.u", b"L" * 96, 1.0)  # over batch_max_bytes with what is open: alone
    effs += m.flush(1.0)
    batches = gossip_sends(effs)
    assert [(g.topic, g.seq, g.payloads) for g in batches] == [
        ("s.t", 0, [b"0", b"1", b"2"]), ("s.t", 3, [b"3", b"4"]), ("s.u", 5, [b"other"]), ("s.u", 6, [b"L" * 96])]
    # local deliveries came at publish time, one per message, in seq order
    assert [(d.seq, d.payload) for d in delivered(effs)][:2] == [(0, b"0"), (1, b"1")]
    assert m.counters["published"] == 7 and len(m.caches.payloads) == 4  # one cache entry per batch


def delivered(effects: list[Effect]) -> list[Deliver]:
    """The deliveries among ``effects``, a batch counting as each of its messages."""
    return [d for e in effects if isinstance(e, Deliver | DeliverBatch)
            for d in (e.each() if isinstance(e, DeliverBatch) else [e])]


def test_received_batch_is_delivered_message_by_message_in_order(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    m.subscribe("s.t", 0.0)
    m.peer_connected(A, ("a:1",), False, 0.0)
    m.handle_message(A, MNeighbor("s", True, ["a:1"]), 0.0)

    def batch(seq: int, *payloads: bytes) -> MGossip:
        return MGossip("s", "s.t", PUB.raw, 7, seq, list(payloads), 1)

    first = m.handle_message(A, batch(0, b"a", b"b"), 0.1)
    # a batch is handed over as one effect: one routing and one queue operation for all of it
    assert [type(e) for e in first if isinstance(e, Deliver | DeliverBatch)] == [DeliverBatch]
    assert [(d.seq, d.payload) for d in delivered(first)] == [(0, b"a"), (1, b"b")]
    assert delivered(m.handle_message(A, batch(5, b"f"), 0.2)) == []  # 2..4 missing
    late = m.handle_message(A, batch(2, b"c", b"d", b"e"), 0.3)
    assert [(d.seq, d.payload) for d in delivered(late)] == [(2, b"c"), (3, b"d"), (4, b"e"), (5, b"f")]
    assert [e.size for e in late if isinstance(e, DeliverBatch)] == [3 + 3 * 64]
    assert m.ordering.buffered == 0 and m.counters["delivered"] == 6
    # empty or oversized batches are malformed: dropped and counted, nothing cached
    seen = len(m.caches.seen)
    assert m.handle_message(A, batch(9), 0.4) == []
    assert m.handle_message(A, batch(9, *([b"z"] * (MAX_BATCH_MESSAGES + 1))), 0.4) == []
    assert m.counters["malformed"] == 2 and len(m.caches.seen) == seen


def test_leaving_a_swarm_sends_its_open_batch_first(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    m.subscribe("s.t", 0.0)
    m.peer_connected(A, ("a:1",), False, 0.0)
    m.handle_message(A, MNeighbor("s", True, ["a:1"]), 0.0)
    m.publish("s.t", b"last words", 1.0)
    # no flush in between (a simulator's choice); the publish is older than the publisher's linger
    effs = m.unsubscribe("s.t", 1.0 + PUBLISH_LINGER + 1)
    kinds = [type(e.message).__name__ for e in effs if isinstance(e, Send)]
    assert kinds[0] == "MGossip" and "MLeave" in kinds and not m.has_batches


def _run_until_left(m: Mesh, swarm: str, now: float) -> float:
    """Run the mesh's timers, as a driver does, until it leaves ``swarm``; returns when it did."""
    while m.swarms.peek(swarm) is not None:
        d = m.next_deadline()
        assert d is not None and d <= now + PUBLISH_LINGER + 2, d
        now = max(d, now + 0.001)
        m.handle_timer(now)
    return now


def test_a_publisher_that_unsubscribes_stays_a_publisher(registry: ContainerRegistry) -> None:
    """#14: the last unsubscribe of a swarm this node published to within ``PUBLISH_LINGER``
    keeps it a publish-only member (the rule for a node that only published), so a client that
    subscribes, publishes and leaves, task after task, does not make the swarm's members re-knit
    their overlay each time; it is left ``PUBLISH_LINGER`` after the last publish."""
    m = mesh(registry)
    m.subscribe("s.t", 0.0)
    m.peer_connected(A, ("a:1",), False, 0.0)
    m.handle_message(A, MNeighbor("s", True, ["a:1"]), 0.0)
    m.publish("s.t", b"x", 1.0)
    m.flush(1.0)
    effs = m.unsubscribe("s.t", 2.0)
    assert not [e for e in effs if isinstance(e, Send)]  # no LEAVE
    sw = m.swarms.peek("s")
    assert sw is not None and not sw.patterns and A in sw.hv.active
    assert delivered(m.handle_message(A, gossip(0), 2.5)) == []  # nothing delivered: no pattern
    # subscribing again: no join, no walk; the overlay is the one kept
    assert not [e for e in m.subscribe("s.t", 3.0) if isinstance(e, Send)]
    assert delivered(m.handle_message(A, gossip(1), 3.5)) != []
    m.unsubscribe("s.t", 4.0)
    left = _run_until_left(m, "s", 4.0)
    assert 1.0 + PUBLISH_LINGER < left <= 1.0 + PUBLISH_LINGER + 1
    assert m.topic_state("s") == 0
    # a subscriber that never published leaves at once, as before
    m.subscribe("u.t", left)
    m.unsubscribe("u.t", left + 1)
    assert m.swarms.peek("u") is None and m.topic_state("u") == 0


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
    sw = m.swarms.peek("s")
    assert sw is not None and not sw.patterns  # a publisher for PUBLISH_LINGER after its publish
    m.unsubscribe("s.>", 3.0)  # unknown: ignored
    _run_until_left(m, "s", 3.0)
    assert m.swarms.peek("s") is None and m.topic_state("s") == 0
    assert not any(c.name.startswith(("swarm.", "plumtree.")) for c in registry)


def test_a_publish_only_membership_gives_way_at_the_topic_cap(registry: ContainerRegistry) -> None:
    """At ``gossip.max_topics`` a new swarm takes the place of the publish-only membership
    published to longest ago (sending its open batch and LEAVE first); only swarms with local
    subscriptions make a subscribe fail. Cap 3: publish-only a (t=1) and b (t=2), subscribed s."""
    m = Mesh(ME, ("me:1",), NodeConfig(gossip=GossipConfig(max_topics=3)), Random(3), registry)
    m.subscribe("s.t", 0.0)
    m.peer_connected(A, ("a:1",), False, 0.0)
    m.publish("a.t", b"1", 1.0)
    m.handle_message(A, MNeighbor("a", True, ["a:1"]), 1.0)
    m.flush(1.0)
    m.publish("b.t", b"2", 2.0)
    m.flush(2.0)
    m.publish("a.t", b"3", 2.5)  # a's last publish is later now: b is the one published to longest ago
    m.subscribe("c.t", 3.0)  # a's batch is still open: b goes, and no batch is lost
    assert sorted(m.swarms.keys()) == ["a", "c", "s"] and m.has_batches
    m.flush(3.0)
    effs = m.subscribe("d.t", 4.0)  # now a goes: its open batch would have left first
    sends = [type(e.message).__name__ for e in effs if isinstance(e, Send) and getattr(e.message, "s", "") == "a"]
    assert sends == ["MLeave"] and sorted(m.swarms.keys()) == ["c", "d", "s"]
    with pytest.raises(LimitExceeded) as li:  # every swarm has a subscription
        m.subscribe("e.t", 5.0)
    assert li.value.limit == "gossip.max_topics"
    with pytest.raises(LimitExceeded):
        m.publish("e.t", b"4", 5.0)


def test_publish_only_membership_is_left_after_linger(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    effs = m.publish("s.t", b"x", 0.0)
    assert delivered(effs) == []  # no local subscription
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
