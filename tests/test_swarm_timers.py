"""#14: a node in many swarms pays per event for the swarms the event changed, and per timer for
the swarms awake (:mod:`quicmesh.core.swarm_timers`), and the heaps of swarm times stay bounded
under churn. (That the cached times and the skipped swarms are exact is checked in
``tests/test_core_deadlines.py``.)"""

from __future__ import annotations

import pytest

from quicmesh.core.mesh import Mesh
from quicmesh.core.plumtree import Plumtree
from quicmesh.core.swarm import Swarm
from quicmesh.core.swarm_timers import SwarmTimers
from quicmesh.testing import Simulator
from quicmesh.testing.sim import SimNode

SWARMS = 300


def _pair(seed: int) -> tuple[Simulator, SimNode, SimNode]:
    sim = Simulator(seed)
    a, b = sim.add_node(), sim.add_node()
    sim.join(a, [])
    sim.run_for(0.1)
    sim.join(b, [a])
    sim.run_for(0.5)
    return sim, a, b


def test_events_in_one_swarm_recompute_that_swarm_and_timers_visit_only_swarms_awake(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sim, a, b = _pair(11)
    for t in range(SWARMS):
        sim.subscribe(a, f"s{t}.>")
    sim.subscribe(b, "s0.>")
    sim.run_for(20.0)
    mesh: Mesh = a.core.mesh
    assert len(mesh.swarms) == SWARMS
    computed: list[str] = []
    compute = SwarmTimers.compute

    def counting_compute(sw: Swarm) -> None:
        computed.append(sw.hv.swarm)
        compute(sw)

    monkeypatch.setattr(SwarmTimers, "compute", staticmethod(counting_compute))
    visits = [0]
    for name in ("idle_timer", "handle_timer"):
        orig = getattr(Plumtree, name)

        def counted(self: Plumtree, now: float, orig: object = orig) -> object:
            if self.me == mesh.me:
                visits[0] += 1
            return orig(self, now)  # type: ignore[operator]

        monkeypatch.setattr(Plumtree, name, counted)
    deadlines = [0]
    next_deadline = mesh.next_deadline

    def counting_deadline() -> float | None:
        deadlines[0] += 1
        return next_deadline()

    monkeypatch.setattr(mesh, "next_deadline", counting_deadline)
    timers = [0]
    handle_timer = mesh.handle_timer

    def counting_timer(now: float) -> object:
        timers[0] += 1
        return handle_timer(now)

    monkeypatch.setattr(mesh, "handle_timer", counting_timer)
    for i in range(300):
        sim.publish(b, "s0.x", b"%d" % i)
        sim.run_for(0.01)
    sim.run_for(1.0)
    assert sum(d.topic == "s0.x" for d in a.deliveries) == 300
    per_event = len(computed) / deadlines[0]
    per_timer = visits[0] / max(timers[0], 1)
    print(f"{SWARMS} swarms, 300 messages in one: {deadlines[0]} deadline reads recomputed {len(computed)} swarm "
          f"times ({per_event:.2f} per read; a walk: {SWARMS}), {timers[0]} timers visited {visits[0]} swarms "
          f"({per_timer:.2f} per timer)")
    assert deadlines[0] >= 300 and timers[0] >= 10
    assert per_event < 3
    assert per_timer < 10


def test_the_heaps_of_swarm_times_stay_bounded_under_churn() -> None:
    """Swarms joined and left 20 times over, each with traffic: the heaps' stale entries are
    dropped, never more than two entries per swarm (+64) per heap."""
    sim, a, b = _pair(12)
    timers = a.core.mesh.swarm_timers
    worst = 0
    for rnd in range(20):
        for t in range(40):
            sim.subscribe(a, f"c{t}.>")
        sim.subscribe(b, "c0.>")
        sim.run_for(0.5)
        for i in range(20):
            sim.publish(b, "c0.x", b"%d-%d" % (rnd, i))
            sim.run_for(0.02)
        worst = max(worst, len(timers))
        for t in range(40):
            sim.unsubscribe(a, f"c{t}.>")
        sim.unsubscribe(b, "c0.>")
        sim.run_for(0.5)
        worst = max(worst, len(timers))
    print(f"20 rounds of 40 swarms joined and left: at most {worst} heap entries (bound {2 * (2 * 40 + 64)})")
    assert worst <= 2 * (2 * 40 + 64)
    assert len(a.core.mesh.swarms) == 0


def test_stale_heap_entries_far_in_the_future_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stale entries leave a heap when they reach its top; entries that never do (each swarm's
    times moving earlier, far ahead) are dropped by a rebuild: 100 rounds over 50 swarms pushed
    10,000 entries, the heaps never held more than two per swarm (+64) each."""
    sim = Simulator(13)
    a = sim.add_node()
    sim.join(a, [])
    for t in range(50):
        sim.subscribe(a, f"f{t}.>")
    sim.run_for(1.0)
    mesh: Mesh = a.core.mesh
    timers = mesh.swarm_timers
    compute = SwarmTimers.compute
    pushed = [0]

    def earlier_each_time(sw: Swarm) -> None:
        compute(sw)
        pushed[0] += 1
        sw.due = sw.wake = 1e9 - pushed[0]

    monkeypatch.setattr(SwarmTimers, "compute", staticmethod(earlier_each_time))
    worst = 0
    for _ in range(100):
        for key in list(mesh.swarms.keys()):
            sw = mesh.swarms.peek(key)
            assert sw is not None
            sw.watch.dirty = True
        mesh.next_deadline()
        worst = max(worst, len(timers))
    print(f"{pushed[0]:,} recomputed times of 50 swarms ({2 * pushed[0]:,} heap pushes): at most {worst} "
          f"heap entries (bound {2 * (2 * 50 + 64)})")
    assert pushed[0] == 5000
    assert worst <= 2 * (2 * 50 + 64)
    monkeypatch.undo()
    for key in list(mesh.swarms.keys()):
        sw = mesh.swarms.peek(key)
        assert sw is not None
        sw.watch.dirty = True
    real = mesh.next_deadline()
    assert real is not None and real < 1e8  # real times again
