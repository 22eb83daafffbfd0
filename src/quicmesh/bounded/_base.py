"""Shared machinery of the bounded containers: overflow policy, statistics, registry.

Every growable structure in quicmesh is one of these containers. Each one:

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
from typing import Any, Protocol, runtime_checkable

from ..errors import ContainerFull

__all__ = [
    "REGISTRY",
    "ContainerRegistry",
    "ContainerStats",
    "Overflow",
    "StatsSource",
]


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
    disappears from the registry by itself.
    """

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self._items: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def register(self, container: StatsSource) -> None:
        """Add a container; normally called by the container's constructor."""
        with self._lock:
            self._items.add(container)

    def unregister(self, container: StatsSource) -> None:
        """Remove a container; normally called by its ``close()``."""
        with self._lock:
            self._items.discard(container)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[StatsSource]:
        with self._lock:
            items = list(self._items)
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


class _Bounded:
    """Counters, validation and registration common to every container."""

    _kind = "container"

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
        if not name:
            raise ValueError("a bounded container needs a name")
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"{name}: capacity must be a positive int, got {capacity!r}")
        if capacity_bytes is not None and (not isinstance(capacity_bytes, int) or capacity_bytes < 1):
            raise ValueError(f"{name}: capacity_bytes must be a positive int, got {capacity_bytes!r}")
        if capacity_bytes is not None and sizeof is None:
            raise ValueError(f"{name}: capacity_bytes needs a sizeof function")
        if not isinstance(overflow, Overflow):
            raise ValueError(f"{name}: overflow must be an Overflow, got {overflow!r}")
        self._name = name
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        self._sizeof: Callable[[Any], int] = sizeof or _no_size
        self._unsized = sizeof is None
        """No byte accounting (then no byte cap either): the hot paths skip ``sizeof``."""
        self._overflow = overflow
        self._bytes = 0
        self._peak = 0
        self._evictions = 0
        self._expirations = 0
        self._rejections = 0
        self._registry = registry if registry is not None else REGISTRY
        self._registry.register(self)

    @property
    def name(self) -> str:
        """The container's name, as shown in metrics."""
        return self._name

    @property
    def capacity(self) -> int:
        """The maximum number of entries."""
        return self._capacity

    @property
    def capacity_bytes(self) -> int | None:
        """The maximum total size in bytes, when the container is capped in bytes."""
        return self._capacity_bytes

    @property
    def overflow(self) -> Overflow:
        """The overflow policy."""
        return self._overflow

    @property
    def nbytes(self) -> int:
        """The total size of the entries, as measured by ``sizeof`` (0 without one)."""
        return self._bytes

    def _size(self) -> int:
        raise NotImplementedError

    def stats(self) -> ContainerStats:
        """A frozen snapshot of the counters."""
        return ContainerStats(
            name=self._name,
            kind=self._kind,
            size=self._size(),
            capacity=self._capacity,
            peak=self._peak,
            evictions=self._evictions,
            expirations=self._expirations,
            rejections=self._rejections,
            bytes=self._bytes if self._capacity_bytes is not None else None,
            capacity_bytes=self._capacity_bytes,
        )

    def close(self) -> None:
        """Drop every entry and leave the registry. The container must not be used afterwards."""
        self._clear()
        self._registry.unregister(self)

    def _clear(self) -> None:
        raise NotImplementedError

    # -- helpers for subclasses --------------------------------------------------------------

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

    def _note_size(self, size: int) -> None:
        if size > self._peak:
            self._peak = size
