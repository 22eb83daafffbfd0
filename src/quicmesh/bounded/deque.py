"""A bounded FIFO (deque) for the sans-IO core: queues of frames waiting for a dial, replay
buffers, reorder windows. Capped in entries and optionally in bytes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ._base import ContainerRegistry, Overflow, _Bounded

__all__ = ["BoundedDeque", "Fifo"]

T = TypeVar("T")


class Fifo(_Bounded, Generic[T]):
    """What :class:`BoundedDeque` and :class:`~quicmesh.bounded.aio.BoundedQueue` share: a deque
    of items capped in entries (and optionally bytes), with one implementation of the overflow
    policy (:meth:`_push_full`) and of the byte accounting on removal (:meth:`_take`).

    A subclass appends with this inline fast path, which must stay inline (a call costs more than
    the append itself), and hands everything else to :meth:`_push_full`::

        items = self._items
        if self._unsized and len(items) < self._capacity:
            items.append(item)
            if len(items) > self._peak:
                self._peak = len(items)
            return True
        return self._push_full(item)
    """

    _on_evict: Callable[[T], None] | None = None

    def __init__(
        self,
        name: str,
        capacity: int,
        overflow: Overflow,
        *,
        capacity_bytes: int | None,
        sizeof: Callable[[T], int] | None,
        registry: ContainerRegistry | None,
    ) -> None:
        super().__init__(
            name, capacity, overflow, capacity_bytes=capacity_bytes, sizeof=sizeof, registry=registry
        )
        self._items: deque[T] = deque()  # bounded: capacity enforced in _push_full()

    def _size(self) -> int:
        return len(self._items)

    def _clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def _push_full(self, item: T) -> bool:
        """Append ``item`` when the fast path cannot: the deque is full, or byte accounting is
        on. Applies the overflow policy; ``False`` when refused by ``DROP_NEWEST``."""
        items = self._items
        if self._unsized:  # full in entries: one victim makes room
            if len(items) >= self._capacity:
                if self._overflow is not Overflow.EVICT_OLDEST:
                    return self._refuse()
                victim = items.popleft()
                self._evictions += 1
                if self._on_evict is not None:
                    self._on_evict(victim)
            items.append(item)
            if len(items) > self._peak:
                self._peak = len(items)
            return True
        size = self._sizeof(item)
        if self._capacity_bytes is not None and size > self._capacity_bytes:
            return self._refuse()
        count_after = len(items) + 1
        bytes_after = self._bytes + size
        if not self._fits(count_after, bytes_after):
            if self._overflow is not Overflow.EVICT_OLDEST:
                return self._refuse()
            while items and not self._fits(count_after, bytes_after):
                victim = items.popleft()
                vsize = self._sizeof(victim)
                self._bytes -= vsize
                bytes_after -= vsize
                count_after -= 1
                self._evictions += 1
                if self._on_evict is not None:
                    self._on_evict(victim)
        items.append(item)
        self._bytes += size
        if len(items) > self._peak:
            self._peak = len(items)
        return True

    def _take(self) -> T:
        """Remove and return the oldest item; ``IndexError`` when empty."""
        item = self._items.popleft()
        if not self._unsized:
            self._bytes -= self._sizeof(item)
        return item


class BoundedDeque(Fifo[T]):
    """A FIFO with a capacity. ``append`` applies the overflow policy when full:
    ``EVICT_OLDEST`` drops from the left (``on_evict`` sees it), ``DROP_NEWEST`` refuses the new
    item, ``REJECT`` raises :class:`~quicmesh.errors.ContainerFull`."""

    kind = "deque"

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
        self._on_evict = on_evict

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def append(self, item: T) -> bool:
        """Add to the right end. ``False`` when refused by ``DROP_NEWEST``."""
        items = self._items
        if self._unsized and len(items) < self._capacity:  # the common case, kept inline
            items.append(item)
            if len(items) > self._peak:
                self._peak = len(items)
            return True
        return self._push_full(item)

    popleft = Fifo._take  # no extra call on the consumer's path

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
