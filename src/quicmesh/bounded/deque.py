"""A bounded FIFO (deque) for the sans-IO core: queues of frames waiting for a dial, replay
buffers, reorder windows. Capped in entries and optionally in bytes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ._base import ContainerRegistry, Overflow, _Bounded

__all__ = ["BoundedDeque"]

T = TypeVar("T")


class BoundedDeque(_Bounded, Generic[T]):
    """A FIFO with a capacity. ``append`` applies the overflow policy when full:
    ``EVICT_OLDEST`` drops from the left (``on_evict`` sees it), ``DROP_NEWEST`` refuses the new
    item, ``REJECT`` raises :class:`~quicmesh.errors.ContainerFull`."""

    _kind = "deque"

    def __init__(
        self,
        name: str,
        capacity: int,
        overflow: Overflow = Overflow.EVICT_OLDEST,
        *,
        capacity_bytes: int | None = None,
        sizeof: Callable[[T], int] | None = None,
        on_evict: Callable[[T], None] | None = None,
        registry: ContainerRegistry | None = None,
    ) -> None:
        super().__init__(
            name, capacity, overflow, capacity_bytes=capacity_bytes, sizeof=sizeof, registry=registry
        )
        self._items: deque[T] = deque()  # bounded: capacity enforced in append()
        self._on_evict = on_evict

    def _size(self) -> int:
        return len(self._items)

    def _clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def append(self, item: T) -> bool:
        """Add to the right end. ``False`` when refused by ``DROP_NEWEST``."""
        items = self._items
        if self._unsized and len(items) < self._capacity:  # the common case, kept cheap
            items.append(item)
            if len(items) > self._peak:
                self._peak = len(items)
            return True
        size = self._sizeof(item)
        if self._capacity_bytes is not None and size > self._capacity_bytes:
            return self._refuse()
        count_after = len(self._items) + 1
        bytes_after = self._bytes + size
        if not self._fits(count_after, bytes_after):
            if self._overflow is not Overflow.EVICT_OLDEST:
                return self._refuse()
            while self._items and not self._fits(count_after, bytes_after):
                victim = self._items.popleft()
                vsize = self._sizeof(victim)
                self._bytes -= vsize
                bytes_after -= vsize
                count_after -= 1
                self._evictions += 1
                if self._on_evict is not None:
                    self._on_evict(victim)
        self._items.append(item)
        self._bytes += size
        self._note_size(len(self._items))
        return True

    def popleft(self) -> T:
        """Remove and return the oldest item; ``IndexError`` when empty."""
        item = self._items.popleft()
        if not self._unsized:
            self._bytes -= self._sizeof(item)
        return item

    def peekleft(self) -> T:
        """The oldest item without removing it; ``IndexError`` when empty."""
        return self._items[0]

    def drain(self) -> list[T]:
        """Remove and return every item, oldest first."""
        items = list(self._items)
        self._clear()
        return items

    def clear(self) -> None:
        """Remove every item (no eviction callbacks)."""
        self._clear()
