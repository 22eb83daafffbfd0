"""The node's replicated-log service: store, store worker, sync, log handles, watchers and maps.

Theory of operation
-------------------
:class:`LogService` is driven by :class:`~quicmesh.runtime.node.Node` like the other core
machines: the node hands it peer events and ``l.*`` messages with ``now``, includes its
``next_deadline()`` in the node's single timer, and calls ``handle_timer(now)``. The sans-IO
:class:`~quicmesh.core.logsync.LogSync` does the replication; this class executes its outputs
and owns what needs I/O and asyncio around it:

* **Store**: :class:`~quicmesh.store.SqliteStore` at ``<data_dir>/store.sqlite3`` when
  ``config.data_dir`` is set, else a :class:`~quicmesh.store.MemoryStore` with the
  ``config.store`` caps. A node restarted on the same directory keeps its key and continues its
  logs (the next append links to the stored head).
* **Store worker** (:class:`~quicmesh.runtime.store_worker.StoreWorker`): every store access
  (LogSync's :class:`~quicmesh.core.log_effects.StoreRead` / ``StoreWrite`` requests, appends,
  handle reads, map loads) is a job in one bounded FIFO queue run in order on one thread with
  SQLite (never on the event loop), inline with the memory store; results come back on the loop
  (``LogSync.store_done``) in the same order. :meth:`Log.heads` reads a mirror of the heads.
* **Appends**: serialised; each is a job (signed and stored, fsynced with SQLite), then published
  (local delivery, live pushes) on the loop, and only then does ``append`` return: durable before
  the future resolves, and published in append order.
* **Interest**: a log name is replicated while this node holds a :class:`Log` handle, a watcher
  or a :class:`ReplicatedMap` on it (reference counted; closing or garbage-collecting the last
  one withdraws the interest). Interest is exchanged with directly connected peers with
  :class:`~quicmesh.core.log_messages.LogInterest`: the whole set when a connection comes up,
  changes afterwards. A name is synced with the connected peers that are interested in it too
  (``LogSync.interest(name, peers)``).
* **Delivery**: every newly stored operation (appended here, pushed live or pulled) is put into
  the bounded queue of each watcher of its log (drop-oldest, counted) and folded into the
  name's last-writer-wins map when one is open. Operations reach the store in seq order per
  author, so watchers see each author's operations in order.
* **Abuse**: ``l.req`` (which makes us read up to one batch from the store) is rate-limited per
  peer with a token bucket; requests beyond it are dropped and counted (the puller retries after
  its timeout). Interest sets per peer are capped at ``store.max_interests`` names.

Bounds: handles and watchers (``pubsub.max_subscriptions``), names (``store.max_interests``),
per-peer state (one entry per connection), LogSync's store requests (``STORE_REQUESTS``), the
worker queue (``STORE_REQUESTS + HANDLE_JOBS``; a read past it raises ``ContainerFull``), heads
(``store.max_logs``), watcher queues (``pubsub.subscriber_queue_size``), map keys (``KV_MAX_KEYS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from operator import methodcaller
from pathlib import Path
from random import Random
from typing import Any

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..bounded.aio import BoundedQueue
from ..config import NodeConfig
from ..core.effects import Send
from ..core.kvmap import KvMap, decode_entry
from ..core.log_effects import Appended, IngestOps, OperationStored, StoreRead, StoreWrite
from ..core.log_messages import LogInterest, SyncRequest
from ..core.log_peers import PeerLogs, valid_name
from ..core.logsync import LogSync
from ..core.oplog import MAX_LOG_NAME, Operation
from ..core.store_api import Store, StoredOp
from ..core.wire import Message
from ..errors import ContainerFull, InvalidOperation, LimitExceeded, NodeClosed, OperationTooLarge
from ..identity import KeyPair, NodeId
from ..store import MemoryStore
from .log_handles import (
    KV_MAX_KEYS,
    KvChange,
    KvWatch,
    Log,
    LogEntry,
    LogWatch,
    ReplaySpan,
    ReplicatedMap,
    _Handle,
    _KvState,
)
from .store_worker import HeadsMirror, StoreWorker

__all__ = ["KvChange", "KvWatch", "Log", "LogEntry", "LogService", "LogWatch", "ReplicatedMap"]

log = logging.getLogger("quicmesh.logs")


STORE_REQUESTS = 1024  # LogSync's store requests in flight (LogSync(max_requests=...))
HANDLE_JOBS = 256
"""Room in the worker queue for the handles' own jobs (reads, map loads, appends)."""


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
        self.store: Store | None = None
        self.sync: LogSync | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.clock_us: Callable[[], int] = lambda: time.time_ns() // 1000
        """Wall clock for operation timestamps (microseconds); replaceable in tests."""
        cap_peers = config.transport.max_connections
        self._early: LruMap[NodeId, None] = LruMap("logs.early_peers", cap_peers, registry=registry)
        self._peers = PeerLogs(cap_peers, config.store.max_interests, registry=registry)
        self._peer_logs = self._peers.interests
        self._refs: dict[str, int] = {}  # bounded: <= store.max_interests names, checked in _acquire()
        self._handles: LruMap[int, _Handle] = LruMap(
            "logs.handles", config.pubsub.max_subscriptions, Overflow.REJECT, registry=registry
        )
        self._log_watchers: dict[str, dict[int, BoundedQueue[LogEntry]]] = {}  # bounded: subset of _handles
        self._maps: dict[str, _KvState] = {}  # bounded: one per name with an open map (<= max_interests)
        self._worker = StoreWorker(STORE_REQUESTS + HANDLE_JOBS, registry=registry)
        self._heads = HeadsMirror(config.store.max_logs, registry=registry)
        self._append_lock: asyncio.Lock | None = None
        self._appends: dict[int, asyncio.Future[StoredOp]] = {}  # bounded: one append at a time (_append_lock)
        self._tasks: set[asyncio.Task[Any]] = set()  # bounded: appends in flight, serialised by _append_lock
        self._ids = itertools.count(1)
        # counters
        self.requests_limited = 0
        self.requests_served = 0
        self.batches_dropped = 0
        self.batches_in_thread = 0
        self.appended = 0
        self.delivered = 0

    @property
    def node_id(self) -> NodeId:
        """This node's id."""
        return self.keypair.node_id

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (SQLite under ``config.data_dir``, else memory) and its worker."""
        self._loop = asyncio.get_running_loop()
        self._append_lock = asyncio.Lock()
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
        else:
            store = MemoryStore(cfg, registry=self.registry)
        self.store = store
        self.sync = LogSync(
            self.keypair,
            cfg,
            Random(self._rng.random()),
            self.registry,
            max_requests=STORE_REQUESTS,
            max_peers=self.config.transport.max_connections,
        )
        self._worker.start(store, self._executor)
        self._heads.load(await self._worker.read(lambda s: s.heads()))
        now = self._loop.time()
        for peer in list(self._early.keys()):
            self.peer_connected(peer, now)
        self._early.clear()
        self._rearm()

    async def stop(self) -> None:
        """Finish the appends in flight, then close watchers, the worker and the store."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._worker.close()  # runs what is queued, then ends
        for h in list(self._handles.values()):
            if h.queue is not None:
                h.queue.close_queue(NodeClosed("node stopped"))
        if self.sync is not None:
            self.sync.close()
        self._heads.close()
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

    def _check(self) -> None:
        if self._closed or self.sync is None:
            raise NodeClosed("log service is not running")

    # -- executing LogSync's outputs -------------------------------------------------------------

    def _apply(self, outputs: Iterable[object]) -> None:
        """Carry out LogSync outputs: store requests to the worker, stored operations to the local
        watchers, append results to their callers, the rest (sends, disconnects) to the node."""
        rest: list[object] = []
        for e in outputs:
            if isinstance(e, OperationStored):
                self._deliver(e.op, e.payload)
            elif isinstance(e, StoreRead | StoreWrite):
                self._request(e)
            elif isinstance(e, Appended):
                fut = self._appends.pop(e.req_id, None)
                if fut is not None and not fut.done():
                    if e.stored is not None:
                        fut.set_result(e.stored)
                    else:
                        fut.set_exception(e.error or NodeClosed("append failed"))
            else:
                rest.append(e)
        if rest and not self._closed:
            self._run(rest)

    def _request(self, req: StoreRead | StoreWrite) -> None:
        req_id = req.req_id

        def done(result: object) -> None:
            if self.sync is None:
                return
            if isinstance(result, Exception) and not isinstance(result, InvalidOperation | LimitExceeded):
                log.error("store request %r failed: %r", type(req.query).__name__, result)
            outputs = self.sync.store_done(req_id, result, self._now())
            if self._closed:  # only answer the appends still waiting
                outputs = [o for o in outputs if isinstance(o, Appended)]
            self._apply(outputs)
            self._rearm()

        if isinstance(req.query, IngestOps) and req.query.allow_gap and self._executor is not None:
            self.batches_in_thread += 1
        try:
            self._worker.submit(req.query.run, done)
        except ContainerFull as exc:  # only when handles filled the queue's share: a failed request
            self.batches_dropped += 1
            assert self._loop is not None
            self._loop.call_soon(done, exc)

    # -- driver API ------------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId, now: float) -> None:
        """A connection to ``peer`` is up."""
        if self.sync is None:
            if not self._closed:
                self._early.set(peer, None)
            return
        if peer in self._peers:
            # a new connection replaced the old one (the peer restarted): start afresh, so that
            # its interests are learnt again and every shared log is synced at once
            self.peer_disconnected(peer, now)
        self._peers.connect(peer)
        if self._refs:
            self._run([Send(peer, LogInterest(added=sorted(self._refs), removed=[], reset=True))])
        self._apply(self.sync.peer_connected(peer, now))

    def peer_disconnected(self, peer: NodeId, now: float) -> None:
        """The connection to ``peer`` is gone."""
        self._early.pop(peer)
        if self.sync is None or self._closed:
            return
        had = self._peers.disconnect(peer)
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
            if not self._peers.take_token(peer, now):
                self.requests_limited += 1
                return
            self.requests_served += 1
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
        return any(n in self._refs for n in self._peers.names(peer))

    def _sharing(self, name: str) -> list[NodeId]:
        return self._peers.sharing(name)

    def _on_interest(self, peer: NodeId, msg: LogInterest, now: float) -> None:
        assert self.sync is not None
        for name in self._peers.update(peer, msg) & self._refs.keys():
            self._apply(self.sync.interest(name, self._sharing(name), now))

    def _acquire(self, name: str) -> None:
        """One more handle on ``name``; the first starts replicating it."""
        if not valid_name(name):
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
            self._run([Send(p, msg) for p in self._peers.peers()])
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
        self._run([Send(p, msg) for p in self._peers.peers()])
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
        span: asyncio.Future[ReplaySpan] | None = None
        if replay:
            try:
                span = self._worker.read(
                    lambda s: {a: (s.low(a, lg) or 0, hi) for (a, lg), hi in s.heads(name).items()}
                )
            except BaseException:
                self._close_handle(hid)
                raise
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
        """Fold every stored operation of the map's name in, reading in bounded batches on the
        store worker; operations stored meanwhile are applied as they come, and applying twice
        is harmless."""
        name = state.map.log
        heads = await self._worker.read(lambda s: s.heads(name))
        for (author, lg), hi in heads.items():
            seq: int = await self._worker.read(methodcaller("low", author, lg)) or 0
            while seq <= hi:
                batch: list[StoredOp] = await self._worker.read(methodcaller("iter_range", author, lg, seq, 256))
                if not batch:
                    break
                for s in batch:
                    state.map.apply(s.op, s.payload)
                seq = batch[-1].op.seq + 1

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
        assert self._append_lock is not None and self._loop is not None
        async with self._append_lock:
            if self._closed or self.sync is None:
                raise NodeClosed("log service is not running")
            req_id, outputs = self.sync.append(name, payload, now=self._now(), now_us=self.clock_us(), min_us=after)
            fut: asyncio.Future[StoredOp] = self._loop.create_future()
            self._appends[req_id] = fut
            self._apply(outputs)
            try:
                stored = await fut
            finally:
                self._appends.pop(req_id, None)
            self.appended += 1
        return LogEntry.of(stored.op, stored.payload, stored.id)

    def heads(self, name: str) -> dict[NodeId, int]:
        """Latest stored seq per author of log ``name``."""
        self._check()
        return self._heads.heads(name)

    async def read(self, name: str, author: NodeId, from_seq: int, limit: int) -> list[LogEntry]:
        """Stored entries of one author's log (see :meth:`Log.read`)."""
        self._check()
        n = max(0, min(limit, 1024))
        batch = await self._worker.read(lambda s: s.iter_range(author, name, from_seq, n))
        return [LogEntry.of(s.op, s.payload, s.id) for s in batch]

    # -- delivery --------------------------------------------------------------------------------

    def _deliver(self, op: Operation, payload: bytes) -> None:
        name = op.header.log
        self._heads.advance(name, op.author, op.seq)
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
            "interest_names_ignored_total": self._peers.names_ignored,
            "batches_dropped_total": self.batches_dropped,
            "batches_in_thread_total": self.batches_in_thread,
            "store_jobs_total": self._worker.jobs_run,
            "store_requests_in_flight": sync.in_flight() if sync is not None else 0,
            "store_requests_dropped_total": sync.requests_dropped if sync is not None else 0,
        }
        return out
