"""#14: state renewed by every message (a publisher's reorder state, a broadcast tree's use, a
swarm's last publish, its re-announcement queue) moves its owner's deadline once a second, not
per message, so the node does not recompute its timers per message; and what is renewed less
often still expires when it should, to within that second."""

from __future__ import annotations

from functools import partial

import pytest
from plumkit import A, tree

from quicmesh.bounded import ContainerRegistry, TtlMap, Watch
from quicmesh.core.mesh_messages import MGossip
from quicmesh.core.swarm import LAST_PUBLISH_STEP
from quicmesh.testing import Simulator


def test_a_touch_moves_the_deadline_only_by_the_granularity_or_more() -> None:
    m: TtlMap[str, int] = TtlMap("t", 8, 600.0, registry=ContainerRegistry("t"), touch_granularity=1.0)
    w = Watch()
    m.watch(w)
    m.set("p", 1, 0.0)
    w.dirty = False
    for k in range(1, 10):  # 0.1 .. 0.9 s later: kept
        assert m.touch("p", k / 10) is True
    assert m.deadline("p") == 600.0 and m.next_deadline() == 600.0 and not w.dirty
    assert m.touch("p", 1.0) is True  # a second later: renewed
    assert m.deadline("p") == 601.0 and m.next_deadline() == 601.0 and w.dirty
    assert m.touch("p", 1.5, ttl=10.0) is True  # earlier than the deadline kept: applied at once
    assert m.deadline("p") == 11.5
    assert m.touch("gone", 2.0) is False
    assert [k for k, _ in m.expire(11.5)] == ["p"]  # it still expires


def test_a_touch_with_a_bad_ttl_or_a_bad_granularity_is_refused() -> None:
    reg = ContainerRegistry("t")
    m: TtlMap[str, int] = TtlMap("t", 8, 600.0, registry=reg, touch_granularity=1.0)
    m.set("p", 1, 0.0)
    with pytest.raises(ValueError):
        m.touch("p", 0.5, ttl=0.0)
    with pytest.raises(ValueError):
        TtlMap("u", 8, 1.0, registry=reg, touch_granularity=-1.0)


def test_a_swarms_last_publish_is_kept_to_the_second_and_marks_its_watch_only_then() -> None:
    sim = Simulator(3)
    a = sim.add_node()
    sim.join(a, [])
    sim.subscribe(a, "s.>")
    sim.run_for(0.5)
    sw = a.core.mesh.swarms.peek("s")
    assert sw is not None
    sw.last_publish = 10.0
    sw.watch.dirty = False
    sw.last_publish = 10.0 + LAST_PUBLISH_STEP / 2
    assert sw.last_publish == 10.0 and not sw.watch.dirty
    sw.last_publish = 10.0 + LAST_PUBLISH_STEP
    assert sw.last_publish == 10.0 + LAST_PUBLISH_STEP and sw.watch.dirty


def test_a_publish_only_swarm_is_still_left_after_its_linger() -> None:
    from quicmesh.core.mesh import PUBLISH_LINGER
    sim = Simulator(4)
    a = sim.add_node()
    sim.join(a, [])
    sim.run_for(0.5)
    t0 = sim.now
    for k in range(40):  # ten seconds of publishes, four a second
        sim.at(t0 + k / 4, partial(sim.publish, a, "p.t", bytes([k])))
    sim.run_for(10.0)
    last = t0 + 39 / 4
    assert a.core.mesh.swarms.peek("p") is not None
    sim.run_until(last + PUBLISH_LINGER - LAST_PUBLISH_STEP - 0.5)
    assert a.core.mesh.swarms.peek("p") is not None  # not left before its linger (less a second)
    sim.run_until(last + PUBLISH_LINGER + 1.0)
    assert a.core.mesh.swarms.peek("p") is None


def test_a_push_marks_the_tree_only_when_the_reannouncement_deadline_moves(registry: ContainerRegistry) -> None:
    pt = tree(registry)
    w = Watch()
    pt.watch(w)

    def batch(seq: int) -> MGossip:
        return MGossip("s", "s.t", b"\x09" * 32, 7, seq, [b"x"], 1)

    pt.handle(A, batch(0), 0.0)
    assert pt.reannounce and w.dirty
    w.dirty = False
    for seq in range(1, 20):  # the queue's head, hence its deadline, stays
        pt.handle(A, batch(seq), seq / 100)
    assert not w.dirty
    assert pt.reannounce_deadline() == pt.reannounce.peekleft()[0]
