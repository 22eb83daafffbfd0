"""Cached deadlines stay exact: ``TtlMap.next_deadline`` (kept up to date by the map), the
:class:`~quicmesh.bounded.Watch` that containers mark, and the mesh's cached timer deadline
(recomputed only after its watch was marked) compared with a fresh computation after every
event of seeded simulations, and the mesh's idle timer path compared with the full one."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicmesh.bounded import ContainerRegistry, LruMap, TtlMap, TtlSet, Watch
from quicmesh.config import MembershipConfig, NodeConfig
from quicmesh.core.effects import Effect
from quicmesh.core.mesh import Mesh
from quicmesh.core.node import NodeCore
from quicmesh.testing import Simulator
from quicmesh.testing.network import NetworkParams
from quicmesh.testing.sim import SimNode

# -- the containers ------------------------------------------------------------------------------

_OPS = st.lists(
    st.tuples(st.sampled_from(["set", "set_ttl", "touch", "pop", "expire", "clear"]),
              st.integers(0, 7), st.floats(0.0, 3.0), st.floats(0.01, 5.0)),
    max_size=60,
)


def _true_earliest(m: TtlMap[int, int]) -> float | None:
    ds = [m.deadline(k) for k in m.keys()]
    return min(d for d in ds if d is not None) if ds else None


def _apply(m: TtlMap[int, int], op: str, key: int, now: float, ttl: float) -> None:
    if op == "set":
        m.set(key, key, now)
    elif op == "set_ttl":
        m.set(key, key, now, ttl)
    elif op == "touch":
        m.touch(key, now, ttl)
    elif op == "pop":
        m.pop(key)
    elif op == "expire":
        m.expire(now)
    else:
        m.clear()


@settings(max_examples=200, deadline=None)
@given(_OPS, st.integers(1, 6), st.sampled_from([0.0, 0.5]))
def test_ttl_map_next_deadline_is_the_earliest_live_deadline_and_marks_its_watch(
        ops: list[tuple[str, int, float, float]], capacity: int, granularity: float) -> None:
    m: TtlMap[int, int] = TtlMap("t", capacity, 1.0, registry=ContainerRegistry("t"),
                                 touch_granularity=granularity)
    w = Watch()
    m.watch(w)
    now = 0.0
    for op, key, dt, ttl in ops:
        now += dt
        before = m.next_deadline()
        w.dirty = False
        _apply(m, op, key, now, ttl)
        assert m.next_deadline() == _true_earliest(m)
        if m.next_deadline() != before:
            assert w.dirty, (op, before, m.next_deadline())


@settings(max_examples=200, deadline=None)
@given(_OPS, st.integers(1, 6), st.integers(1, 8))
def test_ttl_map_next_deadline_stays_exact_when_asked_only_now_and_then(
        ops: list[tuple[str, int, float, float]], capacity: int, every: int) -> None:
    """#14: a pop of the earliest entry leaves the map's earliest deadline stale until the next
    ``next_deadline()``; runs of sets, touches, pops and expiries in between (asked every
    ``every`` operations) still give the exact earliest, and the watch is marked whenever it moved
    since it was last asked."""
    m: TtlMap[int, int] = TtlMap("t", capacity, 1.0, registry=ContainerRegistry("t"))
    w = Watch()
    m.watch(w)
    now = 0.0
    before = m.next_deadline()
    w.dirty = False
    for i, (op, key, dt, ttl) in enumerate(ops):
        now += dt
        _apply(m, op, key, now, ttl)
        if i % every == every - 1 or i == len(ops) - 1:
            assert m.next_deadline() == _true_earliest(m)
            if m.next_deadline() != before:
                assert w.dirty, (op, before, m.next_deadline())
            before = m.next_deadline()
            w.dirty = False


def test_popping_the_earliest_entries_defers_the_heap_work_to_the_next_ask() -> None:
    """Calls popped in the order they were made (a call's tables at every reply): no re-seek per
    pop; the next ``next_deadline()`` finds the live head, and the heap stays bounded."""
    m: TtlMap[int, int] = TtlMap("t", 100, 10.0, registry=ContainerRegistry("t"))
    for k in range(100):
        m.set(k, k, float(k))
    assert m.next_deadline() == 10.0
    seeks = 0
    real = m._reseek

    def counted() -> None:
        nonlocal seeks
        seeks += 1
        real()

    m._reseek = counted  # type: ignore[method-assign]
    for k in range(60):
        assert m.pop(k) == k
    assert seeks == 0 and len(m._heap) <= 2 * len(m) + 64
    assert m.next_deadline() == 70.0 and seeks == 1
    for k in range(60, 100):
        m.pop(k)
    assert m.next_deadline() is None and not m._heap


def test_ttl_set_and_lru_map_mark_their_watch() -> None:
    reg = ContainerRegistry("t")
    s: TtlSet[str] = TtlSet("s", 4, 2.0, registry=reg)
    w = Watch()
    s.watch(w)
    w.dirty = False
    s.add("a", 1.0)
    assert w.dirty and s.next_deadline() == 3.0
    w.dirty = False
    s.add("b", 1.5)  # a later deadline: the earliest is unchanged
    assert not w.dirty
    s.discard("a")
    assert w.dirty and s.next_deadline() == 3.5
    lru: LruMap[str, int] = LruMap("l", 2, registry=reg)
    lru.watch(w)
    for change in (lambda: lru.set("x", 1), lambda: lru.pop("x"), lambda: lru.set("y", 2), lru.clear):
        w.dirty = False
        change()
        assert w.dirty
    lru.set("z", 3)
    w.dirty = False
    assert lru.get("z") == 3 and not w.dirty  # a use is not a membership change


# -- the mesh in simulations ---------------------------------------------------------------------


def _fresh(mesh: Mesh) -> float | None:
    mesh._watch.dirty = True
    for sw in mesh.swarms.values():
        sw.watch.dirty = True
    return mesh.next_deadline()


class _CheckingSimulator(Simulator):
    """After every event of a node: the mesh's cached deadline equals a fresh computation."""

    checked = 0

    def _arm(self, node: SimNode) -> None:
        if node.alive and node.core is not self._tomb:
            mesh = node.core.mesh
            cached = mesh.next_deadline()
            assert cached == _fresh(mesh), (self.now, node.index)
            self.checked += 1
        super()._arm(node)


def _drive(sim: Simulator, seed: int) -> list[SimNode]:
    rng = Random(seed)
    nodes = [sim.add_node() for _ in range(10)]
    for i, n in enumerate(nodes):
        sim.join(n, nodes[:2][:i] if i else [])
        sim.run_for(0.05)
    for n in nodes:
        sim.subscribe(n, "t.>")
    sim.run_for(3.0)
    for step in range(40):
        pub = rng.choice([n for n in nodes if n.alive])
        sim.publish(pub, f"t.{rng.randrange(3)}", b"m%d" % step)
        if step == 10:
            sim.crash(nodes[5])
        if step == 20:
            sim.unsubscribe(nodes[3], "t.>")  # a publish-only member from now on
            sim.publish(nodes[3], "u.x", b"publish-only swarm")
        if step == 25:
            sim.partition([nodes[:5], nodes[5:]])
        if step == 32:
            sim.heal()
            sim.restart(nodes[5], nodes[:2])
        sim.run_for(rng.uniform(0.0, 0.3))
    sim.run_for(60.0)
    return nodes


@pytest.mark.parametrize(("seed", "lost_ttl"), [(1, None), (2, None), (3, 5.0)])
def test_cached_mesh_deadline_equals_a_fresh_one_after_every_event(seed: int, lost_ttl: float | None) -> None:
    """``lost_ttl`` 5 s (the soak's): the crashed and partitioned peers' ``lost`` entries expire
    within the run, not 600 s after it (a map whose expiry was left out of the watch passed here)."""
    config = None if lost_ttl is None else NodeConfig(membership=MembershipConfig(lost_ttl=lost_ttl))
    sim = _CheckingSimulator(seed, config, network=NetworkParams(loss=0.1, duplicate=0.05))
    nodes = _drive(sim, seed)
    assert sim.checked > 2000
    if lost_ttl is not None:
        hvs = [hv for n in nodes if n.alive
               for hv in (n.core.mesh.realm, *(sw.hv for sw in n.core.mesh.swarms.values()))]
        assert sum(hv.lost.stats().expirations for hv in hvs) > 0, "no lost entry expired within the run"
    assert any(d.payload == b"m39" for n in nodes for d in n.deliveries)  # the run did broadcast


def test_node_deadline_equals_a_fresh_one_after_timers_and_messages() -> None:
    sim = Simulator(4, network=NetworkParams(loss=0.05))
    nodes = _drive(sim, 4)
    for n in nodes:
        core: NodeCore = n.core
        assert core.next_deadline() is not None
        cached = core.next_deadline()
        assert _fresh(core.mesh) is not None
        assert core.next_deadline() == cached


def _mesh_state(mesh: Mesh) -> tuple[object, ...]:
    return (mesh.stats(), mesh.next_deadline(), mesh.rng.getstate(),
            [(k, len(sw.pt.received_from), len(sw.pt.trees)) for k, sw in mesh.swarms.items()])


class _TwinTimerSimulator(Simulator):
    """Every mesh timer :meth:`_wants` is first run on a copy of the mesh made just before,
    altered by :meth:`_alter` to take the path to compare with; the real timer must then give the
    same outputs and leave the same state."""

    compared = 0

    def _wants(self, mesh: Mesh) -> bool:
        raise NotImplementedError

    def _alter(self, twin: Mesh) -> Callable[[], None]:
        """Alter the copy; return what undoes it."""
        raise NotImplementedError

    def _fire(self, node: SimNode, inc: int, d: float) -> None:
        mesh = node.core.mesh
        if not (node.alive and node.incarnation == inc and node.timer_at == d) or not self._wants(mesh):
            super()._fire(node, inc, d)
            return
        shared = {id(mesh.registry): mesh.registry, id(mesh.auth): mesh.auth}
        twin: Mesh = copy.deepcopy(mesh, shared)
        undo = self._alter(twin)
        full = twin.handle_timer(self.now)
        undo()
        real = mesh.handle_timer

        def spy(now: float) -> list[Effect]:
            out = real(now)
            assert out == full
            assert _mesh_state(mesh) == _mesh_state(twin)
            self.compared += 1
            return out

        mesh.handle_timer = spy  # type: ignore[method-assign]
        try:
            super()._fire(node, inc, d)
        finally:
            del mesh.handle_timer


class _IdleTimerSimulator(_TwinTimerSimulator):
    """Every mesh timer that runs before the mesh's deadline (the idle path, which visits only the
    swarms awake) against the full path over every swarm."""

    def _wants(self, mesh: Mesh) -> bool:
        due = mesh.next_deadline()
        return due is None or due > self.now

    def _alter(self, twin: Mesh) -> Callable[[], None]:
        twin.next_deadline = lambda: self.now  # type: ignore[method-assign]  # the full path
        twin._waking = lambda now: iter(list(twin.swarms.keys()))  # type: ignore[method-assign]  # over all

        def undo() -> None:
            del twin.next_deadline
            del twin._waking
        return undo


def test_idle_mesh_timer_does_what_the_full_one_does() -> None:
    sim = _IdleTimerSimulator(6, network=NetworkParams(loss=0.05))
    nodes = [sim.add_node() for _ in range(6)]
    for i, n in enumerate(nodes):
        sim.join(n, nodes[:1] if i else [])
        sim.run_for(0.1)
    for n in nodes:
        sim.subscribe(n, "t.>")
    sim.run_for(2.0)
    for k in range(10):
        sim.publish(nodes[k % 6], "t.x", b"%d" % k)
        sim.run_for(0.5)
    sim.unsubscribe(nodes[2], "t.>")
    sim.publish(nodes[2], "u.x", b"publish-only")
    sim.run_for(5.0)
    assert sim.compared > 20


class _SwarmSkipSimulator(_TwinTimerSimulator):
    """Every mesh timer that takes the full path against the same timer in which every swarm
    counts as due (each swarm's overlay and broadcast tree run their ``handle_timer``, as before
    swarms kept their own deadlines) and is visited (as before the swarms' heap of times). Counts
    the swarms the real timer passed over as not due, and those it did not visit at all."""

    passed_over = 0
    not_visited = 0

    def _wants(self, mesh: Mesh) -> bool:
        due = mesh.next_deadline()
        if (due is None or due > self.now) and not mesh.batched:
            return False
        for sw in mesh.swarms.values():
            again = sw.pt.reannounce_deadline()
            if mesh._swarm_deadline(sw) > self.now and not (again is not None and again <= self.now):
                self.passed_over += 1
        self.not_visited += len(mesh.swarms) - len(mesh.swarm_timers.waking(self.now))
        return True

    def _alter(self, twin: Mesh) -> Callable[[], None]:
        twin._swarm_deadline = lambda sw: -math.inf  # type: ignore[method-assign]  # every swarm due
        twin._waking = lambda now: iter(list(twin.swarms.keys()))  # type: ignore[method-assign]  # and visited

        def undo() -> None:
            del twin._swarm_deadline
            del twin._waking
        return undo


def test_a_due_timer_passes_over_swarms_with_nothing_due_as_if_it_ran_them() -> None:
    """A node in many swarms pays, per event, for the swarms whose timers changed: each swarm
    keeps its own deadline, and a due timer runs only the swarms that are due. Four swarms over
    six nodes with loss; every full timer is checked against running every swarm."""
    sim = _SwarmSkipSimulator(7, network=NetworkParams(loss=0.05))
    nodes = [sim.add_node() for _ in range(6)]
    for i, n in enumerate(nodes):
        sim.join(n, nodes[:1] if i else [])
        sim.run_for(0.1)
    for i, n in enumerate(nodes):
        for j, sw in enumerate("abcd"):
            if (i + j) % 3:
                sim.subscribe(n, f"{sw}.>")
    sim.run_for(2.0)
    for k in range(24):
        sim.publish(nodes[k % 6], f"{'abcd'[k % 4]}.x", b"%d" % k)
        sim.run_for(0.25)
    sim.crash(nodes[4])
    sim.run_for(6.0)
    assert sim.compared > 20
    assert sim.passed_over > 50
    assert sim.not_visited > 20
