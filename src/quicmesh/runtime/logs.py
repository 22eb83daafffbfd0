"""The node's replicated-log service: store, sync sessions, log handles, watchers and maps.

Theory of operation
-------------------
:class:`LogService` is driven by :class:`~quicmesh.runtime.node.Node` like the other core
machines: the node hands it peer events and ``l.*`` messages with ``now``, includes its
``next_deadline()`` in the node's single timer, and calls ``handle_timer(now)``. The sans-IO
:class:`~quicmesh.core.logsync.LogSync` does the replication; this class owns what needs I/O and
asyncio around it:

* **Store**: :class:`~quicmesh.store.SqliteStore` at ``<data_dir>/store.sqlite3`` when
  ``config.data_dir`` is set, else a :class:`~quicmesh.store.MemoryStore` with the
  ``config.store`` caps. A node restarted on the same directory keeps its key and continues its
  logs (the next append links to the stored head).
* **Worker thread**: with SQLite, local appends (each fsynced) and the ingest of sync batches run
  in one dedicated worker thread, so the event loop never waits for a disk flush. LogSync's
  state machine stays on the loop: a batch is first ingested in the thread, then handed to
  LogSync, which finds its operations already stored (a small staging table answers its
  ``ingest`` calls for that batch). Appends are serialised, and each is published (live push and
  local delivery) on the loop in append order, after it is durable.
* **Interest**: a log name is replicated while this node holds a :class:`Log` handle, a watcher
  or a :class:`ReplicatedMap` on it (reference counted; closing or garbage-collecting the last
  one withdraws the interest). Until the mesh layer lands, interest is exchanged with directly
  connected peers with :class:`~quicmesh.core.log_messages.LogInterest`: the whole set when a
  connection comes up, changes afterwards. A name is synced with the connected peers that are
  interested in it too (``LogSync.interest(name, peers)``).
* **Delivery**: every newly stored operation (appended here, pushed live or pulled) is put into
  the bounded queue of each watcher of its log (drop-oldest, counted) and folded into the
  name's last-writer-wins map when one is open. Operations reach the store in seq order per
  author, so watchers see each author's operations in order.
* **Abuse**: ``l.req`` (which makes us read up to one batch from the store) is rate-limited per
  peer with a token bucket; requests beyond it are dropped and counted (the puller retries after
  its timeout). Interest sets per peer are capped at ``store.max_interests`` names.

Bounds: handles and watchers at once (``pubsub.max_subscriptions``), names (``store.max_interests``),
per-peer state (one entry per connection), batches waiting for the worker (``2 *
store.max_sync_sessions``), each watcher's queue (``pubsub.subscriber_queue_size`` by default),
each map's keys (``kv_max_keys``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from random import Random
from types import TracebackType
from typing import Any, TypeVar

from ..bounded import BoundedDeque, ContainerRegistry, LruMap, Overflow
from ..bounded.aio import BoundedQueue
from ..config import NodeConfig
from ..core.effects import Send
from ..core.kvmap import KvMap, decode_entry, encode_delete, encode_set
from ..core.log_messages import LogInterest, SyncBatch, SyncRequest
from ..core.logsync import LogSync, OperationStored
from ..core.oplog import MAX_LOG_NAME, LogHead, Operation, create_operation, decode_operation, operation_id
from ..core.wire import Message
from ..errors import InvalidOperation, LimitExceeded, NodeClosed, OperationTooLarge
from ..identity import KeyPair, NodeId
from ..store import IngestResult, LogKey, MemoryStore, Store, StoreCounts, StoredOp
from .handles import QueueHandle

__all__ = ["KvChange", "Log", "LogEntry", "LogService", "LogWatch", "ReplicatedMap"]

log = logging.getLogger("quicmesh.logs")

T = TypeVar("T")

REQ_RATE = 100.0
"""``l.req`` messages per second a peer may send us (token bucket refill rate). A catch-up pulls
one 64-operation batch per request, so 100/s is ~6,400 operations/s per peer."""
REQ_BURST = 400.0
"""Token bucket depth for ``l.req``: a peer that connects and syncs many logs at once."""
_REPLAY_BATCH = 256
KV_MAX_KEYS = 100_000
"""Keys (live plus tombstones) one replicated map holds."""


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

    def __init__(self, service: LogService, hid: int, name: str, queue: BoundedQueue[T]) -> None:
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
        service: LogService,
        hid: int,
        name: str,
        queue: BoundedQueue[LogEntry],
        replay: dict[NodeId, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(service, hid, name, queue)
        # author -> (next seq to replay, head at open); live entries at or below the head are skipped
        self._todo: list[tuple[NodeId, int, int]] = [  # bounded: authors of this log at open (<= store.max_logs)
            (a, lo, hi) for a, (lo, hi) in sorted((replay or {}).items(), key=lambda kv: kv[0].raw)
        ]
        self._skip: dict[NodeId, int] = {a: hi for a, (_, hi) in (replay or {}).items()}  # bounded: as _todo
        self._buf: deque[LogEntry] = deque()  # bounded: one read batch (_REPLAY_BATCH)

    async def _next(self) -> LogEntry:
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

    def __init__(self, service: LogService, hid: int, name: str) -> None:
        self._service = service
        self._hid = hid
        self.name = name
        self._closed = False
        self._finalizer = weakref.finalize(self, service._close_from_gc, hid)

    @property
    def author(self) -> NodeId:
        """This node's id (the author of every operation appended through this handle)."""
        return self._service.keypair.node_id

    async def append(self, payload: bytes) -> LogEntry:
        """Append ``payload`` to this node's log; returns once it is stored (fsynced with
        SQLite), after which it is pushed to the interested peers and local watchers.

        Raises :class:`~quicmesh.errors.OperationTooLarge` above ``store.max_operation_size``,
        :class:`~quicmesh.errors.LimitExceeded` when the store's caps leave no room.
        """
        if self._closed:
            raise NodeClosed(f"log handle {self.name!r} is closed")
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

    def __init__(self, service: LogService, hid: int, state: _KvState) -> None:
        self._service = service
        self._hid = hid
        self._state = state
        self.name = state.map.log
        self._closed = False
        self._finalizer = weakref.finalize(self, service._close_from_gc, hid)

    def _check(self) -> None:
        if self._closed:
            raise NodeClosed(f"map {self.name!r} is closed")

    async def set(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value`` (durably appended to this node's log of the map's name).

        Raises :class:`~quicmesh.errors.LimitExceeded` when the map holds ``max_keys`` keys."""
        self._check()
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError("value must be bytes")
        self._state.map.check_room(key)
        await self._service.append(self.name, encode_set(key, bytes(value)), after=self._after(key))

    async def delete(self, key: str) -> None:
        """Delete ``key`` (a tombstone, so an older write arriving later cannot revive it)."""
        self._check()
        self._state.map.check_room(key)
        await self._service.append(self.name, encode_delete(key), after=self._after(key))

    def _after(self, key: str) -> int:
        """A write is stamped after the write of ``key`` this replica sees now, so that it wins
        over it even when the other writer's clock is ahead (or equal, with a greater id)."""
        stamp = self._state.map.stamp(key)
        return 0 if stamp is None else stamp.timestamp + 1

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


class _StagedStore:
    """The store as LogSync sees it: ``ingest`` first answers from the results of a batch that
    the worker thread already ingested (one batch at a time), then delegates."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.staged: dict[bytes, IngestResult] = {}  # bounded: one sync batch (store.sync_batch_ops)

    def append_local(self, op: Operation, payload: bytes) -> StoredOp:
        return self.inner.append_local(op, payload)

    def ingest(self, op: Operation, payload: bytes, *, allow_gap: bool = False) -> IngestResult:
        if self.staged:
            res = self.staged.pop(operation_id(op), None)
            if res is not None:
                return res
        return self.inner.ingest(op, payload, allow_gap=allow_gap)

    def get(self, author: NodeId, log: str, seq: int) -> StoredOp | None:
        return self.inner.get(author, log, seq)

    def head(self, author: NodeId, log: str) -> LogHead | None:
        return self.inner.head(author, log)

    def low(self, author: NodeId, log: str) -> int | None:
        return self.inner.low(author, log)

    def heads(self, log: str | None = None) -> dict[LogKey, int]:
        return self.inner.heads(log)

    def iter_range(self, author: NodeId, log: str, from_seq: int, limit: int) -> list[StoredOp]:
        return self.inner.iter_range(author, log, from_seq, limit)

    def drop_log(self, author: NodeId, log: str) -> int:
        return self.inner.drop_log(author, log)

    def prune(self, author: NodeId, log: str, before_seq: int) -> int:
        return self.inner.prune(author, log, before_seq)

    def set_retention(self, log: str, max_length: int) -> None:
        self.inner.set_retention(log, max_length)

    def is_local(self, author: NodeId, log: str) -> bool:
        return self.inner.is_local(author, log)

    def counts(self) -> StoreCounts:
        return self.inner.counts()

    def close(self) -> None:
        self.inner.close()


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_LOG_NAME


class LogService:
    """Replicated logs of one node; see the module docstring."""

    def __init__(
        self,
        keypair: KeyPair,
        config: NodeConfig,
        *,
        registry: ContainerRegistry,
        rng: Random,
        run: Callable[[Iterable[object]], None],
        rearm: Callable[[], None] | None = None,
    ) -> None:
        self.keypair = keypair
        self.config = config
        self.registry = registry
        self._rng = rng
        self._run = run
        self._rearm_cb = rearm
        cfg = config.store
        self.store: Store | None = None
        self.sync: LogSync | None = None
        self._staged: _StagedStore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.clock_us: Callable[[], int] = lambda: time.time_ns() // 1000
        """Wall clock for operation timestamps (microseconds); replaceable in tests."""
        cap_peers = config.transport.max_connections
        self._early: dict[NodeId, None] = {}  # bounded: connections that came up before start() (<= max_connections)
        self._peer_logs: LruMap[NodeId, frozenset[str]] = LruMap("logs.peer_interests", cap_peers, registry=registry)
        self._tokens: LruMap[NodeId, tuple[float, float]] = LruMap("logs.req_tokens", cap_peers, registry=registry)
        self._refs: dict[str, int] = {}  # bounded: <= store.max_interests names, checked in _acquire()
        self._handles: LruMap[int, _Handle] = LruMap(
            "logs.handles", config.pubsub.max_subscriptions, Overflow.REJECT, registry=registry
        )
        self._log_watchers: dict[str, dict[int, BoundedQueue[LogEntry]]] = {}  # bounded: subset of _handles
        self._maps: dict[str, _KvState] = {}  # bounded: one per name with an open map (<= max_interests)
        self._batches: BoundedDeque[tuple[NodeId, SyncBatch]] = BoundedDeque(
            "logs.pending_batches", 2 * cfg.max_sync_sessions, Overflow.DROP_NEWEST, registry=registry
        )
        self._batch_wake: asyncio.Event | None = None
        self._batch_task: asyncio.Task[None] | None = None
        self._append_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # bounded: appends in flight, serialised by _append_lock
        self._ids = itertools.count(1)
        # counters
        self.requests_limited = 0
        self.requests_served = 0
        self.batches_dropped = 0
        self.batches_in_thread = 0
        self.interest_names_ignored = 0
        self.appended = 0
        self.delivered = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (SQLite under ``config.data_dir``, else memory)."""
        self._loop = asyncio.get_running_loop()
        self._append_lock = asyncio.Lock()
        self._batch_wake = asyncio.Event()
        cfg = self.config.store
        store: Store
        if self.config.data_dir:
            from ..store.sqlite import SqliteStore

            path = Path(self.config.data_dir)

            def open_store() -> Store:
                path.mkdir(parents=True, exist_ok=True)
                return SqliteStore(path / "store.sqlite3", cfg, registry=self.registry)

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quicmesh-store")
            store = await self._loop.run_in_executor(self._executor, open_store)
            self._batch_task = asyncio.ensure_future(self._batch_worker())
        else:
            store = MemoryStore(cfg, registry=self.registry)
        self.store = store
        self._staged = _StagedStore(store)
        self.sync = LogSync(self.keypair, self._staged, cfg, Random(self._rng.random()), self.registry)
        now = self._loop.time()
        for peer in list(self._early):
            self.peer_connected(peer, now)
        self._early.clear()
        self._rearm()

    async def stop(self) -> None:
        """Close sessions, watchers and the store."""
        if self._closed:
            return
        self._closed = True
        if self._batch_task is not None:
            self._batch_task.cancel()
            with contextlib.suppress(BaseException):
                await self._batch_task
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for h in list(self._handles.values()):
            if h.queue is not None:
                h.queue.close_queue(NodeClosed("node stopped"))
        if self.sync is not None:
            self.sync.close()
        if self.store is not None:
            if self._executor is not None and self._loop is not None:
                await self._loop.run_in_executor(self._executor, self.store.close)
            else:
                self.store.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _rearm(self) -> None:
        if self._rearm_cb is not None and not self._closed:
            self._rearm_cb()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _apply(self, effects: Iterable[object]) -> None:
        """Carry out LogSync effects: deliver stored operations here, pass the rest to the node."""
        rest: list[object] = []
        for e in effects:
            if isinstance(e, OperationStored):
                self._deliver(e.op, e.payload)
            else:
                rest.append(e)
        if rest:
            self._run(rest)

    def _check(self) -> None:
        if self._closed or self.sync is None:
            raise NodeClosed("log service is not running")

    # -- driver API ------------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId, now: float) -> None:
        """A connection to ``peer`` is up."""
        if self.sync is None:
            if not self._closed:
                self._early[peer] = None
            return
        if peer in self._peer_logs:
            # a new connection replaced the old one (the peer restarted): start afresh, so that
            # its interests are learnt again and every shared log is synced at once
            self.peer_disconnected(peer, now)
        self._peer_logs.set(peer, frozenset())
        if self._refs:
            self._run([Send(peer, LogInterest(added=sorted(self._refs), removed=[], reset=True))])
        self._apply(self.sync.peer_connected(peer, now))

    def peer_disconnected(self, peer: NodeId, now: float) -> None:
        """The connection to ``peer`` is gone."""
        self._early.pop(peer, None)
        if self.sync is None or self._closed:
            return
        had = self._peer_logs.pop(peer) or frozenset()
        self._tokens.pop(peer)
        self._apply(self.sync.peer_disconnected(peer, now))
        for name in had:
            if name in self._refs:
                self._apply(self.sync.interest(name, self._sharing(name), now))

    def handle_message(self, peer: NodeId, message: Message, now: float) -> None:
        """An ``l.*`` message from ``peer``."""
        sync = self.sync
        if sync is None or self._closed:
            return
        if isinstance(message, LogInterest):
            self._on_interest(peer, message, now)
            return
        if isinstance(message, SyncRequest):
            if not self._take_token(peer, now):
                self.requests_limited += 1
                return
            self.requests_served += 1
        if (
            isinstance(message, SyncBatch)
            and self._executor is not None
            and message.ops
            and (peer, message.log) in sync.running()
        ):
            if not self._batches.append((peer, message)):
                self.batches_dropped += 1  # the session times out and is retried
                return
            assert self._batch_wake is not None
            self._batch_wake.set()
            return
        self._apply(sync.handle_message(peer, message, now))

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``."""
        if self.sync is not None and not self._closed:
            self._apply(self.sync.handle_timer(now))

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next."""
        if self.sync is None or self._closed:
            return None
        return self.sync.next_deadline()

    # -- interest --------------------------------------------------------------------------------

    def shares_with(self, peer: NodeId) -> bool:
        """Whether ``peer`` syncs a log name with us (its connection must stay open)."""
        names = self._peer_logs.peek(peer) or frozenset()
        return any(n in self._refs for n in names)

    def _sharing(self, name: str) -> list[NodeId]:
        return [p for p, names in self._peer_logs.items() if name in names]

    def _on_interest(self, peer: NodeId, msg: LogInterest, now: float) -> None:
        assert self.sync is not None
        if peer not in self._peer_logs:
            return
        old = self._peer_logs.peek(peer) or frozenset()
        cap = self.config.store.max_interests
        new = set() if msg.reset else set(old)
        new.difference_update(msg.removed[: cap + len(new)])
        for name in msg.added:
            if len(new) >= cap:
                self.interest_names_ignored += len(msg.added)
                break
            if _valid_name(name):
                new.add(name)
            else:
                self.interest_names_ignored += 1
        frozen = frozenset(new)
        self._peer_logs.set(peer, frozen)
        for name in (old ^ frozen) & self._refs.keys():
            self._apply(self.sync.interest(name, self._sharing(name), now))

    def _acquire(self, name: str) -> None:
        """One more handle on ``name``; the first starts replicating it."""
        if not _valid_name(name):
            raise InvalidOperation(f"a log name is 1 to {MAX_LOG_NAME} UTF-8 bytes")
        assert self.sync is not None
        n = self._refs.get(name, 0)
        if n == 0:
            cap = self.config.store.max_interests
            if len(self._refs) >= cap:
                raise LimitExceeded("store.max_interests", cap)
            effects = self.sync.interest(name, self._sharing(name), self._now())
            self._refs[name] = 1
            msg = LogInterest(added=[name], removed=[])
            self._run([Send(p, msg) for p in self._peer_logs.keys()])
            self._apply(effects)
            self._rearm()
        else:
            self._refs[name] = n + 1

    def _release(self, name: str) -> None:
        """One handle fewer on ``name``; the last stops replicating it."""
        n = self._refs.get(name, 0)
        if n > 1:
            self._refs[name] = n - 1
            return
        self._refs.pop(name, None)
        if self._closed or self.sync is None:
            return
        self._apply(self.sync.uninterest(name, self._now()))
        msg = LogInterest(added=[], removed=[name])
        self._run([Send(p, msg) for p in self._peer_logs.keys()])
        self._rearm()

    def _new_handle(self, handle: _Handle) -> int:
        hid = next(self._ids)
        cap = self.config.pubsub.max_subscriptions
        if len(self._handles) >= cap:
            raise LimitExceeded("logs.max_handles", cap)
        self._acquire(handle.name)
        self._handles.set(hid, handle)
        return hid

    def _close_handle(self, hid: int) -> None:
        h = self._handles.pop(hid)
        if h is None:
            return
        if h.queue is not None:
            h.queue.close()
        if h.kind == "watch":
            group = self._log_watchers.get(h.name)
            if group is not None:
                group.pop(hid, None)
                if not group:
                    del self._log_watchers[h.name]
        if h.state is not None:
            h.state.watchers.pop(hid, None)
            h.state.refs -= 1
            if h.state.refs <= 0 and self._maps.get(h.name) is h.state:
                del self._maps[h.name]
        self._release(h.name)

    def _close_from_gc(self, hid: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._close_handle, hid)

    # -- application API -------------------------------------------------------------------------

    def open_log(self, name: str) -> Log:
        """A handle on this node's log ``name`` (see :meth:`Node.log`)."""
        self._check()
        hid = self._new_handle(_Handle("log", name))
        return Log(self, hid, name)

    def watch(self, name: str, *, queue_size: int | None = None, replay: bool = False) -> LogWatch:
        """Watch every author's operations of ``name`` stored from now on, or with ``replay``
        from the oldest stored (see :meth:`Node.watch_log`)."""
        self._check()
        queue: BoundedQueue[LogEntry] = BoundedQueue(
            "logs.watch_queue", queue_size or self.config.pubsub.subscriber_queue_size, registry=self.registry
        )
        try:
            hid = self._new_handle(_Handle("watch", name, queue))
        except BaseException:
            queue.close()
            raise
        self._log_watchers.setdefault(name, {})[hid] = queue
        span: dict[NodeId, tuple[int, int]] | None = None
        if replay:
            assert self.store is not None
            span = {a: (self.store.low(a, lg) or 0, hi) for (a, lg), hi in self.store.heads(name).items()}
        return LogWatch(self, hid, name, queue, span)

    async def kv(self, name: str) -> ReplicatedMap:
        """Open the replicated map ``name``, loaded from the store (see :meth:`Node.kv`)."""
        self._check()
        state = self._maps.get(name)
        fresh = state is None
        if state is None:
            assert self._loop is not None
            state = _KvState(KvMap(name, max_keys=KV_MAX_KEYS), self._loop.create_future())
        hid = self._new_handle(_Handle("kv", name, state=state))
        state.refs += 1
        handle = ReplicatedMap(self, hid, state)
        if fresh:
            self._maps[name] = state
            try:
                await self._load(state)
            except BaseException as exc:
                if not state.loaded.done():
                    state.loaded.set_exception(exc if isinstance(exc, Exception) else NodeClosed("cancelled"))
                    state.loaded.exception()  # mark retrieved
                self._close_handle(hid)
                raise
            state.loaded.set_result(None)
        else:
            try:
                await asyncio.shield(state.loaded)
            except BaseException:
                self._close_handle(hid)
                raise
        return handle

    def watch_kv(self, state: _KvState, queue_size: int | None) -> KvWatch:
        """A watcher of a map's changes (see :meth:`ReplicatedMap.watch`)."""
        self._check()
        name = state.map.log
        queue: BoundedQueue[KvChange] = BoundedQueue(
            "logs.kv_watch_queue", queue_size or self.config.pubsub.subscriber_queue_size, registry=self.registry
        )
        try:
            hid = self._new_handle(_Handle("kvwatch", name, queue, state))
        except BaseException:
            queue.close()
            raise
        state.refs += 1
        state.watchers[hid] = queue
        return KvWatch(self, hid, name, queue)

    async def _load(self, state: _KvState) -> None:
        """Fold every stored operation of the map's name in, reading in bounded batches (in the
        worker thread with SQLite); operations stored meanwhile are applied as they come, and
        applying twice is harmless."""
        assert self.store is not None
        store = self.store
        name = state.map.log
        heads = await self._io(store.heads, name)
        for (author, lg), hi in heads.items():
            seq = await self._io(store.low, author, lg) or 0
            while seq <= hi:
                batch = await self._io(store.iter_range, author, lg, seq, 256)
                if not batch:
                    break
                for s in batch:
                    state.map.apply(s.op, s.payload)
                seq = batch[-1].op.seq + 1
                if self._executor is None:
                    await asyncio.sleep(0)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call in the worker thread (SQLite) or inline (memory)."""
        if self._executor is None:
            return fn(*args)
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, fn, *args)

    async def append(self, name: str, payload: bytes, *, after: int = 0) -> LogEntry:
        """Append to this node's log ``name`` (see :meth:`Log.append`); the timestamp is at
        least ``after`` (microseconds)."""
        self._check()
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError("payload must be bytes")
        data = bytes(payload)
        cap = self.config.store.max_operation_size
        if len(data) > cap:
            raise OperationTooLarge(f"payload of {len(data)} bytes exceeds {cap}")
        # The append runs to completion (stored, then published) even if the caller is cancelled.
        task = asyncio.ensure_future(self._append(name, data, after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def _append(self, name: str, payload: bytes, after: int) -> LogEntry:
        assert self._append_lock is not None
        async with self._append_lock:
            if self._closed:
                raise NodeClosed("log service is not running")
            stored = await self._io(self._append_sync, name, payload, after)
            self.appended += 1
            if not self._closed and self.sync is not None:
                self._apply(self.sync.publish(stored, self._now()))
                self._rearm()
        return LogEntry.of(stored.op, stored.payload, stored.id)

    def _append_sync(self, name: str, payload: bytes, after: int = 0) -> StoredOp:
        """Sign and store the next operation (worker thread with SQLite). The timestamp never
        goes below the previous operation's, so this node's later writes win its earlier ones."""
        store = self.store
        assert store is not None
        me = self.keypair.node_id
        head = store.head(me, name)
        prev = None if head is None else store.get(me, name, head.seq)
        prev_op = None if prev is None else prev.op
        now_us = max(self.clock_us(), after, 0 if prev_op is None else prev_op.timestamp)
        op = create_operation(self.keypair, name, payload, prev_op, now_us)
        return store.append_local(op, payload)

    def heads(self, name: str) -> dict[NodeId, int]:
        """Latest stored seq per author of log ``name``."""
        self._check()
        assert self.store is not None
        return {author: seq for (author, _), seq in self.store.heads(name).items()}

    async def read(self, name: str, author: NodeId, from_seq: int, limit: int) -> list[LogEntry]:
        """Stored entries of one author's log (see :meth:`Log.read`)."""
        self._check()
        assert self.store is not None
        batch = await self._io(self.store.iter_range, author, name, from_seq, max(0, min(limit, 1024)))
        return [LogEntry.of(s.op, s.payload, s.id) for s in batch]

    # -- delivery --------------------------------------------------------------------------------

    def _deliver(self, op: Operation, payload: bytes) -> None:
        name = op.header.log
        group = self._log_watchers.get(name)
        if group:
            entry = LogEntry.of(op, payload)
            for queue in group.values():
                queue.put_nowait(entry)
                self.delivered += 1
        state = self._maps.get(name)
        if state is not None and state.map.apply(op, payload) and state.watchers:
            decoded = decode_entry(payload)
            if decoded is not None:
                change = KvChange(decoded[0], decoded[1], op.author, op.timestamp)
                for q in state.watchers.values():
                    q.put_nowait(change)

    # -- sync batches in the worker thread -------------------------------------------------------

    async def _batch_worker(self) -> None:
        assert self._batch_wake is not None and self._loop is not None
        while not self._closed:
            if not self._batches:
                self._batch_wake.clear()
                await self._batch_wake.wait()
                continue
            peer, msg = self._batches.popleft()
            try:
                results = await self._loop.run_in_executor(self._executor, self._pre_ingest, msg)
            except Exception:  # an I/O error of the store: the session times out and is retried
                log.exception("ingesting a sync batch of %r from %s failed", msg.log, peer.short())
                self.batches_dropped += 1
                continue
            if self._closed or self.sync is None or self._staged is None:
                return
            self.batches_in_thread += 1
            staged = {oid: res for oid, (res, _op, _p) in results.items()}
            self._staged.staged = staged
            try:
                effects = self.sync.handle_message(peer, msg, self._now())
            finally:
                left = self._staged.staged
                self._staged.staged = {}
            self._apply(effects)
            # operations stored by the thread that LogSync did not take (a stale batch)
            for oid in left:
                res, op, payload = results[oid]
                if res is IngestResult.STORED:
                    self._deliver(op, payload)
            self._rearm()

    def _pre_ingest(self, msg: SyncBatch) -> dict[bytes, tuple[IngestResult, Operation, bytes]]:
        """Ingest a batch's operations in order until the first invalid one (worker thread)."""
        store = self.store
        assert store is not None
        out: dict[bytes, tuple[IngestResult, Operation, bytes]] = {}
        for data, payload in msg.ops:
            try:
                op = decode_operation(data)
                if op.header.log != msg.log:
                    break
                res = store.ingest(op, payload, allow_gap=True)
            except InvalidOperation:
                break
            out[operation_id(op)] = (res, op, payload)
        return out

    # -- rate limit ------------------------------------------------------------------------------

    def _take_token(self, peer: NodeId, now: float) -> bool:
        tokens, last = self._tokens.peek(peer) or (REQ_BURST, now)
        tokens = min(REQ_BURST, tokens + (now - last) * REQ_RATE)
        if tokens < 1.0:
            self._tokens.set(peer, (tokens, now))
            return False
        self._tokens.set(peer, (tokens - 1.0, now))
        return True

    # -- observability ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Store sizes and sync state for /health."""
        cfg = self.config.store
        out: dict[str, Any] = {}
        if self.store is not None:
            c = self.store.counts()
            out["store"] = {
                "kind": "sqlite" if self._executor is not None else "memory",
                "operations": c.operations,
                "logs": c.logs,
                "bytes": c.bytes,
                "max_operations": cfg.max_operations,
                "max_logs": cfg.max_logs,
                "max_bytes": cfg.max_bytes,
            }
            out[f"{out['store']['kind']}_store"] = out["store"]  # memory_store / sqlite_store, as operators name it
        sync = self.sync
        out["logs"] = {
            "names": len(self._refs),
            "handles": len(self._handles),
            "maps": len(self._maps),
            "sessions": len(sync.running()) if sync is not None else 0,
            "sessions_failed_total": sync.sessions_failed if sync is not None else 0,
            "ops_stored_total": sync.ops_stored if sync is not None else 0,
            "ops_refused_total": sync.ops_refused if sync is not None else 0,
            "invalid_ops_total": sync.invalid_ops if sync is not None else 0,
            "appended_total": self.appended,
            "requests_limited_total": self.requests_limited,
            "batches_dropped_total": self.batches_dropped,
            "batches_in_thread_total": self.batches_in_thread,
        }
        return out
