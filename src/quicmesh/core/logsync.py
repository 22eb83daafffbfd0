"""Sans-IO replication of signed logs between peers: height-based sync sessions, live pushes,
and the gossip buffer that holds live operations while a sync with their sender runs.

Theory of operation
-------------------
The application declares *interest* in a log name and the peers to replicate it with. For every
connected peer in that set there is a *pair* ``(peer, log)`` with a schedule. When a pair is due
and fewer than ``max_sync_sessions`` sessions run, a *pull session* starts: we send
:class:`~quicmesh.core.log_messages.SyncRequest` with our heads for the log (latest seq per
author). The peer answers with one :class:`SyncBatch` (at most ``sync_batch_ops`` operations and
``sync_batch_bytes`` bytes) of what we miss; while it says ``more`` and we made progress, we ask
again with our new heads. The serving side keeps no per-session state at all, so nothing
accumulates there; its work per request is one batch. A peer that receives our request for a
log it is interested in starts its own pull session towards us, so both sides converge.

* A session that gets no batch within ``sync_timeout`` fails. A failed pair is retried after an
  exponential backoff from ``sync_retry_min`` doubling up to ``sync_retry_max`` (with jitter
  from the seeded ``rng``); it is never given up. A successful one is synced again after
  ``resync_interval`` (anti-entropy). No pair starts two sessions less than ``sync_retry_min``
  apart.
* Live operations (:class:`LiveOp`, or :meth:`LogSync.on_live_operation`) from a peer we are
  syncing that log with are held in the :class:`GossipBuffer` and replayed, in arrival order,
  when the session ends (success, failure or disconnect). Others are ingested at once; one that
  does not follow our head (``SeqGap``) makes the pair due (after the floor), since we are behind.
* Every operation is decoded and validated by the store before it is stored or forwarded. An
  invalid operation (bad encoding, signature, payload, size, version, fork) counts against its
  sender; at ``max_invalid_ops`` within ``invalid_ops_window`` the sender is disconnected.
* A newly stored operation yields :class:`OperationStored` (for local watchers) and, when it was
  appended here or pushed live to us, a :class:`LiveOp` to the other connected peers interested
  in its log. Operations obtained by pull sync are not pushed on; peers pull them from us.

All state is bounded: interests (``max_interests``), pairs (LRU, ``max_sync_pairs``), sessions
(``max_sync_sessions``), the gossip buffer (count, bytes, TTL) and the violation counters (TTL).
Time enters only as ``now`` (seconds, the driver's monotonic clock); ``now_us`` for operation
timestamps is the wall clock in microseconds, given by the caller of :meth:`LogSync.append`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from random import Random

from ..bounded import REGISTRY, ContainerRegistry, ContainerStats, LruMap, Overflow, TtlMap
from ..config import StoreConfig
from ..errors import InvalidOperation, LimitExceeded, SeqGap
from ..identity import KeyPair, NodeId
from ..store.base import IngestResult, Store, StoredOp, append
from .effects import Disconnect, Send
from .log_messages import LiveOp, SyncBatch, SyncRequest
from .oplog import Operation, decode_operation, encode_operation, validate
from .wire import Message

__all__ = ["GossipBuffer", "LogEffect", "LogSync", "OperationStored"]


@dataclass(frozen=True, slots=True)
class OperationStored:
    """An operation was newly stored: hand it to the local watchers of ``op.log``.

    ``source`` is the peer it came from, ``None`` when appended on this node.
    """

    op: Operation
    payload: bytes
    source: NodeId | None


LogEffect = Send | Disconnect | OperationStored
"""What :class:`LogSync` asks its driver to do."""

_Key = tuple[NodeId, str]


class _Held:
    __slots__ = ("deadline", "op", "payload", "size")

    def __init__(self, op: Operation, payload: bytes, deadline: float) -> None:
        self.op = op
        self.payload = payload
        self.deadline = deadline
        self.size = len(payload) + 200 + len(op.header.log)


class GossipBuffer:
    """Live operations held per ``(peer, log)`` while a sync session with that peer runs.

    Capped in operations and bytes over all keys; when full, the new operation is dropped and
    counted (``hold`` returns ``False``; the caller re-syncs that pair so it is not lost). Each
    held operation expires ``ttl`` seconds after it arrived (inside :meth:`expire`). A key whose
    queue becomes empty is removed at once. Reports :class:`ContainerStats` like the bounded
    containers and registers itself in ``registry``.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        capacity_bytes: int,
        ttl: float,
        *,
        registry: ContainerRegistry | None = None,
    ) -> None:
        if capacity < 1 or capacity_bytes < 1 or not ttl > 0:
            raise ValueError(f"{name}: capacity, capacity_bytes and ttl must be positive")
        self._name = name
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.ttl = float(ttl)
        # One key per running sync session (<= max_sync_sessions), removed as soon as empty;
        # entries are capped in count and bytes over all keys in hold().
        self._queues: dict[_Key, deque[_Held]] = {}  # bounded: keys <= sessions; entries capped in hold()
        self._count = 0
        self._bytes = 0
        self._peak = 0
        self._rejections = 0
        self._expirations = 0
        self._registry = registry if registry is not None else REGISTRY
        self._registry.register(self)

    @property
    def name(self) -> str:
        """The name shown in metrics."""
        return self._name

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes held (payload plus a header estimate)."""
        return self._bytes

    def keys(self) -> list[_Key]:
        """The ``(peer, log)`` keys holding at least one operation."""
        return list(self._queues)

    def hold(self, peer: NodeId, log: str, op: Operation, payload: bytes, now: float) -> bool:
        """Hold ``op``; ``False`` when the buffer is full (the operation is dropped, counted)."""
        item = _Held(op, payload, now + self.ttl)
        if self._count + 1 > self.capacity or self._bytes + item.size > self.capacity_bytes:
            self._rejections += 1
            return False
        self._queues.setdefault((peer, log), deque()).append(item)
        self._count += 1
        self._bytes += item.size
        self._peak = max(self._peak, self._count)
        return True

    def release(self, peer: NodeId, log: str) -> list[tuple[Operation, bytes]]:
        """Remove and return what is held for ``(peer, log)``, in arrival order."""
        q = self._queues.pop((peer, log), None)
        if q is None:
            return []
        self._count -= len(q)
        self._bytes -= sum(h.size for h in q)
        return [(h.op, h.payload) for h in q]

    def expire(self, now: float) -> list[_Key]:
        """Drop held operations past their deadline; return the keys that lost any."""
        hit: list[_Key] = []
        for key in list(self._queues):
            q = self._queues[key]
            lost = False
            while q and q[0].deadline <= now:
                h = q.popleft()
                self._count -= 1
                self._bytes -= h.size
                self._expirations += 1
                lost = True
            if not q:
                del self._queues[key]
            if lost:
                hit.append(key)
        return hit

    def next_deadline(self) -> float | None:
        """The earliest expiry of a held operation, or ``None``."""
        return min((q[0].deadline for q in self._queues.values()), default=None)

    def stats(self) -> ContainerStats:
        """A frozen snapshot of the counters."""
        return ContainerStats(
            name=self._name,
            kind="gossip_buffer",
            size=self._count,
            capacity=self.capacity,
            peak=self._peak,
            evictions=0,
            expirations=self._expirations,
            rejections=self._rejections,
            bytes=self._bytes,
            capacity_bytes=self.capacity_bytes,
        )

    def close(self) -> None:
        """Drop everything and leave the registry."""
        self._queues.clear()
        self._count = self._bytes = 0
        self._registry.unregister(self)


class _Pair:
    __slots__ = ("dirty", "failures", "last_start", "next_at")

    def __init__(self, next_at: float) -> None:
        self.next_at = next_at
        self.failures = 0
        self.last_start: float | None = None
        self.dirty = False


class _Session:
    __slots__ = ("deadline", "sid")

    def __init__(self, sid: int, deadline: float) -> None:
        self.sid = sid
        self.deadline = deadline


class LogSync:
    """Replicates the logs this node is interested in; see the module docstring.

    Driver contract: deliver every :data:`~quicmesh.core.log_messages.LOG_MESSAGES` message with
    :meth:`handle_message`; report connections with :meth:`peer_connected` and
    :meth:`peer_disconnected`; call :meth:`handle_timer` at :meth:`next_deadline` (re-read it
    after every call); carry out the returned effects in order.
    """

    def __init__(
        self,
        me: KeyPair,
        store: Store,
        config: StoreConfig | None = None,
        rng: Random | None = None,
        registry: ContainerRegistry | None = None,
    ) -> None:
        self.me = me
        self.store = store
        self.config = cfg = config or StoreConfig()
        self.rng = rng or Random(0)
        reg = registry if registry is not None else REGISTRY
        self._interest: dict[str, frozenset[NodeId]] = {}  # bounded: max_interests, enforced in interest()
        self._connected: set[NodeId] = set()  # bounded: one per open connection (transport.max_connections)
        self._pairs: LruMap[_Key, _Pair] = LruMap("logsync.pairs", cfg.max_sync_pairs, registry=reg)
        self._sessions: LruMap[_Key, _Session] = LruMap(
            "logsync.sessions", cfg.max_sync_sessions, Overflow.REJECT, registry=reg
        )
        self._violations: TtlMap[NodeId, int] = TtlMap("logsync.violations", 1024, cfg.invalid_ops_window, registry=reg)
        self.buffer = GossipBuffer(
            "logsync.gossip_buffer", cfg.gossip_buffer_ops, cfg.gossip_buffer_bytes, cfg.gossip_buffer_ttl, registry=reg
        )
        self._sid = self.rng.randrange(1 << 30)
        self._now = 0.0
        # counters (for metrics and tests)
        self.invalid_ops = 0
        self.sessions_started = 0
        self.sessions_failed = 0
        self.sessions_completed = 0
        self.ops_stored = 0
        self.ops_refused = 0

    # -- application API -------------------------------------------------------------------------

    def interest(self, log: str, peers: Iterable[NodeId], now: float | None = None) -> list[LogEffect]:
        """Replicate ``log`` with ``peers`` (replaces the previous peer set for ``log``).

        Connected peers of the set become due at once. Raises
        :class:`~quicmesh.errors.LimitExceeded` past ``max_interests`` log names.
        """
        now = self._tick(now)
        if log not in self._interest and len(self._interest) >= self.config.max_interests:
            raise LimitExceeded("store.max_interests", self.config.max_interests)
        old = self._interest.get(log, frozenset())
        new = frozenset(peers) - {self.me.node_id}
        self._interest[log] = new
        out: list[LogEffect] = []
        for peer in old - new:
            out += self._end_pair(peer, log, now)
        for peer in new:
            if peer in self._connected:
                self._ensure_pair(peer, log, now)
        out += self._start_due(now)
        return out

    def uninterest(self, log: str, now: float | None = None) -> list[LogEffect]:
        """Stop replicating ``log``; its sessions end and held operations are replayed."""
        now = self._tick(now)
        out: list[LogEffect] = []
        for peer in self._interest.pop(log, frozenset()):
            out += self._end_pair(peer, log, now)
        for key in [k for k in self._pairs.keys() if k[1] == log]:
            out += self._end_pair(key[0], log, now)
        return out

    def interests(self) -> dict[str, frozenset[NodeId]]:
        """A copy of the log names replicated and their peers."""
        return dict(self._interest)

    def append(
        self, log: str, payload: bytes, *, now: float, now_us: int, prune: bool = False
    ) -> tuple[StoredOp, list[LogEffect]]:
        """Append to this node's log ``log`` (durably, for a persistent store) and push it.

        Raises :class:`~quicmesh.errors.LimitExceeded` when the store has no room and
        :class:`~quicmesh.errors.OperationTooLarge` for an oversized payload. A runtime that
        appends from a worker thread calls ``store.append`` there and then :meth:`publish`.
        """
        stored = append(self.store, self.me, log, payload, now_us, prune=prune)
        return stored, self.publish(stored, now)

    def publish(self, stored: StoredOp, now: float) -> list[LogEffect]:
        """Effects for an operation just appended locally: local delivery and live pushes."""
        self._tick(now)
        self.ops_stored += 1
        out: list[LogEffect] = [OperationStored(stored.op, stored.payload, None)]
        out += self._push(stored.op, stored.payload, exclude=None)
        return out

    # -- driver API ------------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId, now: float) -> list[LogEffect]:
        """``peer`` is connected: its pairs become due."""
        now = self._tick(now)
        self._connected.add(peer)
        for log, peers in self._interest.items():
            if peer in peers:
                self._ensure_pair(peer, log, now)
        return self._start_due(now)

    def peer_disconnected(self, peer: NodeId, now: float) -> list[LogEffect]:
        """``peer`` is gone: end its sessions (replaying held operations), forget its pairs."""
        now = self._tick(now)
        self._connected.discard(peer)
        out: list[LogEffect] = []
        for key in [k for k in self._pairs.keys() if k[0] == peer]:
            out += self._end_pair(peer, key[1], now)
        for key in [k for k in self._sessions.keys() if k[0] == peer]:
            out += self._end_pair(peer, key[1], now)
        out += self._start_due(now)
        return out

    def handle_message(self, peer: NodeId, msg: Message, now: float) -> list[LogEffect]:
        """Process one message of :data:`LOG_MESSAGES` from ``peer``."""
        now = self._tick(now)
        if isinstance(msg, SyncRequest):
            return self._serve(peer, msg, now)
        if isinstance(msg, SyncBatch):
            return self._on_batch(peer, msg, now)
        if isinstance(msg, LiveOp):
            try:
                op = decode_operation(msg.op)
            except InvalidOperation:
                return self._violation(peer)
            return self.on_live_operation(peer, op, msg.payload, now)
        return []

    def on_live_operation(self, peer: NodeId, op: Operation, payload: bytes, now: float) -> list[LogEffect]:
        """A live operation pushed by ``peer``: held while a session with ``peer`` on its log
        runs, otherwise validated and stored at once."""
        now = self._tick(now)
        log = op.header.log
        if log not in self._interest:
            return []
        key = (peer, log)
        if key in self._sessions:
            try:
                validate(op, payload, None, self.config.max_operation_size, allow_gap=True)
            except InvalidOperation:
                return self._violation(peer)
            if not self.buffer.hold(peer, log, op, payload, now):
                pair = self._pairs.peek(key)
                if pair is not None:
                    pair.dirty = True
            return []
        return self._ingest_live(peer, op, payload, now)

    def handle_timer(self, now: float) -> list[LogEffect]:
        """Expire held operations and violation counts, time out sessions, start due ones."""
        now = self._tick(now)
        out: list[LogEffect] = []
        for key in self.buffer.expire(now):
            pair = self._pairs.peek(key)
            if pair is not None:
                pair.dirty = True
        self._violations.expire(now)
        for key in [k for k, s in self._sessions.items() if s.deadline <= now]:
            out += self._finish(key, now, ok=False)
        out += self._start_due(now)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` should run next, or ``None``."""
        cands: list[float] = [s.deadline for s in self._sessions.values()]
        if len(self._sessions) < self.config.max_sync_sessions:
            cands += [p.next_at for k, p in self._pairs.items() if k not in self._sessions and k[0] in self._connected]
        for d in (self.buffer.next_deadline(), self._violations.next_deadline()):
            if d is not None:
                cands.append(d)
        return min(cands, default=None)

    def running(self) -> list[tuple[NodeId, str]]:
        """The ``(peer, log)`` pull sessions running now."""
        return list(self._sessions.keys())

    def close(self) -> None:
        """Leave the registry (containers are dropped)."""
        self._pairs.close()
        self._sessions.close()
        self._violations.close()
        self.buffer.close()

    # -- internals -------------------------------------------------------------------------------

    def _tick(self, now: float | None) -> float:
        if now is not None:
            self._now = max(self._now, now)
            return now
        return self._now

    def _ensure_pair(self, peer: NodeId, log: str, now: float) -> _Pair:
        pair = self._pairs.get((peer, log))
        if pair is None:
            pair = _Pair(now)
            self._pairs.set((peer, log), pair)
        return pair

    def _make_due(self, pair: _Pair, now: float) -> None:
        floor = now if pair.last_start is None else pair.last_start + self.config.sync_retry_min
        pair.next_at = min(pair.next_at, max(now, floor))

    def _start_due(self, now: float) -> list[LogEffect]:
        free = self.config.max_sync_sessions - len(self._sessions)
        if free <= 0:
            return []
        due = sorted(
            ((p.next_at, k) for k, p in self._pairs.items() if p.next_at <= now and k not in self._sessions),
            key=lambda t: t[0],
        )
        out: list[LogEffect] = []
        for _, key in due[:free]:
            if key[0] not in self._connected:
                continue
            pair = self._pairs.peek(key)
            assert pair is not None
            pair.last_start = now
            pair.dirty = False
            pair.next_at = now + self.config.resync_interval  # rescheduled when the session ends
            self._sid = (self._sid + 1) & 0x7FFFFFFF
            self._sessions.set(key, _Session(self._sid, now + self.config.sync_timeout))
            self.sessions_started += 1
            out.append(Send(key[0], self._request(self._sid, key[1])))
        return out

    def _request(self, sid: int, log: str) -> SyncRequest:
        heads = [(a.raw, seq) for (a, _), seq in self.store.heads(log).items()]
        return SyncRequest(sid=sid, log=log, heads=heads)

    def _serve(self, peer: NodeId, msg: SyncRequest, now: float) -> list[LogEffect]:
        log = msg.log
        if log not in self._interest:
            return [Send(peer, SyncBatch(sid=msg.sid, log=log, ops=[], more=False, refused=True))]
        out: list[LogEffect] = []
        if peer in self._connected and (peer, log) not in self._sessions:
            pair = self._pairs.peek((peer, log))
            if pair is None or pair.last_start is None:
                self._make_due(self._ensure_pair(peer, log, now), now)
        theirs: dict[bytes, int] = {}
        for raw, seq in msg.heads[: self.config.max_logs]:
            theirs[raw] = seq
        cfg = self.config
        ops: list[tuple[bytes, bytes]] = []
        nbytes = 0
        more = False
        mine = sorted(self.store.heads(log).items(), key=lambda kv: kv[0][0].raw)
        for (author, _), hi in mine:
            start = theirs.get(author.raw, -1) + 1
            while start <= hi:
                if len(ops) >= cfg.sync_batch_ops:
                    more = True
                    break
                batch = self.store.iter_range(author, log, start, min(16, cfg.sync_batch_ops - len(ops)))
                if not batch:
                    break
                for s in batch:
                    data = encode_operation(s.op)
                    size = len(data) + len(s.payload)
                    if ops and nbytes + size > cfg.sync_batch_bytes:
                        more = True
                        break
                    ops.append((data, s.payload))
                    nbytes += size
                    start = s.op.seq + 1
                if more:
                    break
            if more:
                break
        out.append(Send(peer, SyncBatch(sid=msg.sid, log=log, ops=ops, more=more)))
        out += self._start_due(now)
        return out

    def _on_batch(self, peer: NodeId, msg: SyncBatch, now: float) -> list[LogEffect]:
        key = (peer, msg.log)
        session = self._sessions.peek(key)
        if session is None or session.sid != msg.sid:
            return []  # late or unsolicited: ignored
        if msg.refused:
            return self._finish(key, now, ok=True)
        out: list[LogEffect] = []
        progress = False
        for data, payload in msg.ops:
            try:
                op = decode_operation(data)
                if op.header.log != msg.log:
                    raise InvalidOperation("operation of another log in a sync batch")
                res = self.store.ingest(op, payload, allow_gap=True)
            except InvalidOperation:
                out += self._violation(peer)
                out += self._finish(key, now, ok=False)
                return out
            if res is IngestResult.STORED:
                progress = True
                self.ops_stored += 1
                out.append(OperationStored(op, payload, peer))
            elif res is IngestResult.DUPLICATE:
                progress = True
            else:
                self.ops_refused += 1
        if msg.more and progress:
            session.deadline = now + self.config.sync_timeout
            out.append(Send(peer, self._request(session.sid, msg.log)))
            return out
        out += self._finish(key, now, ok=True)
        return out

    def _finish(self, key: _Key, now: float, *, ok: bool) -> list[LogEffect]:
        """End the session of ``key``, reschedule its pair, replay held live operations."""
        if self._sessions.pop(key) is None:
            return []
        pair = self._pairs.peek(key)
        cfg = self.config
        if ok:
            self.sessions_completed += 1
        else:
            self.sessions_failed += 1
        if pair is not None:
            start = pair.last_start if pair.last_start is not None else now
            if ok:
                pair.failures = 0
                delay = cfg.resync_interval * (0.9 + 0.1 * self.rng.random())
            else:
                pair.failures += 1
                base = min(cfg.sync_retry_max, cfg.sync_retry_min * 2.0 ** min(pair.failures - 1, 62))
                delay = base * (0.75 + 0.25 * self.rng.random())
            pair.next_at = max(now + delay, start + cfg.sync_retry_min)
            if ok and pair.dirty:
                pair.next_at = max(now, start + cfg.sync_retry_min)
        out: list[LogEffect] = []
        for op, payload in self.buffer.release(key[0], key[1]):
            out += self._ingest_live(key[0], op, payload, now)
        out += self._start_due(now)
        return out

    def _end_pair(self, peer: NodeId, log: str, now: float) -> list[LogEffect]:
        self._pairs.pop((peer, log))
        out = self._finish((peer, log), now, ok=False) if (peer, log) in self._sessions else []
        out += [e for op, p in self.buffer.release(peer, log) for e in self._ingest_live(peer, op, p, now)]
        return out

    def _ingest_live(self, peer: NodeId, op: Operation, payload: bytes, now: float) -> list[LogEffect]:
        try:
            res = self.store.ingest(op, payload)
        except SeqGap:
            if peer in self._connected and op.header.log in self._interest:
                self._make_due(self._ensure_pair(peer, op.header.log, now), now)
            return []
        except InvalidOperation:
            return self._violation(peer)
        if res is IngestResult.STORED:
            self.ops_stored += 1
            return [OperationStored(op, payload, peer), *self._push(op, payload, exclude=peer)]
        if res is IngestResult.REFUSED:
            self.ops_refused += 1
        return []

    def _push(self, op: Operation, payload: bytes, exclude: NodeId | None) -> list[LogEffect]:
        peers = self._interest.get(op.header.log)
        if not peers:
            return []
        msg = LiveOp(op=encode_operation(op), payload=payload)
        return [Send(p, msg) for p in sorted(peers, key=lambda n: n.raw) if p != exclude and p in self._connected]

    def _violation(self, peer: NodeId) -> list[LogEffect]:
        self.invalid_ops += 1
        count = (self._violations.get(peer) or 0) + 1
        self._violations.set(peer, count, self._now)
        if count >= self.config.max_invalid_ops:
            self._violations.pop(peer)
            return [Disconnect(peer, "invalid_operations")]
        return []
