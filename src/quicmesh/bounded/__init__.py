"""Bounded containers: the only growable structures the core uses.

Each container takes a name and a capacity (most also an :class:`Overflow` policy), expires
entries only inside ``expire(now)``, reports :class:`ContainerStats`, and registers itself in a
:class:`ContainerRegistry` so that metrics and the leak sentinel can find it.

* :class:`LruMap`, :class:`TtlMap`, :class:`TtlSet`, :class:`BoundedDeque`, :class:`BoundedQueue`:
  containers with an eviction order and an overflow policy;
* :class:`BoundedDict`, :class:`BoundedSet`: a plain ``dict`` / ``set`` with a hard cap
  (``ContainerFull`` past it), for maps the owner empties itself;
* :class:`Tracked`: the statistics base all of them share; subclass it to make any other bounded
  structure (a store, a buffer) report like a container and appear in ``/metrics``.

``BoundedQueue`` (asyncio-side) lives in :mod:`quicmesh.bounded.aio` and is loaded lazily, so
that importing this package from the sans-IO core never imports asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import REGISTRY, ContainerRegistry, ContainerStats, Overflow, StatsSource, Tracked, Watch
from .deque import BoundedDeque
from .maps import LruMap, TtlMap, TtlSet
from .plain import BoundedDict, BoundedSet

if TYPE_CHECKING:
    from .aio import BoundedQueue, QueueClosed

__all__ = [
    "REGISTRY",
    "BoundedDeque",
    "BoundedDict",
    "BoundedQueue",
    "BoundedSet",
    "ContainerRegistry",
    "ContainerStats",
    "LruMap",
    "Overflow",
    "QueueClosed",
    "StatsSource",
    "Tracked",
    "TtlMap",
    "TtlSet",
    "Watch",
]


def __getattr__(name: str) -> Any:
    if name in ("BoundedQueue", "QueueClosed"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
