"""User-facing handles of the replicated-log service (:class:`~quicmesh.runtime.logs.LogService`):
:class:`Log`, :class:`LogWatch`, :class:`ReplicatedMap` and its watcher, the values they yield
(:class:`LogEntry`, :class:`KvChange`), and the service's bookkeeping records of them.

A handle talks to its service through the small :class:`LogHandleHost` interface, so this module
does not import the service.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

from ..bounded.aio import BoundedQueue
from ..core.kvmap import KvMap, encode_delete, encode_set
from ..core.oplog import Operation
from ..core.permissions import Action
from ..errors import NodeClosed
from ..identity import NodeId
from .handles import QueueHandle

__all__ = ["KV_MAX_KEYS", "KvChange", "KvWatch", "Log", "LogEntry", "LogHandleHost", "LogWatch", "ReplicatedMap"]

T = TypeVar("T")

_REPLAY_BATCH = 256
KV_MAX_KEYS = 100_000
"""Keys (live plus tombstones) one replicated map holds."""

ReplaySpan = dict[NodeId, tuple[int, int]]
"""Per author: the lowest stored seq and the head when a replaying watcher was opened."""


class LogHandleHost(Protocol):
    """What a handle needs of its service."""

    @property
    def node_id(self) -> NodeId:
        """This node's id."""
        ...

    async def append(self, name: str, payload: bytes, *, after: int = 0) -> LogEntry:
        """Append to this node's log ``name``."""
        ...

    async def read(self, name: str, author: NodeId, from_seq: int, limit: int) -> list[LogEntry]:
        """Stored entries of one author's log."""
        ...

    def heads(self, name: str) -> dict[NodeId, int]:
        """Latest stored seq per author of log ``name``."""
        ...

    def watch_kv(self, state: _KvState, queue_size: int | None) -> KvWatch:
        """A watcher of a map's changes."""
        ...

    def _close_handle(self, hid: int) -> None: ...

    def _close_from_gc(self, hid: int) -> None: ...


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One operation of a replicated log as the application sees it."""

    author: NodeId
    """The node that wrote it."""
    log: str
    """The log name."""
    seq: int
    """Its position in the author's log (from 0)."""
    payload: bytes
    timestamp: int
    """Microseconds since the Unix epoch, by the author's clock."""
    id: bytes
    """The operation id (BLAKE2b-256 of the signed header)."""

    @classmethod
    def of(cls, op: Operation, payload: bytes, op_id: bytes | None = None) -> LogEntry:
        """The entry of a stored operation."""
        return cls(op.author, op.log, op.seq, payload, op.timestamp, op_id if op_id is not None else op.id)


@dataclass(frozen=True, slots=True)
class KvChange:
    """A key of a :class:`ReplicatedMap` changed its visible value."""

    key: str
    value: bytes | None
    """The new value; ``None`` when the key was deleted."""
    author: NodeId
    """The node whose write won."""
    timestamp: int
    """The winning write's timestamp (microseconds)."""


class _Watch(QueueHandle[T]):
    """Shared implementation of :class:`LogWatch` and the map watcher: an async iterator over a
    bounded queue that releases its registration on ``close()`` or garbage collection."""

    def __init__(self, service: LogHandleHost, hid: int, name: str, queue: BoundedQueue[T]) -> None:
        super().__init__(queue, service._close_from_gc, hid)
        self._service = service
        self._hid = hid
        self.name = name

    def _release(self) -> None:
        self._service._close_handle(self._hid)

    def _describe(self) -> str:
        return f"watcher of {self.name!r} is closed"


