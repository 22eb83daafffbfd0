"""#14: one broadcast tree per publisher, the IHAVE-side tree optimisation, and an epoch's first
message overtaken by its successor."""

from __future__ import annotations

from plumkit import A, B, C, nid, tree

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import GossipConfig
from quicmesh.core.membership import HvSend
from quicmesh.core.mesh_messages import MGossip, MGraft, MIHave, MPrune
from quicmesh.core.plumtree import Arrived, message_id
from quicmesh.core.topics import Ordering
from quicmesh.identity import NodeId

P1, P2 = nid(8), nid(9)


def gossip(pub: NodeId, seq: int, hops: int = 1) -> MGossip:
    return MGossip("s", "s.t", pub.raw, 7, seq, [b"x"], hops)


def payload_peers(out: list[HvSend]) -> set[NodeId]:
    return {o.peer for o in out if isinstance(o.message, MGossip)}


def test_a_duplicate_prunes_the_link_for_its_publisher_only(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    pt.handle(A, gossip(P1, 0), 0.0)
    out, _ = pt.handle(B, gossip(P1, 0), 0.01)
    assert out == [HvSend(B, MPrune("s", P1.raw))]
    assert not pt.is_eager(B, P1.raw) and pt.is_eager(B, P2.raw)
    # P1's next message goes to B lazily (IHAVE); P2's still eagerly
    out, _ = pt.handle(A, gossip(P1, 1), 0.1)
    assert payload_peers(out) == {C}
    out, _ = pt.handle(A, gossip(P2, 0), 0.1)
    assert payload_peers(out) == {B, C}
    # a PRUNE naming a publisher from a neighbour acts on that tree; one without a publisher on all
    pt.handle(C, MPrune("s", P2.raw), 0.2)
    assert not pt.is_eager(C, P2.raw) and pt.is_eager(C, P1.raw)
    pt.handle(A, MPrune("s"), 0.2)
    assert not pt.is_eager(A, P1.raw) and not pt.is_eager(A, P2.raw)


def test_graft_makes_the_link_eager_in_the_payloads_tree(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    pt.handle(A, gossip(P1, 0), 0.0)
    pt.handle(C, MPrune("s", P1.raw), 0.0)
    pt.handle(C, MPrune("s", P2.raw), 0.0)
    mid = message_id(P1.raw, 7, 0, "s.t", [b"x"])
    out, _ = pt.handle(C, MGraft("s", mid), 0.1)
    assert payload_peers(out) == {C}
    assert pt.is_eager(C, P1.raw) and not pt.is_eager(C, P2.raw)
    pt.handle(C, MGraft("s", None, P2.raw), 0.1)
    assert pt.is_eager(C, P2.raw)


def test_shorter_path_announced_by_ihave_swaps_the_links(registry: ContainerRegistry) -> None:
    pt = tree(registry, GossipConfig(optimization_threshold=3))
    pt.handle(B, MPrune("s", P1.raw), 0.0)  # B lazy for P1
    pt.handle(A, gossip(P1, 0, hops=9), 0.0)  # arrived over 9 hops from A
    mid = message_id(P1.raw, 7, 0, "s.t", [b"x"])
    # B announces it at 7 hops: not enough shorter (7 + 3 > 9)
    out, _ = pt.handle(B, MIHave("s", [mid], [7]), 0.05)
    assert out == [] and pt.counters["optimisations"] == 0
    # at 5 hops: graft B into P1's tree and prune A from it
    out, _ = pt.handle(B, MIHave("s", [mid], [5]), 0.06)
    assert out == [HvSend(B, MGraft("s", None, P1.raw)), HvSend(A, MPrune("s", P1.raw))]
    assert pt.is_eager(B, P1.raw) and not pt.is_eager(A, P1.raw) and pt.is_eager(A, P2.raw)
    assert pt.counters["optimisations"] == 1


def test_trees_are_bounded_and_forget_departed_neighbours(registry: ContainerRegistry) -> None:
    pt = tree(registry, GossipConfig(tree_publishers=4))
    for i in range(20):
        pub = nid(100 + i)
        pt.handle(A, gossip(pub, 0), float(i))
        pt.handle(B, gossip(pub, 0), float(i))  # duplicate: B lazy in this tree
    assert len(pt.trees) == 4 and pt.trees.stats().peak == 4
    pt.neighbor_down(B, 0.0)
    assert all(B not in lazy for lazy in pt.trees.values())
    pt.close()
    assert not any(c.name == "plumtree.trees" for c in registry)


def test_first_message_overtaken_by_the_second_is_not_held_for_the_gap_timeout(registry: ContainerRegistry) -> None:
    # at 0 % loss the first message of a publisher floods while its successor already follows
    # the tree: seq 1 often arrives first. Before #14 seq 0 then waited the 10 s gap timeout.
    o = Ordering(64, 10.0, 100, registry)

    def arrived(seq: int) -> Arrived:
        return Arrived("s", "s.t", P1, 7, seq, [b"x"], 1)

    assert o.offer(arrived(1), 0.0) == []
    assert o.offer(arrived(2), 0.01) == []
    assert [a.seq for a in o.offer(arrived(0), 0.02)] == [0, 1, 2]
    assert o.gap_timers.next_deadline() is None
    assert o.counters["skipped"] == 0


def test_a_late_joiners_first_message_waits_the_start_wait_not_the_gap_timeout(registry: ContainerRegistry) -> None:
    o = Ordering(64, 10.0, 100, registry, start_wait=1.0)

    def arrived(seq: int) -> Arrived:
        return Arrived("s", "s.t", P1, 7, seq, [b"x"], 1)

    assert o.offer(arrived(40), 0.0) == []  # mid-stream: 0..39 were published before we joined
    assert o.next_deadline() == 1.0
    assert [a.seq for a in o.handle_timer(1.0)] == [40]
    # once started, a gap waits the full gap timeout
    assert o.offer(arrived(42), 1.5) == []
    assert o.next_deadline() == 11.5
    assert [a.seq for a in o.offer(arrived(41), 2.0)] == [41, 42]
