"""The shape shared by every queue-backed handle the runtime gives to user code (subscriptions,
client subscriptions, log and map watchers): an async iterator over a bounded queue, closed by
``close()``, ``async with`` or garbage collection, reporting what it dropped."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from ..bounded.aio import BoundedQueue, QueueClosed
from ..errors import SubscriptionClosed

__all__ = ["QueueHandle"]

T = TypeVar("T")


class QueueHandle(Generic[T]):
    """An async iterator of ``T`` read from a bounded queue. Subclasses say how to release their
    state (:meth:`_release`) and how they are named in errors (:meth:`_describe`).

    ``on_gc(*args)`` runs if the handle is garbage-collected without ``close()``; it must not
    reference the handle itself.
    """

    def __init__(self, queue: BoundedQueue[T], on_gc: Callable[..., Any], *args: object) -> None:
        self._queue = queue
        self._closed = False
        self._finalizer = weakref.finalize(self, on_gc, *args)

    @property
    def dropped(self) -> int:
        """Items dropped because the reader fell behind (the oldest go first)."""
        s = self._queue.stats()
        return s.evictions + s.rejections

    @property
    def pending(self) -> int:
        """Items waiting to be read."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def get(self) -> T:
        """The next item. Raises :class:`~quicmesh.errors.SubscriptionClosed` once closed (by
        :meth:`close` or because the node stopped) and drained."""
        try:
            return await self._next()
        except QueueClosed:
            raise SubscriptionClosed(self._describe()) from None

    async def _next(self) -> T:
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._next()
        except QueueClosed:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        """Stop receiving and release this handle's state; idempotent."""
        self.close_nowait()

    def close_nowait(self) -> None:
        """:meth:`close` for synchronous code."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._release()

    def _release(self) -> None:
        raise NotImplementedError

    def _describe(self) -> str:
        return type(self).__name__

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
