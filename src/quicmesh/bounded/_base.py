"""Shared machinery of the bounded containers: overflow policy, statistics, registry.

Every growable structure in quicmesh is one of these containers, or at least a :class:`Tracked`
(the public statistics base that stores and other bespoke structures subclass). Each one:

* has a ``name`` (a stable, low-cardinality string such as ``"gossip.seen_ids"``; never a peer id),
* a ``capacity`` in entries and optionally ``capacity_bytes`` with a ``sizeof`` function,
* an :class:`Overflow` policy saying what happens when an insert would exceed a capacity,
* frozen :class:`ContainerStats` (size, capacity, peak, evictions, expirations, rejections),
* membership in a :class:`ContainerRegistry` so observability can enumerate all live containers.

Containers never read a clock: time enters only as the ``now`` argument of ``expire(now)`` and of
inserts into TTL containers.
"""

from __future__ import annotations

import enum
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, Protocol, runtime_checkable

from ..errors import ContainerFull

__all__ = [
    "REGISTRY",
    "ContainerRegistry",
    "ContainerStats",
    "Overflow",
    "StatsSource",
    "Tracked",
    "Watch",
]


class Watch:
    """A dirty flag a state machine shares with the containers its deadline is computed from.

    A container given a watch (``watch(w)``) sets ``w.dirty`` whenever what its owner's deadline
    reads of it may have changed (a :class:`~quicmesh.bounded.TtlMap`: its earliest deadline; an
    :class:`~quicmesh.bounded.LruMap`: its membership). The owner keeps its last computed deadline
    and recomputes it only after the flag was set, then clears the flag: the invalidation lives
    where the state changes, so a change made through any path is seen.
    """

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty = True


class Overflow(enum.Enum):
    """What an insert does when the container is full."""

    EVICT_OLDEST = "evict_oldest"
    """Make room by evicting the oldest entry (least recently used, or soonest to expire)."""
    DROP_NEWEST = "drop_newest"
    """Silently refuse the new entry (the insert returns ``False``); counted as a rejection."""
    REJECT = "reject"
    """Refuse the new entry by raising :class:`~quicmesh.errors.ContainerFull`; counted."""


@dataclass(frozen=True, slots=True)
class ContainerStats:
    """A snapshot of one container's counters."""

    name: str
    kind: str
    size: int
    capacity: int
    peak: int
    evictions: int
    expirations: int
    rejections: int
    bytes: int | None = None
    capacity_bytes: int | None = None

    @property
    def fill(self) -> float:
        """The larger of entry fill and byte fill, from 0.0 to 1.0."""
        fill = self.size / self.capacity if self.capacity else 0.0
        if self.capacity_bytes and self.bytes is not None:
            fill = max(fill, self.bytes / self.capacity_bytes)
        return fill


@runtime_checkable
class StatsSource(Protocol):
    """Anything that can report :class:`ContainerStats`."""

    @property
    def name(self) -> str: ...

    def stats(self) -> ContainerStats: ...


class ContainerRegistry:
    """The set of live containers of one node (or of the process, for :data:`REGISTRY`).

    Containers are held weakly: one that is garbage collected, or whose ``close()`` was called,
    disappears from the registry by itself. Containers are keyed by identity, so unhashable ones
    (:class:`~quicmesh.bounded.BoundedDict` and :class:`~quicmesh.bounded.BoundedSet` are a
    ``dict`` and a ``set``) can be registered too.
    """

    def __init__(self, name: str = "default") -> None:
        self.name = name
        # id -> weak reference; WeakValueDictionary drops an entry when its container dies, and
        # defers removals that happen while it is being iterated.
        self._items: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # bounded: live containers
        self._lock = threading.Lock()

    def register(self, container: StatsSource) -> None:
        """Add a container; normally called by the container's constructor."""
        with self._lock:
            self._items[id(container)] = container

    def unregister(self, container: StatsSource) -> None:
        """Remove a container; normally called by its ``close()``."""
        with self._lock:
            if self._items.get(id(container)) is container:
                del self._items[id(container)]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, container: object) -> bool:
        return self._items.get(id(container)) is container

    def __iter__(self) -> Iterator[StatsSource]:
        with self._lock:
            items = list(self._items.values())
        return iter(sorted(items, key=lambda c: c.name))

    def snapshot(self) -> list[ContainerStats]:
        """Stats of every live container, sorted by name."""
        return [c.stats() for c in self]

    def find(self, name: str) -> list[StatsSource]:
        """The live containers with this name (several nodes in one process may share names)."""
        return [c for c in self if c.name == name]


