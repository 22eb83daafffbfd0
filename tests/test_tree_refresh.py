"""#14: broadcast trees follow latencies that change. Every ``gossip.tree_refresh`` (x 0.5-1.5) a
node that receives a new batch of a publisher grafts its neighbours lazy for that publisher; they
push the next batch too, the first arrival becomes the eager link and the duplicates prune the
others.

In the simulator: the eager link from a publisher slows from 5 to 60 ms (too little for the 80 ms
GRAFT timer to notice) while a 2-hop path of 10 ms stays; with refreshes the receiver is back on
the fast path within one refresh period, without it stays on the slow link for good."""

from __future__ import annotations

import statistics

from plumkit import A, B, C, nid, tree

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import GossipConfig, NodeConfig
from quicmesh.core.membership import HvSend
from quicmesh.core.mesh_messages import MGossip, MGraft, MPrune
from quicmesh.testing import Simulator

P = nid(8)


def gossip(seq: int, *, r: bool = False) -> MGossip:
    return MGossip("s", "s.t", P.raw, 7, seq, [b"x"], 2, r=r)


def control(out: list[HvSend]) -> list[HvSend]:
    return [o for o in out if isinstance(o.message, MGraft | MPrune)]


def test_a_refresh_grafts_the_lazy_neighbours_once_per_period(registry: ContainerRegistry) -> None:
    pt = tree(registry, GossipConfig(tree_refresh=10.0))
    out, _ = pt.handle(A, gossip(0), 0.0)  # the first batch: the refresh clock starts, nothing to refresh
    assert control(out) == []
    due = pt.tree_used.get(P.raw)
    assert due is not None and 5.0 <= due <= 15.0  # 10 s x 0.5-1.5
    # B and C pruned for P: A is the eager link
    assert control(pt.handle(B, gossip(0), 0.01)[0]) == [HvSend(B, MPrune("s", P.raw))]
    assert control(pt.handle(C, gossip(0), 0.01)[0]) == [HvSend(C, MPrune("s", P.raw))]
    assert not pt.is_eager(B, P.raw) and not pt.is_eager(C, P.raw)
    # batches before the refresh is due change nothing
    assert control(pt.handle(A, gossip(1), due - 0.01)[0]) == []
    # the first batch at or after it: B and C are asked to push P's batches again
    out, _ = pt.handle(A, gossip(2), due)
    assert sorted(control(out), key=lambda o: o.peer.raw) == sorted(
        [HvSend(B, MGraft("s", None, P.raw)), HvSend(C, MGraft("s", None, P.raw))], key=lambda o: o.peer.raw)
    assert pt.is_eager(B, P.raw) and pt.is_eager(C, P.raw) and pt.counters["tree_refreshes"] == 1
    next_due = pt.tree_used.get(P.raw)
    assert next_due is not None and due + 5.0 <= next_due <= due + 15.0
    # the next batch comes from all three; the later copies prune their senders again
    pt.handle(B, gossip(3), due + 0.1)
    assert control(pt.handle(A, gossip(3), due + 0.11)[0]) == [HvSend(A, MPrune("s", P.raw))]
    assert control(pt.handle(C, gossip(3), due + 0.12)[0]) == [HvSend(C, MPrune("s", P.raw))]
    assert pt.is_eager(B, P.raw) and not pt.is_eager(A, P.raw)  # B's path was the faster one now


def test_a_repairs_answer_does_not_refresh_and_zero_turns_it_off(registry: ContainerRegistry) -> None:
    pt = tree(registry, GossipConfig(tree_refresh=10.0))
    pt.handle(A, gossip(0), 0.0)
    pt.handle(B, MPrune("s", P.raw), 0.0)
    assert control(pt.handle(A, gossip(1, r=True), 100.0)[0]) == []  # a GRAFT's answer, marked r
    assert pt.counters["tree_refreshes"] == 0
    off = tree(registry, GossipConfig(tree_refresh=0.0))
    off.handle(A, gossip(0), 0.0)
    off.handle(B, MPrune("s", P.raw), 0.0)
    for seq in range(1, 5):
        assert control(off.handle(A, gossip(seq), 100.0 * seq)[0]) == []
    assert off.counters["tree_refreshes"] == 0


def _slowed_link(tree_refresh: float) -> tuple[list[float], int]:
    """Publisher p, relay a, receiver r, all linked: p-r 5 ms, p-a and a-r 5 ms. After 20
    messages (10 a second) p-r slows to 60 ms. Returns r's delivery latencies of the 80 messages
    after that and its tree refreshes."""
    cfg = NodeConfig(gossip=GossipConfig(tree_refresh=tree_refresh))
    sim = Simulator(3, cfg)
    p, a, r = (sim.add_node() for _ in range(3))
    sim.join(a, [p])
    sim.join(r, [p])
    sim.run_for(2.0)
    for n in (p, a, r):
        sim.subscribe(n, "news.>")
    sim.run_for(3.0)
    for x, y in ((p, a), (p, r), (a, r)):
        sim.set_link_latency(x.index, y.index, 0.005)
    sent: dict[int, float] = {}
    for k in range(100):
        if k == 20:
            sim.set_link_latency(p.index, r.index, 0.060)
        sent[k] = sim.now
        sim.publish(p, "news.x", k.to_bytes(4, "big"))
        sim.run_for(0.1)
    sim.run_for(1.0)
    swarm = r.mesh.swarms.peek("news")
    assert swarm is not None and {a.id, p.id} <= set(swarm.hv.active_peers())
    got = {int.from_bytes(d.payload, "big"): d.time for d in r.deliveries if d.publisher == p.id}
    assert sorted(got) == list(range(100))
    return [got[k] - sent[k] for k in range(20, 100)], swarm.pt.counters["tree_refreshes"]


def test_a_receiver_leaves_an_eager_link_that_slowed_down() -> None:
    on, refreshes = _slowed_link(2.0)
    off, none = _slowed_link(0.0)
    print(f"after p-r slowed to 60 ms: latency p50 {1000 * statistics.median(on):.1f} ms with refreshes every "
          f"2 s ({refreshes}), {1000 * statistics.median(off):.1f} ms without")
    assert refreshes >= 2 and none == 0
    assert min(off[5:]) >= 0.060  # stuck on the slow link
    # within one period (2 s x 0.5-1.5: 30 messages) on the 10 ms path, and it stays there
    assert max(on[35:]) <= 0.015


def test_refresh_state_goes_with_an_idle_publishers_tree(registry: ContainerRegistry) -> None:
    # the refresh time lives in the publisher's tree_used entry (a map of its own kept churned
    # publishers' times past their trees: the soak caught it)
    pt = tree(registry, GossipConfig(tree_refresh=10.0, publisher_idle_ttl=5.0))
    for i, pub in enumerate((P, nid(9), nid(10))):
        pt.handle(A, MGossip("s", "s.t", pub.raw, 7, 0, [b"x"], 2), 0.1 * i)
    pt.handle(B, MPrune("s", P.raw), 0.5)
    assert len(pt.tree_used) == 3 and pt.trees.peek(P.raw) is not None
    pt.handle_timer(6.0)  # every publisher idle for publisher_idle_ttl
    assert len(pt.tree_used) == 0 and len(pt.trees) == 0
    # a tree kept alive by its publisher's messages keeps its refresh time
    pt.handle(A, gossip(1), 6.5)
    pt.handle_timer(7.0)
    assert pt.tree_used.get(P.raw) is not None