class LogWatch(_Watch[LogEntry]):
    """An async iterator of :class:`LogEntry`: every operation of one log name newly stored on
    this node (appended here or received), each author's in seq order. Its queue is bounded;
    when the reader falls behind the oldest entries are dropped and counted in :attr:`dropped`.
    Close it (or let it be garbage-collected) to release it.

    With ``replay``, it first yields what the store held when the watcher was opened (author by
    author, in bounded batches read on demand), then the live entries, without duplicates.
    """

    def __init__(
        self,
        service: LogHandleHost,
        hid: int,
        name: str,
        queue: BoundedQueue[LogEntry],
        replay: asyncio.Future[ReplaySpan] | None = None,
    ) -> None:
        super().__init__(service, hid, name, queue)
        self._span = replay
        """The replay span being read by the store worker (taken at open, in FIFO order with the
        writes, so the live entries after it are exactly those above its heads)."""
        self._todo: list[tuple[NodeId, int, int]] = []  # bounded: authors of this log at open (<= store.max_logs)
        self._skip: dict[NodeId, int] = {}  # bounded: as _todo
        self._buf: deque[LogEntry] = deque()  # bounded: one read batch (_REPLAY_BATCH)

    async def _next(self) -> LogEntry:
        if self._span is not None:
            span = await self._span
            self._span = None
            # author -> (next seq to replay, head at open); live entries at or below the head are skipped
            order = sorted(span.items(), key=lambda kv: kv[0].raw)
            self._todo = [(a, lo, hi) for a, (lo, hi) in order]  # bounded: as above
            self._skip = {a: hi for a, (_, hi) in span.items()}  # bounded: as above
        while self._buf or self._todo:
            if self._buf:
                return self._buf.popleft()
            if self._closed:
                break
            author, nxt, hi = self._todo[0]
            batch = [e for e in await self._service.read(self.name, author, nxt, _REPLAY_BATCH) if e.seq <= hi]
            if not batch or batch[-1].seq >= hi:
                self._todo.pop(0)
            else:
                self._todo[0] = (author, batch[-1].seq + 1, hi)
            self._buf.extend(batch)
        while True:
            entry = await self._queue.get()
            if entry.seq > self._skip.get(entry.author, -1):
                return entry


class KvWatch(_Watch[KvChange]):
    """An async iterator of :class:`KvChange` for one :class:`ReplicatedMap` (bounded queue,
    drop-oldest, like :class:`LogWatch`)."""