REGISTRY = ContainerRegistry("process")
"""The process-wide registry used when a container is given no registry."""


def _no_size(_: Any) -> int:
    return 0


class Tracked:
    """The statistics base of every bounded structure: subclass it to be seen by ``/metrics``.

    A ``Tracked`` owns what every bounded structure reports, whatever it stores and however it
    enforces its cap:

    * its ``name`` (stable, low-cardinality, e.g. ``"store.ops"``; never a peer id) and ``capacity``
      (in entries; optionally ``capacity_bytes``),
    * the counters ``peak`` (largest size seen), ``evictions`` (entries removed to make room),
      ``expirations`` (entries removed because their time was up) and ``rejections`` (inserts
      refused because the structure was full),
    * membership in a :class:`ContainerRegistry` (``registry``, default :data:`REGISTRY`) from
      construction until :meth:`close`, so that metrics and the leak sentinel enumerate it,
    * :meth:`stats`, a frozen :class:`ContainerStats`, which makes it a :class:`StatsSource`.

    A subclass implements :meth:`_size` (its current number of entries) and, when it holds
    anything, :meth:`_clear` (called by :meth:`close`); it reports through the ``note_*`` methods::

        class Store(Tracked):
            kind = "store"                       # the ``kind`` shown in metrics

            def __init__(self, registry=None):
                super().__init__("store.ops", 10_000, capacity_bytes=2**20, registry=registry)
                self.ops = []

            def _size(self) -> int:
                return len(self.ops)

            def _nbytes(self) -> int | None:      # optional: bytes held (default: None, or the
                return sum(map(len, self.ops))   # ``_bytes`` field when a byte cap is set)

            def add(self, op: bytes) -> bool:
                if len(self.ops) >= self.capacity:
                    self.note_rejection()        # or self.reject(): counts and raises ContainerFull
                    return False
                self.ops.append(op)
                self.note_size(len(self.ops))    # keeps ``peak``
                return True

    Hot paths may update the protected fields ``_peak``, ``_evictions``, ``_expirations``,
    ``_rejections`` and ``_bytes`` directly (the built-in containers do); they are part of the
    contract with subclasses. Nothing here reads a clock or allocates per operation.
    """

    kind: ClassVar[str] = "container"
    """The ``kind`` reported in :class:`ContainerStats` (``"lru_map"``, ``"dict"``, ``"store"``...)."""

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        capacity_bytes: int | None = None,
        registry: ContainerRegistry | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("a bounded container needs a name")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"{name}: capacity must be a positive int, got {capacity!r}")
        if capacity_bytes is not None and (not isinstance(capacity_bytes, int) or capacity_bytes < 1):
            raise ValueError(f"{name}: capacity_bytes must be a positive int, got {capacity_bytes!r}")
        self._name = name
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        self._bytes = 0
        self._peak = 0
        self._evictions = 0
        self._expirations = 0
        self._rejections = 0
        self._registry = registry if registry is not None else REGISTRY
        self._registry.register(self)

    # -- what every structure reports ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The structure's name, as shown in metrics."""
        return self._name

    @property
    def capacity(self) -> int:
        """The maximum number of entries."""
        return self._capacity

    @property
    def capacity_bytes(self) -> int | None:
        """The maximum total size in bytes, when the structure is capped in bytes."""
        return self._capacity_bytes

    @property
    def peak(self) -> int:
        """The largest size seen."""
        return self._peak

    @property
    def evictions(self) -> int:
        """Entries removed to make room for others."""
        return self._evictions

    @property
    def expirations(self) -> int:
        """Entries removed because their time was up."""
        return self._expirations

    @property
    def rejections(self) -> int:
        """Inserts refused because the structure was full."""
        return self._rejections

    @property
    def registry(self) -> ContainerRegistry:
        """The registry this structure is (or was, after :meth:`close`) registered in."""
        return self._registry

    def stats(self) -> ContainerStats:
        """A frozen snapshot of the counters."""
        return ContainerStats(
            name=self._name,
            kind=self.kind,
            size=self._size(),
            capacity=self._capacity,
            peak=self._peak,
            evictions=self._evictions,
            expirations=self._expirations,
            rejections=self._rejections,
            bytes=self._nbytes(),
            capacity_bytes=self._capacity_bytes,
        )

    def close(self) -> None:
        """Drop every entry and leave the registry. The structure must not be used afterwards."""
        self._clear()
        self._registry.unregister(self)

    # -- for subclasses ----------------------------------------------------------------------------

    def note_size(self, size: int) -> None:
        """Report the current size (after an insert): keeps ``peak``."""
        if size > self._peak:
            self._peak = size

    def note_eviction(self, count: int = 1) -> None:
        """Count ``count`` entries removed to make room."""
        self._evictions += count

    def note_expiration(self, count: int = 1) -> None:
        """Count ``count`` entries removed because their time was up."""
        self._expirations += count

    def note_rejection(self, count: int = 1) -> None:
        """Count ``count`` refused inserts (without raising; see :meth:`reject`)."""
        self._rejections += count

    def reject(self) -> NoReturn:
        """Count one refused insert and raise :class:`~quicmesh.errors.ContainerFull`."""
        self._rejections += 1
        raise ContainerFull(self._name, self._capacity)

    def _size(self) -> int:
        """The current number of entries (implemented by every subclass)."""
        raise NotImplementedError

    def _nbytes(self) -> int | None:
        """Bytes held as reported in :meth:`stats`: ``_bytes`` when capped in bytes, else ``None``.
        Override to always report bytes."""
        return self._bytes if self._capacity_bytes is not None else None

    def _clear(self) -> None:
        """Drop every entry (called by :meth:`close`); nothing to drop by default."""

    def _note_size(self, size: int) -> None:
        if size > self._peak:
            self._peak = size


