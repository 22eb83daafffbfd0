"""One joined topic swarm, as the mesh holds it (see :mod:`quicmesh.core.mesh`)."""

from __future__ import annotations

from ..bounded import LruMap, Watch
from .membership import HyParView
from .plumtree import Plumtree
from .topics import Pattern

__all__ = ["LAST_PUBLISH_STEP", "Swarm", "SwarmWatch", "idle_publisher"]

LAST_PUBLISH_STEP = 1.0
"""Seconds: the granularity of :attr:`Swarm.last_publish` (see there)."""


class SwarmWatch(Watch):
    """A swarm's :class:`~quicmesh.bounded.Watch` that also names the swarm to its mesh's
    :class:`~quicmesh.core.swarm_timers.SwarmTimers` when marked."""

    __slots__ = ("_dirty", "_sink", "key")

    def __init__(self, sink: set[str], key: str) -> None:  # bounded: sink holds live swarm keys
        self._sink = sink
        self.key = key
        self._dirty = True
        sink.add(key)

    @property
    def dirty(self) -> bool:
        """Whether the swarm's overlay/tree deadline must be recomputed."""
        return self._dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self._dirty = value
        if value:
            self._sink.add(self.key)


class Swarm:
    """One joined swarm: its overlay (``hv``), its broadcast tree (``pt``), its local patterns,
    the schedule of its discovery walks, its publisher ``epoch`` and ``next_seq``, and its open
    batch of local publishes (``batch*``, see :mod:`quicmesh.core.batching`)."""

    __slots__ = ("_last_publish", "_next_find", "batch", "batch_bytes", "batch_seq", "batch_topic", "deadline",
                 "due", "epoch", "find_interval", "hv", "joined_at", "next_seq", "patterns", "pt", "wake", "watch")

    def __init__(self, hv: HyParView, pt: Plumtree, epoch: int, now: float, watch: SwarmWatch) -> None:
        self.hv = hv
        self.pt = pt
        self.watch = watch
        """Marked by ``hv`` and ``pt`` where their timer state changes, and where the swarm's walk
        and publish times and its patterns change (its times are recomputed only then)."""
        self.deadline = float("inf")
        """The earliest of ``hv.next_deadline()`` and ``pt.timer_deadline()`` when :attr:`watch`
        was last clean (``inf``: none)."""
        self.due = float("inf")
        """The swarm's part of the mesh's next deadline (see :mod:`quicmesh.core.swarm_timers`)."""
        self.wake = float("inf")
        """No later than the first time a mesh timer has work for this swarm."""
        hv.watch(self.watch)
        pt.watch(self.watch)
        self.patterns: dict[str, Pattern] = {}  # bounded: subset of Mesh.patterns (max_subscriptions)
        self.epoch = epoch
        self.next_seq = 0
        self._next_find = now
        self.joined_at = now
        """When this node joined the swarm."""
        self.find_interval = 1.0
        self._last_publish = -1e18
        self.batch: list[bytes] = []  # bounded: flushed at gossip.batch_max_messages / _bytes
        self.batch_topic = ""
        self.batch_seq = 0
        self.batch_bytes = 0

    def wants(self, topic: str) -> bool:
        """Whether a local pattern of this swarm matches the concrete ``topic``. #14: a
        subscription to the topic itself (its text a key of :attr:`patterns`) matches without a
        walk, which splits the topic once per pattern."""
        patterns = self.patterns
        return topic in patterns or any(p.matches(topic) for p in patterns.values())

    @property
    def next_find(self) -> float:
        """When the swarm's next discovery walk is due (setting it marks :attr:`watch`)."""
        return self._next_find

    @next_find.setter
    def next_find(self, t: float) -> None:
        self._next_find = t
        self.watch.dirty = True

    @property
    def last_publish(self) -> float:
        """When this node last published to the swarm, to within :data:`LAST_PUBLISH_STEP`
        (setting it marks :attr:`watch`). #14: a publish less than that after the value kept
        leaves it, so a swarm published to per message is not recomputed per message; a
        publish-only swarm's linger then ends at most that much early."""
        return self._last_publish

    @last_publish.setter
    def last_publish(self, t: float) -> None:
        if 0.0 <= t - self._last_publish < LAST_PUBLISH_STEP:
            return
        self._last_publish = t
        self.watch.dirty = True


def idle_publisher(swarms: LruMap[str, Swarm]) -> str | None:
    """The key of the publish-only swarm (no local pattern) published to longest ago, ``None`` if
    every swarm has a local subscription: the membership that gives way when the mesh is at
    ``gossip.max_topics`` and needs room for another swarm (a scan, only at the cap)."""
    key: str | None = None
    oldest = float("inf")
    for k, sw in swarms.items():
        if not sw.patterns and sw.last_publish < oldest:
            key, oldest = k, sw.last_publish
    return key
