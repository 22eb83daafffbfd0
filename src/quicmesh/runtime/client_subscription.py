"""The light client's subscription handle (:meth:`quicmesh.runtime.client.Client.subscribe`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..bounded.aio import BoundedQueue
from .handles import QueueHandle
from .message import Message

__all__ = ["ClientSubscription", "SubOwner"]


class SubOwner(Protocol):
    """What a client subscription needs of its client."""

    def _release_from_gc(self, sid: int) -> None: ...

    def _release_sub(self, sid: int) -> None: ...


@dataclass(slots=True)
class _Sub:
    pattern: str
    queue: BoundedQueue[Message]
    group: str = ""


class ClientSubscription(QueueHandle[Message]):
    """An async iterator of :class:`~quicmesh.Message` for one pattern, received via the gateway.

    Close it with ``await sub.close()`` or use it as an async context manager. Its queue is
    bounded; a reader that falls behind loses the oldest messages (counted in :attr:`dropped`).
    It survives reconnects: the client subscribes again on the new connection.
    """

    def __init__(self, client: SubOwner, sid: int, pattern: str, queue: BoundedQueue[Message]) -> None:
        super().__init__(queue, client._release_from_gc, sid)
        self._client = client
        self._sid = sid
        self.pattern = pattern

    @property
    def topic(self) -> str:
        """The pattern this subscription matches (alias of :attr:`pattern`)."""
        return self.pattern

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the client closed)."""
        return self._closed or self._queue.closed

    def _release(self) -> None:
        self._client._release_sub(self._sid)

    def _describe(self) -> str:
        return self.pattern

    def __repr__(self) -> str:
        return f"<ClientSubscription {self.pattern!r} pending={self.pending} closed={self.closed}>"