class _Bounded(Tracked):
    """A :class:`Tracked` with an :class:`Overflow` policy and optional byte accounting: the base
    of the built-in containers (``LruMap``, ``TtlMap``, ``BoundedDeque``, ``BoundedQueue``)."""

    def __init__(
        self,
        name: str,
        capacity: int,
        overflow: Overflow,
        *,
        capacity_bytes: int | None,
        sizeof: Callable[[Any], int] | None,
        registry: ContainerRegistry | None,
    ) -> None:
        if capacity_bytes is not None and sizeof is None:
            raise ValueError(f"{name}: capacity_bytes needs a sizeof function")
        if not isinstance(overflow, Overflow):
            raise ValueError(f"{name}: overflow must be an Overflow, got {overflow!r}")
        super().__init__(name, capacity, capacity_bytes=capacity_bytes, registry=registry)
        self._sizeof: Callable[[Any], int] = sizeof or _no_size
        self._unsized = sizeof is None
        """No byte accounting (then no byte cap either): the hot paths skip ``sizeof``."""
        self._overflow = overflow

    @property
    def overflow(self) -> Overflow:
        """The overflow policy."""
        return self._overflow

    @property
    def nbytes(self) -> int:
        """The total size of the entries, as measured by ``sizeof`` (0 without one)."""
        return self._bytes

    def _fits(self, count: int, nbytes: int) -> bool:
        if count > self._capacity:
            return False
        return self._capacity_bytes is None or nbytes <= self._capacity_bytes

    def _refuse(self) -> bool:
        """Count a refused insert; raise for REJECT, return False for DROP_NEWEST."""
        self._rejections += 1
        if self._overflow is Overflow.REJECT:
            raise ContainerFull(self._name, self._capacity)
        return False