class Log:
    """This node's log of one name (:meth:`Node.log`). While the handle is open, the name is
    replicated with the interested peers. Close it, or let it be garbage-collected, to release
    it."""

    def __init__(self, service: LogHandleHost, hid: int, name: str) -> None:
        self._service = service
        self._hid = hid
        self.name = name
        self._closed = False
        self._finalizer = weakref.finalize(self, service._close_from_gc, hid)
        self.permit: Callable[[Action, str], None] | None = None
        """Set by the node: raises :class:`~quicmesh.errors.PermissionDenied` unless this node
        may ``log`` to the name (checked at every write)."""

    @property
    def author(self) -> NodeId:
        """This node's id (the author of every operation appended through this handle)."""
        return self._service.node_id

    async def append(self, payload: bytes) -> LogEntry:
        """Append ``payload`` to this node's log; returns once it is stored (fsynced with
        SQLite) and handed to the interested peers and local watchers. Appends are stored and
        published in call order.

        The operation is checked exactly as the peers will check it before it is stored; a
        write they would refuse raises its :class:`~quicmesh.errors.InvalidOperation` subclass
        and stores nothing: :class:`~quicmesh.errors.OperationTooLarge` above
        ``store.max_operation_size``, :class:`~quicmesh.errors.TimestampAhead` when this node's
        clock (:attr:`LogService.clock_us`) runs more than ``store.max_clock_skew`` ahead of
        its wall clock. Raises :class:`~quicmesh.errors.LimitExceeded` when this node's own logs
        fill the store (foreign logs are evicted first), or when log sync has its maximum of
        store requests in flight, and :class:`~quicmesh.errors.PermissionDenied` when this node
        may not write the log.
        """
        if self._closed:
            raise NodeClosed(f"log handle {self.name!r} is closed")
        if self.permit is not None:
            self.permit("log", self.name)  # raises PermissionDenied: nothing is written
        return await self._service.append(self.name, payload)

    def heads(self) -> dict[NodeId, int]:
        """The latest seq stored here of every author's log of this name."""
        return self._service.heads(self.name)

    async def read(self, author: NodeId | None = None, from_seq: int = 0, limit: int = 256) -> list[LogEntry]:
        """Up to ``limit`` (at most 1,024) stored entries of ``author``'s log (default: this
        node's) with seq >= ``from_seq``, in seq order."""
        return await self._service.read(self.name, self.author if author is None else author, from_seq, limit)

    async def close(self) -> None:
        """Release the handle; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._service._close_handle(self._hid)

    async def __aenter__(self) -> Log:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Log {self.name!r} closed={self._closed}>"


class ReplicatedMap:
    """A last-writer-wins map over the logs of one name (:meth:`Node.kv`): every node writes its
    own log, every replica folds in every author's operations. The write with the greatest
    ``(timestamp, author id, seq)`` wins a key, so all replicas that stored the same operations
    agree. Close it (or let it be garbage-collected) to release it."""

    def __init__(self, service: LogHandleHost, hid: int, state: _KvState) -> None:
        self._service = service
        self._hid = hid
        self._state = state
        self.name = state.map.log
        self._closed = False
        self._finalizer = weakref.finalize(self, service._close_from_gc, hid)
        self.permit: Callable[[Action, str], None] | None = None
        """Set by the node: raises :class:`~quicmesh.errors.PermissionDenied` unless this node
        may ``log`` to the name (checked at every write)."""

    def _check(self) -> None:
        if self._closed:
            raise NodeClosed(f"map {self.name!r} is closed")

    def _check_write(self) -> None:
        self._check()
        if self.permit is not None:
            self.permit("log", self.name)  # raises PermissionDenied: nothing is written

    async def set(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value`` (durably appended to this node's log of the map's name).

        Raises :class:`~quicmesh.errors.LimitExceeded` when the map holds ``max_keys`` keys, an
        :class:`~quicmesh.errors.InvalidOperation` subclass (nothing stored, on no replica)
        when the write is one the peers would refuse (e.g. :class:`~quicmesh.errors.TimestampAhead`
        when this node's clock runs beyond ``store.max_clock_skew``), and
        :class:`~quicmesh.errors.PermissionDenied` when this node may not write the map."""
        self._check_write()
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError("value must be bytes")
        self._state.map.check_room(key)
        await self._service.append(self.name, encode_set(key, bytes(value)), after=self._after(key))

    async def delete(self, key: str) -> None:
        """Delete ``key`` (a tombstone, so an older write arriving later cannot revive it)."""
        self._check_write()
        self._state.map.check_room(key)
        await self._service.append(self.name, encode_delete(key), after=self._after(key))

    def _after(self, key: str) -> int:
        """A write is stamped after the write of ``key`` this replica sees now, so that it wins
        over it even when the other writer's clock is ahead (or equal, with a greater id); a floor
        beyond the writer's clock plus ``store.max_clock_skew`` is ignored (see
        :mod:`quicmesh.core.kvmap`)."""
        return self._state.map.floor(key)

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """The current value of ``key``, or ``default``."""
        self._check()
        return self._state.map.get(key, default)

    def items(self) -> list[tuple[str, bytes]]:
        """Live ``(key, value)`` pairs, sorted by key."""
        self._check()
        return self._state.map.items()

    def snapshot(self) -> dict[str, Any]:
        """Every key with its winning stamp and value (``None``: deleted), for comparisons."""
        return self._state.map.snapshot()

    def __len__(self) -> int:
        return len(self._state.map)

    def __contains__(self, key: object) -> bool:
        return key in self._state.map

    def watch(self, *, queue_size: int | None = None) -> KvWatch:
        """An async iterator of :class:`KvChange` for this map from now on."""
        self._check()
        return self._service.watch_kv(self._state, queue_size)

    async def close(self) -> None:
        """Release the map handle; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._service._close_handle(self._hid)

    async def __aenter__(self) -> ReplicatedMap:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _KvState:
    __slots__ = ("loaded", "map", "refs", "watchers")

    def __init__(self, kv: KvMap, loaded: asyncio.Future[None]) -> None:
        self.map = kv
        self.refs = 0
        self.loaded = loaded
        self.watchers: dict[int, BoundedQueue[KvChange]] = {}  # bounded: entries of LogService._handles


class _Handle:
    __slots__ = ("kind", "name", "queue", "state")

    def __init__(
        self, kind: str, name: str, queue: BoundedQueue[Any] | None = None, state: _KvState | None = None
    ) -> None:
        self.kind = kind  # "log", "watch", "kv", "kvwatch"
        self.name = name
        self.queue = queue
        self.state = state
