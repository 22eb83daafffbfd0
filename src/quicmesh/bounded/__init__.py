"""Bounded containers: the only growable structures the core uses.

Each container takes a name, a capacity and an :class:`Overflow` policy, expires entries only
inside ``expire(now)``, reports :class:`ContainerStats`, and registers itself in a
:class:`ContainerRegistry` so that metrics and the leak sentinel can find it.

``BoundedQueue`` (asyncio-side) lives in :mod:`quicmesh.bounded.aio` and is loaded lazily, so
that importing this package from the sans-IO core never imports asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import REGISTRY, ContainerRegistry, ContainerStats, Overflow, StatsSource
from .deque import BoundedDeque
from .maps import LruMap, TtlMap, TtlSet

if TYPE_CHECKING:
    from .aio import BoundedQueue, QueueClosed

__all__ = [
    "REGISTRY",
    "BoundedDeque",
    "BoundedQueue",
    "ContainerRegistry",
    "ContainerStats",
    "LruMap",
    "Overflow",
    "QueueClosed",
    "StatsSource",
    "TtlMap",
    "TtlSet",
]


def __getattr__(name: str) -> Any:
    if name in ("BoundedQueue", "QueueClosed"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
