"""The swarms' deadlines of one mesh, kept without a walk over every swarm (#14).

Theory of operation. Each swarm owns a :class:`~quicmesh.core.swarm.SwarmWatch`: its overlay's
and broadcast tree's containers and timer fields mark it where their state changes (as any
:class:`~quicmesh.bounded.Watch`), and so do the swarm's walk, publish and re-announcement times,
its patterns and its tree's idle work. Marking also puts the swarm's key in
:attr:`SwarmTimers.dirty`. :meth:`SwarmTimers.refresh` recomputes only the dirty swarms' two
times and pushes changed ones on two heaps (lazy deletion: an entry counts only while it equals
its swarm's current time; the heaps are rebuilt when stale entries outnumber live ones):

* ``due``: what :meth:`Mesh.next_deadline <quicmesh.core.mesh.Mesh.next_deadline>` reads: the
  earliest of the overlay's and tree's timers, the re-announcements, the next walk and, for a
  publish-only swarm, the end of its linger (+1 ms), exactly the terms and arithmetic of a walk.
* ``wake``: no later than the first time a mesh timer has anything to do for the swarm: ``due``'s
  terms (the linger's end 1 ms early, where a walk compares ``now - last_publish`` with it) and the
  tree's idle work (ids of the optimisation window that expire; trees of idle publishers, dropped
  by the next timer of any kind). A timer runs the swarms awake at ``now``
  (:meth:`SwarmTimers.waking`), in the swarms' own order, and passes over the rest: for them a
  walk would do nothing.

So an event costs the swarms it changed, and a timer a pass over the swarms' keys plus the swarms
it wakes; ``tests/test_core_deadlines.py`` compares both with a fresh computation and a full walk.
"""

from __future__ import annotations

import heapq

from ..bounded import LruMap
from .swarm import Swarm, SwarmWatch

__all__ = ["PUBLISH_LINGER", "SwarmTimers"]

PUBLISH_LINGER = 300.0
"""Seconds a publish-only swarm (no local pattern) is kept after its last publish."""

_INF = float("inf")
_EARLY = 0.001
"""How much earlier than a publish-only swarm's linger end :attr:`Swarm.wake` lies (a walk tests
``now - last_publish > PUBLISH_LINGER``, whose rounding differs from ``last_publish + PUBLISH_LINGER``)."""


class SwarmTimers:
    """The ``due`` and ``wake`` times of a mesh's swarms (see the module docstring)."""

    def __init__(self, swarms: LruMap[str, Swarm]) -> None:
        self._swarms = swarms
        self.dirty: set[str] = set()  # bounded: keys of live swarms (max_topics)
        self._due: list[tuple[float, str]] = []  # bounded: rebuilt past 2 entries per swarm + 64
        self._wake: list[tuple[float, str]] = []  # bounded: rebuilt past 2 entries per swarm + 64

    def watch(self, key: str) -> SwarmWatch:
        """A new watch for the swarm ``key`` (marked: its times are computed at the next refresh)."""
        return SwarmWatch(self.dirty, key)

    @staticmethod
    def timer_deadline(sw: Swarm) -> float:
        """The earliest timer of ``sw``'s overlay and broadcast tree (re-announcements aside;
        ``inf``: none)."""
        best = _INF
        d = sw.hv.next_deadline()
        if d is not None:
            best = d
        d = sw.pt.timer_deadline()
        if d is not None and d < best:
            best = d
        return best

    @staticmethod
    def compute(sw: Swarm) -> None:
        """Recompute ``sw.deadline`` (:meth:`timer_deadline`), ``sw.due`` and ``sw.wake``."""
        sw.watch.dirty = False
        pt = sw.pt
        best = sw.deadline = SwarmTimers.timer_deadline(sw)
        again = pt.reannounce_deadline()
        if again is not None and again < best:
            best = again
        if sw.next_find < best:
            best = sw.next_find
        wake = best
        if not sw.patterns:
            linger = sw.last_publish + PUBLISH_LINGER
            if linger + 0.001 < best:
                best = linger + 0.001
            if linger - _EARLY < wake:
                wake = linger - _EARLY
        if len(pt.trees) > len(pt.tree_used):
            wake = -_INF
        else:
            d = pt.received_from.next_deadline()
            if d is not None and d < wake:
                wake = d
        sw.due = best
        sw.wake = wake

    def refresh(self) -> None:
        """Recompute the dirty swarms' times."""
        if not self.dirty:
            return
        keys = list(self.dirty)
        self.dirty.clear()
        swarms = self._swarms
        due, wakeh = self._due, self._wake
        for key in keys:
            sw = swarms.peek(key)
            if sw is None:
                continue
            old_due, old_wake = sw.due, sw.wake
            self.compute(sw)
            if sw.due != old_due and sw.due < _INF:
                heapq.heappush(due, (sw.due, key))
            if sw.wake != old_wake and sw.wake < _INF:
                heapq.heappush(wakeh, (sw.wake, key))
        limit = 2 * len(swarms) + 64
        if len(due) > limit or len(wakeh) > limit:
            self._rebuild()

    def _rebuild(self) -> None:
        live = [(key, sw) for key in self._swarms.keys() if (sw := self._swarms.peek(key)) is not None]
        self._due = [(sw.due, key) for key, sw in live if sw.due < _INF]  # bounded: one per swarm
        self._wake = [(sw.wake, key) for key, sw in live if sw.wake < _INF]  # bounded: one per swarm
        heapq.heapify(self._due)
        heapq.heapify(self._wake)

    def earliest_due(self) -> float:
        """The earliest ``due`` of any swarm (``inf``: none)."""
        self.refresh()
        heap = self._due
        swarms = self._swarms
        while heap:
            t, key = heap[0]
            sw = swarms.peek(key)
            if sw is not None and sw.due == t:
                return t
            heapq.heappop(heap)
        return _INF

    def waking(self, now: float) -> set[str]:
        """The keys of the swarms whose ``wake`` is at or before ``now``."""
        self.refresh()
        heap = self._wake
        swarms = self._swarms
        out: set[str] = set()  # bounded: live swarm keys
        keep: list[tuple[float, str]] = []  # bounded: one entry per key in out
        while heap and heap[0][0] <= now:
            t, key = heapq.heappop(heap)
            sw = swarms.peek(key)
            if sw is not None and sw.wake == t and key not in out:
                out.add(key)
                keep.append((t, key))
        for entry in keep:
            heapq.heappush(heap, entry)
        return out

    def __len__(self) -> int:
        """Heap entries held (live and stale), for tests."""
        return len(self._due) + len(self._wake)
