"""Helpers shared by the stores: statistics/registration and the eviction order."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from ..bounded import REGISTRY, ContainerRegistry, ContainerStats
from ..config import StoreConfig
from ..errors import LimitExceeded

__all__ = ["StoreStats", "victim_order"]


class StoreStats:
    """Counters every store reports as a :class:`~quicmesh.bounded.StatsSource` (``kind`` "store"):
    size = operations, bytes = bytes held, evictions = operations dropped to make room,
    rejections = writes refused by a cap."""

    def __init__(self, name: str, config: StoreConfig, registry: ContainerRegistry | None) -> None:
        self._name = name
        self._cap_ops = config.max_operations
        self._cap_bytes = config.max_bytes
        self._peak = 0
        self._evictions = 0
        self._rejections = 0
        self._registry = registry if registry is not None else REGISTRY
        self._registry.register(self)

    @property
    def name(self) -> str:
        """The name shown in metrics."""
        return self._name

    def stats(self) -> ContainerStats:
        """A frozen snapshot of the counters (implemented by each store)."""
        raise NotImplementedError

    def _stats(self, ops: int, nbytes: int) -> ContainerStats:
        return ContainerStats(
            name=self._name,
            kind="store",
            size=ops,
            capacity=self._cap_ops,
            peak=self._peak,
            evictions=self._evictions,
            expirations=0,
            rejections=self._rejections,
            bytes=nbytes,
            capacity_bytes=self._cap_bytes,
        )

    def _note(self, ops: int) -> None:
        if ops > self._peak:
            self._peak = ops

    def _refuse(self, raise_: bool, limit: str, capacity: int) -> bool:
        self._rejections += 1
        if raise_:
            raise LimitExceeded(limit, capacity)
        return False

    def _unregister(self) -> None:
        self._registry.unregister(self)


def victim_order(
    first: list[int | None], key_at: Callable[[int, int], int | None], start: list[int]
) -> Iterator[tuple[int, int]]:
    """Merge several logs' operations oldest first (by timestamp).

    ``first[i]`` is the timestamp of cursor ``i``'s first candidate (``None``: nothing to give),
    ``start[i]`` its seq, ``key_at(i, seq)`` the timestamp at ``seq`` or ``None`` past the last
    candidate. Yields ``(cursor, seq)``.
    """
    heap = [(ts, i, start[i]) for i, ts in enumerate(first) if ts is not None]
    heapq.heapify(heap)
    while heap:
        _ts, i, seq = heapq.heappop(heap)
        yield i, seq
        nxt = key_at(i, seq + 1)
        if nxt is not None:
            heapq.heappush(heap, (nxt, i, seq + 1))
