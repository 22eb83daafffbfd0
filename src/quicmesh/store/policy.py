"""Helpers shared by the stores: their bounded-container statistics and the eviction order."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from ..bounded import ContainerRegistry, Tracked
from ..config import StoreConfig
from ..core.store_api import StoreCounts
from ..errors import LimitExceeded

__all__ = ["StoreStats", "victim_order"]


class StoreStats(Tracked):
    """The bounded-container base of every store (``kind`` "store", registered like any bounded
    container): size = operations (capacity ``max_operations``), bytes = bytes held (capacity
    ``max_bytes``), evictions = operations dropped to make room, rejections = writes refused by
    a cap. A store keeps its own counts (:meth:`counts`); this class only reports them."""

    kind = "store"

    def __init__(self, name: str, config: StoreConfig, registry: ContainerRegistry | None) -> None:
        super().__init__(name, config.max_operations, capacity_bytes=config.max_bytes, registry=registry)

    def counts(self) -> StoreCounts:
        """Operations, logs and bytes held (implemented by each store)."""
        raise NotImplementedError

    def _size(self) -> int:
        return self.counts().operations

    def _nbytes(self) -> int | None:
        return self.counts().bytes

    def _refuse_write(self, raise_: bool, limit: str, capacity: int) -> bool:
        """Count a write refused by a cap; raise :class:`~quicmesh.errors.LimitExceeded` for a
        local append (``raise_``), else return ``False``."""
        self.note_rejection()
        if raise_:
            raise LimitExceeded(limit, capacity)
        return False

    def _unregister(self) -> None:
        self.registry.unregister(self)


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
