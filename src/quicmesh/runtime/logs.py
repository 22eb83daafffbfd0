"""The node's replicated-log service: store, store worker, sync, log handles, watchers and maps.

Theory of operation
-------------------
:class:`LogService` is the runtime half of log replication. The sans-IO half,
:class:`~quicmesh.core.replication.LogReplication` (interest exchange, rate limits, the sync
machine), is part of the node's :class:`~quicmesh.core.node.NodeCore`, which routes ``l.*``
messages, peer events and the timer to it. The node's driver hands this class the log outputs
of the core (:meth:`LogService.execute`), and this class owns what needs I/O and asyncio:

* **Store**: :class:`~quicmesh.store.SqliteStore` at ``<data_dir>/store.sqlite3`` when
  ``config.data_dir`` is set, else a :class:`~quicmesh.store.MemoryStore` with the
  ``config.store`` caps. A node restarted on the same directory keeps its key and continues its
  logs (the next append links to the stored head).
* **Store worker** (:class:`~quicmesh.runtime.store_worker.StoreWorker`): every store access
  (LogSync's :class:`~quicmesh.core.log_effects.StoreRead` / ``StoreWrite`` requests, appends,
  handle reads, map loads) is a job in one bounded FIFO queue run in order on one thread with
  SQLite (never on the event loop), inline with the memory store; results come back on the loop
  (``LogSync.store_done``) in the same order. :meth:`Log.heads` reads a mirror of the heads.
* **Appends**: serialised; each is a job (signed, checked exactly as the peers will check it,
  stored, fsynced with SQLite), then published (local delivery, live pushes) on the loop, and
  only then does ``append`` return: durable before the future resolves, and published in append
  order. A write the peers would refuse (another realm, a timestamp beyond
  ``store.max_clock_skew`` of the wall clock, too large) raises its
  :class:`~quicmesh.errors.InvalidOperation` and stores nothing.
* **Clocks**: operation timestamps come from :attr:`LogService.clock_us` (the wall clock); the
  core checks them, and every received one, against its own wall clock (``wall_offset``, set
  at :meth:`LogService.start`) plus ``store.max_clock_skew``.
* **Interest**: a log name is replicated while this node holds a :class:`Log` handle, a watcher
  or a :class:`ReplicatedMap` on it: each handle takes a reference in the core
  (``LogReplication.acquire``); closing or garbage-collecting the last one releases it.
* **Delivery**: every newly stored operation (appended here, pushed live or pulled) is put into
  the bounded queue of each watcher of its log (drop-oldest, counted) and folded into the
  name's last-writer-wins map when one is open. Operations reach the store in seq order per
  author, so watchers see each author's operations in order.

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
from typing import Any

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..bounded.aio import BoundedQueue
from ..config import NodeConfig
from ..core.kvmap import KvMap, decode_entry
from ..core.log_effects import Appended, AppendLocal, IngestOps, OperationStored, StoreRead, StoreWrite
from ..core.logsync import LogSync
from ..core.oplog import Operation
from ..core.replication import LogReplication
from ..core.store_api import Store, StoredOp
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
        replication: LogReplication,
        *,
        registry: ContainerRegistry,
        run: Callable[[Iterable[object]], None],
        rearm: Callable[[], None] | None = None,
    ) -> None:
        self.keypair = keypair
        self.config = config
        self.registry = registry
        self.replication = replication
        """The core's log machine (interest, sync); this service executes its store requests."""
        self._run = run
        self._rearm_cb = rearm
        self.store: Store | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.clock_us: Callable[[], int] = lambda: time.time_ns() // 1000
        """Wall clock for operation timestamps (microseconds); replaceable in tests."""
        self._peer_logs = replication.peers.interests
        self._handles: LruMap[int, _Handle] = LruMap(
            "logs.handles", config.pubsub.max_subscriptions, Overflow.REJECT, registry=registry
        )
        self._log_watchers: dict[str, dict[int, BoundedQueue[LogEntry]]] = {}  # bounded: subset of _handles
        self._maps: dict[str, _KvState] = {}  # bounded: one per name with an open map (<= max_interests)
        self._worker = StoreWorker(STORE_REQUESTS + HANDLE_JOBS, registry=registry)
        self._heads = HeadsMirror(config.store.max_logs, registry=registry)
        self._append_lock: asyncio.Lock | None = None
        self._appends: dict[int, asyncio.Future[StoredOp]] = {}  # bounded: one append at a time (_append_lock)
        self._tasks: set[asyncio.Task[Any]] = set()  # bounded: appends in flight (one at a time), a load per map opened
        self._ids = itertools.count(1)
        self._evicted_seen = 0  # store.counts().evicted_logs when the heads mirror was last reloaded
        # counters
        self.batches_dropped = 0
        self.batches_in_thread = 0
        self.appended = 0
        self.delivered = 0

    @property
    def node_id(self) -> NodeId:
        """This node's id."""
        return self.keypair.node_id

    @property
    def sync(self) -> LogSync | None:
        """The core's sync machine, once the store is open (``None`` before)."""
        return self.replication.sync if self.store is not None and not self._closed else None

    @property
    def requests_limited(self) -> int:
        """``l.req`` requests dropped by the per-peer rate limit."""
        return self.replication.requests_limited

    @property
    def requests_served(self) -> int:
        """``l.req`` requests served."""
        return self.replication.requests_served

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (SQLite under ``config.data_dir``, else memory) and its worker."""
        self._loop = asyncio.get_running_loop()
        self._append_lock = asyncio.Lock()
        self.replication.wall_offset = time.time() - self._loop.time()
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
        self._worker.start(store, self._executor)
        self._heads.load(await self._worker.read(lambda s: s.heads()))
        self.store = store

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
        self.replication.close()
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
        if self._closed or self.store is None:
            raise NodeClosed("log service is not running")

    # -- executing the core's log outputs --------------------------------------------------------

    def execute(self, e: object) -> None:
        """Carry out one log output of the core: a store request goes to the worker, a stored
        operation to the local watchers and maps, an append result to its caller."""
        if isinstance(e, OperationStored):
            self._deliver(e.op, e.payload)
        elif isinstance(e, StoreRead | StoreWrite):
            if self.store is None or self._closed:
                self._refuse(e)
            else:
                self._request(e)
        elif isinstance(e, Appended):
            fut = self._appends.pop(e.req_id, None)
            if fut is not None and not fut.done():
                if e.stored is not None:
                    fut.set_result(e.stored)
                else:
                    fut.set_exception(e.error or NodeClosed("append failed"))

    def _refuse(self, req: StoreRead | StoreWrite) -> None:
        """A store request while no store is open: it fails (the sync machine retries later)."""
        self._run(self.replication.store_done(req.req_id, NodeClosed("no store open"), self._now()))

    def _request(self, req: StoreRead | StoreWrite) -> None:
        req_id = req.req_id

        def done(result: object) -> None:
            if isinstance(result, Exception) and not isinstance(result, InvalidOperation | LimitExceeded):
                log.error("store request %r failed: %r", type(req.query).__name__, result)
            if isinstance(req.query, AppendLocal):
                self._after_append()
            outputs = self.replication.store_done(req_id, result, self._now())
            if self._closed:  # only answer the appends still waiting
                for o in outputs:
                    if isinstance(o, Appended):
                        self.execute(o)
                return
            self._run(outputs)
            self._rearm()

        if isinstance(req.query, IngestOps) and req.query.allow_gap and self._executor is not None:
            self.batches_in_thread += 1
        try:
            self._worker.submit(req.query.run, done)
        except ContainerFull as exc:  # only when handles filled the queue's share: a failed request
            self.batches_dropped += 1
            assert self._loop is not None
            self._loop.call_soon(done, exc)

    def _after_append(self) -> None:
        """A local append may have evicted foreign logs: then reload the heads mirror (a read
        job, in FIFO order with the writes, so later stored operations advance it afterwards)."""
        if self.store is None or self._closed:
            return
        evicted = self.store.counts().evicted_logs
        if evicted == self._evicted_seen:
            return
        self._evicted_seen = evicted
        with contextlib.suppress(ContainerFull, NodeClosed):
            self._worker.submit(lambda s: s.heads(), self._reload_heads)

    def _reload_heads(self, result: object) -> None:
        if isinstance(result, dict):
            self._heads.replace(result)

    # -- interest --------------------------------------------------------------------------------

    @property
    def _refs(self) -> dict[str, int]:
        """Log name -> handles held on it (the core's reference counts)."""
        return self.replication.refs

    def _sharing(self, name: str) -> list[NodeId]:
        """The connected peers interested in ``name``."""
        return self.replication.peers.sharing(name)

    def _acquire(self, name: str) -> None:
        """One more handle on ``name``; the first starts replicating it."""
        self._run(self.replication.acquire(name, self._now()))
        self._rearm()

    def _release(self, name: str) -> None:
        """One handle fewer on ``name``; the last stops replicating it."""
        if self._closed:
            return
        self._run(self.replication.release(name, self._now()))
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
            state = _KvState(KvMap(name, max_keys=KV_MAX_KEYS, registry=self.registry), self._loop.create_future())
        hid = self._new_handle(_Handle("kv", name, state=state))
        state.refs += 1
        handle = ReplicatedMap(self, hid, state)
        if fresh:
            # The load is a task of its own: an opener that is cancelled (its caller gave up)
            # does not cut it short for the others waiting on the same map.
            self._maps[name] = state
            task = asyncio.ensure_future(self._load_into(state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.shield(state.loaded)
        except BaseException:
            self._close_handle(hid)
            raise
        return handle

    async def _load_into(self, state: _KvState) -> None:
        try:
            await self._load(state)
        except BaseException as exc:
            if not state.loaded.done():
                state.loaded.set_exception(exc if isinstance(exc, Exception) else NodeClosed("node stopped"))
                state.loaded.exception()  # mark retrieved (nobody may be waiting any more)
            if not isinstance(exc, Exception):
                raise
            return
        if not state.loaded.done():
            state.loaded.set_result(None)

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
            if self._closed or self.store is None:
                raise NodeClosed("log service is not running")
            req_id, outputs = self.replication.append(
                name, payload, now=self._now(), now_us=self.clock_us(), min_us=after
            )
            fut: asyncio.Future[StoredOp] = self._loop.create_future()
            self._appends[req_id] = fut
            self._run(outputs)
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
                "evicted_logs_total": c.evicted_logs,
                "evicted_ops_total": c.evicted_ops,
                "quota_refused_total": c.quota_refused,
            }
            out[f"{out['store']['kind']}_store"] = out["store"]  # memory_store / sqlite_store, as operators name it
        sync = self.sync
        out["logs"] = {
            "names": len(self.replication.refs),
            "handles": len(self._handles),
            "maps": len(self._maps),
            "sessions": len(sync.running()) if sync is not None else 0,
            "sessions_failed_total": sync.sessions_failed if sync is not None else 0,
            "ops_stored_total": sync.ops_stored if sync is not None else 0,
            "ops_refused_total": sync.ops_refused if sync is not None else 0,
            "invalid_ops_total": sync.invalid_ops if sync is not None else 0,
            "ops_ahead_total": sync.ops_ahead if sync is not None else 0,
            "ops_foreign_realm_total": sync.ops_foreign_realm if sync is not None else 0,
            "ops_refused_by_reason_total": dict(sync.trust.refused) if sync is not None else {},
            "appended_total": self.appended,
            "requests_limited_total": self.requests_limited,
            "interest_names_ignored_total": self.replication.peers.names_ignored,
            "batches_dropped_total": self.batches_dropped,
            "batches_in_thread_total": self.batches_in_thread,
            "store_jobs_total": self._worker.jobs_run,
            "store_requests_in_flight": sync.in_flight() if sync is not None else 0,
            "store_requests_dropped_total": sync.requests_dropped if sync is not None else 0,
        }
        return out

    def gauges(self) -> dict[str, float]:
        """Log counters for ``/metrics`` (``quicmesh_node_events_total{name}``): operations
        refused for their timestamp or realm, or for their author's certificate
        (``log_ops_refused_<reason>_total``, reasons of :data:`~quicmesh.core.log_trust.REASONS`),
        foreign logs and operations evicted, quota refusals."""
        sync = self.sync
        out = {
            "log_ops_ahead_total": float(sync.ops_ahead if sync is not None else 0),
            "log_ops_foreign_realm_total": float(sync.ops_foreign_realm if sync is not None else 0),
        }
        for reason, n in (sync.trust.refused.items() if sync is not None else ()):
            out[f"log_ops_refused_{reason}_total"] = float(n)
        if self.store is not None:
            c = self.store.counts()
            out["store_evicted_logs_total"] = float(c.evicted_logs)
            out["store_evicted_ops_total"] = float(c.evicted_ops)
            out["store_quota_refused_total"] = float(c.quota_refused)
        return out
