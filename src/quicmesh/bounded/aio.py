"""An asyncio-side bounded queue with the same overflow policies and statistics.

Used between the node's runtime and user code (subscription queues, client send queues). It is
not imported by the sans-IO core. ``put_nowait`` never blocks: a full queue applies its overflow
policy at once, so a consumer that stops reading can never stall the producer (the node).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from ._base import ContainerRegistry, Overflow
from .deque import Fifo

__all__ = ["BoundedQueue", "QueueClosed"]

T = TypeVar("T")


class QueueClosed(Exception):
    """``get`` on a closed and drained :class:`BoundedQueue`."""


class BoundedQueue(Fifo[T]):
    """A single-loop asyncio queue with a capacity and an overflow policy.

    ``put_nowait`` returns ``False`` when the item was refused (``DROP_NEWEST``), raises
    :class:`~quicmesh.errors.ContainerFull` (``REJECT``), or evicts the oldest item
    (``EVICT_OLDEST``, the default: slow consumers lose old data, never stall producers).
    After :meth:`close_queue`, getters drain what is left and then get :class:`QueueClosed`.
    The overflow policy is :class:`~quicmesh.bounded.deque.Fifo`'s, shared with
    :class:`~quicmesh.bounded.BoundedDeque`.
    """

    kind = "queue"

    def __init__(
        self,
        name: str,
        capacity: int,
        overflow: Overflow = Overflow.EVICT_OLDEST,
        *,
        capacity_bytes: int | None = None,
        sizeof: Callable[[T], int] | None = None,
        registry: ContainerRegistry | None = None,
    ) -> None:
        super().__init__(
            name, capacity, overflow, capacity_bytes=capacity_bytes, sizeof=sizeof, registry=registry
        )
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._close_reason: BaseException | None = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close_queue` (or :meth:`close`) was called."""
        return self._closed

    def put_nowait(self, item: T) -> bool:
        """Enqueue without waiting, applying the overflow policy when full."""
        if self._closed:
            return False
        items = self._items
        if self._unsized and len(items) < self._capacity:  # the common case, kept inline
            items.append(item)
            if len(items) > self._peak:
                self._peak = len(items)
        elif not self._push_full(item):
            return False
        waiter = self._waiter  # _wake(), inline
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def put_many(self, items: Sequence[T]) -> int:
        """Enqueue ``items`` in order without waiting, exactly as ``put_nowait`` of each would
        (overflow policy and statistics included), waking the reader once; returns how many
        were accepted."""
        if self._closed:
            return 0
        queue = self._items
        if self._unsized and len(queue) + len(items) <= self._capacity:  # the common case
            queue.extend(items)
            if len(queue) > self._peak:
                self._peak = len(queue)
            self._wake()
            return len(items)
        return sum(1 for item in items if self.put_nowait(item))

    def get_nowait(self) -> T:
        """Dequeue without waiting; ``asyncio.QueueEmpty`` when empty and open."""
        if self._items:
            item = self._items.popleft()
            if not self._unsized:
                self._bytes -= self._sizeof(item)
            return item
        if self._closed:
            raise self._closed_error()
        raise asyncio.QueueEmpty

    async def get(self) -> T:
        """Wait for an item. Raises :class:`QueueClosed` once closed and drained."""
        while not self._items:
            if self._closed:
                raise self._closed_error()
            if self._waiter is not None and not self._waiter.done():
                raise RuntimeError(f"{self._name}: only one task may wait on a BoundedQueue")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if not self._unsized:
            self._bytes -= self._sizeof(item)
        return item

    def close_queue(self, reason: BaseException | None = None) -> None:
        """Refuse further puts and wake the getter; remaining items can still be read."""
        self._closed = True
        self._close_reason = reason
        self._wake()

    def close(self) -> None:
        """Close the queue, drop its items and leave the registry."""
        self.close_queue()
        super().close()

    def _closed_error(self) -> BaseException:
        err = QueueClosed(self._name)
        if self._close_reason is not None:
            err.__cause__ = self._close_reason
        return err

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
