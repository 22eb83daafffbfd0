"""The handle of one subscription (:meth:`quicmesh.runtime.node.Node.subscribe`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ..bounded.aio import BoundedQueue, QueueClosed
from .groups import LocalGroups
from .handles import QueueHandle
from .message import Message

__all__ = ["Subscription", "SubscriptionOwner"]


class SubscriptionOwner(Protocol):
    """What a subscription needs of its node."""

    local_groups: LocalGroups

    def _release(self, sub_id: int) -> None: ...

    def _release_from_gc(self, sub_id: int) -> None: ...


class Subscription(QueueHandle[Message]):
    """An async iterator of :class:`Message` for one topic pattern.

    Close it with ``await sub.close()`` or use it as an async context manager. A subscription
    whose handle is garbage-collected without ``close()`` is released all the same. Its queue is
    bounded (``pubsub.subscriber_queue_size``); when the reader falls behind, the queue's policy
    (``pubsub.subscriber_overflow``) applies: ``drop_oldest`` (the default) and ``drop_newest``
    drop messages and count them in :attr:`dropped` (the reader's gap count: compare it before
    and after reading, or watch :attr:`Message.seq <quicmesh.runtime.driver.Message.seq>` of a
    publisher), ``block`` holds the node's delivery (and, through flow control, the publishers)
    while the queue is full, for up to ``pubsub.subscriber_block_timeout`` seconds, then drops
    the oldest (counted the same way). Nothing is dropped anywhere else on the way from the
    network to this queue. A work-queue group member (``group``) acks each
    message as it is read; its unread messages go to other members when it closes.
    """

    def __init__(self, node: SubscriptionOwner, sub_id: int, pattern: str, queue: BoundedQueue[Message],
                 group: str | None = None, *, on_take: Callable[[BoundedQueue[Any]], None] | None = None) -> None:
        super().__init__(queue, node._release_from_gc, sub_id)
        self._node = node
        self._id = sub_id
        self.pattern = pattern
        self.group = group
        """The work-queue group this subscription is a member of, or ``None``."""
        self._taker = node.local_groups if group is not None else None
        self._on_take = on_take
        """``block`` policy: tells the node's delivery queue that the reader took (a stall may end)."""

    @property
    def topic(self) -> str:
        """The pattern this subscription matches (alias of :attr:`pattern`)."""
        return self.pattern

    def _release(self) -> None:
        self._node._release(self._id)

    def _describe(self) -> str:
        return self.pattern

    async def __anext__(self) -> Message:
        # a message already waiting is returned without the generic path's awaits (a reader
        # keeping up with a busy topic spends most of its time here)
        try:
            msg = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return await super().__anext__()
        except QueueClosed:
            raise StopAsyncIteration from None
        if self._taker is not None:
            self._taker.taken(msg)
        if self._on_take is not None:
            self._on_take(self._queue)
        return msg

    async def _next(self) -> Message:
        msg = await self._queue.get()
        if self._taker is not None:
            self._taker.taken(msg)
        if self._on_take is not None:
            self._on_take(self._queue)
        return msg

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} pending={self.pending} closed={self._closed}>"
