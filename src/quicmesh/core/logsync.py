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

* A session that gets no batch within ``sync_timeout`` fails; its pair is retried after a
  backoff from ``sync_retry_min`` doubling up to ``sync_retry_max`` (jitter from the seeded
  ``rng``), never given up. A successful one is synced again after ``resync_interval``
  (anti-entropy). No pair starts two sessions less than ``sync_retry_min`` apart.
* Live operations (:class:`LiveOp`, or :meth:`LogSync.on_live_operation`) from a peer we are
  syncing that log with are held in the :class:`GossipBuffer` and replayed, in arrival order,
  when the session ends (success, failure or disconnect). Others are ingested at once; one that
  does not follow our head (``SeqGap``) makes the pair due (after the floor), since we are behind.
* Every operation is decoded here and validated by the store before it is stored or forwarded,
  against this node's :class:`~quicmesh.core.oplog.Acceptance`: its realm (``realm``, the realm's
  wire identity) and the latest timestamp it accepts (its wall clock, ``now + wall_offset``, plus
  ``max_clock_skew``). An invalid operation (bad encoding, signature, payload, size, version,
  fork, another realm) counts against its sender; at ``max_invalid_ops`` within
  ``invalid_ops_window`` the sender is disconnected. One stamped too far ahead
  (:class:`~quicmesh.errors.TimestampAhead`) is refused and counted in ``ops_ahead``, no
  violation: an honest relay's clock may differ (a batch holding one fails, retried later).
* Appends are checked by the store exactly as peers check them (the same validation with the
  same acceptance; :class:`~quicmesh.core.log_effects.AppendLocal`), so this node never stores a
  write its peers would refuse: the error goes to the appender and nothing is stored.
* In an authority realm (``guard``) authors' certificates travel with their operations and each
  author's ``log`` permission is checked before they are held, stored or pushed on
  (:mod:`quicmesh.core.log_trust`, :attr:`LogSync.trust`).
* A newly stored operation yields :class:`OperationStored` (for local watchers) and, when it was
  appended here or pushed live to us, a :class:`LiveOp` to the other connected peers interested
  in its log. Operations obtained by pull sync are not pushed on; peers pull them from us.

Store access (sans-IO): LogSync never calls a store; it outputs
:class:`~quicmesh.core.log_effects.StoreRead` / :class:`~quicmesh.core.log_effects.StoreWrite`
and continues in :meth:`LogSync.store_done`; the flows, and what happens when ``max_requests``
are in flight, are described in :mod:`quicmesh.core.log_effects`.

All state is bounded: interests (``max_interests``), pairs (LRU, ``max_sync_pairs``), sessions
(``max_sync_sessions``), store requests in flight (``max_requests``), connected peers
(``max_peers``, LRU), the gossip buffer (count, bytes, TTL), the violation counters (TTL) and
the authors' certificates (LRU). Time enters only as ``now`` (the driver's monotonic clock);
``wall_offset`` (wall clock minus ``now``, set by the driver) gives the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from random import Random

from ..bounded import REGISTRY, ContainerRegistry, LruMap, Overflow, TtlMap
from ..config import StoreConfig
from ..errors import ContainerFull, ForeignRealm, InvalidOperation, LimitExceeded, SeqGap, TimestampAhead
from ..identity import KeyPair, NodeId
from .effects import Disconnect, Send
from .gossip_buffer import GossipBuffer
from .guard import Guard
from .log_effects import (
    Appended,
    AppendLocal,
    BatchRead,
    IngestOps,
    LogOutput,
    OperationStored,
    ReadBatch,
    ReadHeads,
    StoreRead,
    StoreRequest,
    StoreWrite,
)
from .log_messages import LiveOp, SyncBatch, SyncRequest
from .log_trust import LogTrust
from .logsync_state import _APPEND, _BATCH, _HEADS, _LIVE, _SERVE, _Pair, _Pending, _Session
from .oplog import Acceptance, Operation, decode_operation, validate
from .store_api import IngestResult, LogKey, StoredOp
from .wire import Message

__all__ = ["MAX_STORE_REQUESTS", "GossipBuffer", "LogEffect", "LogOutput", "LogSync", "OperationStored"]

LogEffect = LogOutput  # the former name

MAX_STORE_REQUESTS = 1024
"""Default cap of store requests in flight (``LogSync(max_requests=...)``)."""

MAX_PEERS = 4096
"""Default cap of connected peers tracked (``LogSync(max_peers=...)``)."""

_Key = tuple[NodeId, str]

class LogSync:
    """Replicates the logs this node is interested in; see the module docstring.

    Driver contract: deliver every :data:`~quicmesh.core.log_messages.LOG_MESSAGES` message with
    :meth:`handle_message`; report connections with :meth:`peer_connected` and
    :meth:`peer_disconnected`; call :meth:`handle_timer` at :meth:`next_deadline` (re-read it
    after every call); carry out the returned outputs in order, running store requests in FIFO
    order and reporting each result with :meth:`store_done`.
    """

    def __init__(
        self,
        me: KeyPair,
        config: StoreConfig | None = None,
        rng: Random | None = None,
        registry: ContainerRegistry | None = None,
        *,
        max_requests: int = MAX_STORE_REQUESTS,
        max_peers: int = MAX_PEERS,
        realm: str = "default",
        wall_offset: float = 0.0,
        guard: Guard | None = None,
    ) -> None:
        self.me = me
        self.realm = realm
        """The realm's wire identity: signed into every operation, required of received ones."""
        self.wall_offset = wall_offset
        """Wall clock minus the driver's ``now`` (seconds); the driver may update it."""
        self.config = cfg = config or StoreConfig()
        self.rng = rng or Random(0)
        reg = registry if registry is not None else REGISTRY
        self._interest: dict[str, frozenset[NodeId]] = {}  # bounded: max_interests, enforced in interest()
        self._connected: LruMap[NodeId, None] = LruMap("logsync.connected", max_peers, registry=reg)
        self._pairs: LruMap[_Key, _Pair] = LruMap("logsync.pairs", cfg.max_sync_pairs, registry=reg)
        self._sessions: LruMap[_Key, _Session] = LruMap(
            "logsync.sessions", cfg.max_sync_sessions, Overflow.REJECT, registry=reg
        )
        pending: LruMap[int, _Pending] = LruMap("logsync.store_requests", max_requests, Overflow.REJECT, registry=reg)
        self._pending = pending
        self._violations: TtlMap[NodeId, int] = TtlMap("logsync.violations", 1024, cfg.invalid_ops_window, registry=reg)
        self.buffer = GossipBuffer(
            "logsync.gossip_buffer", cfg.gossip_buffer_ops, cfg.gossip_buffer_bytes, cfg.gossip_buffer_ttl, registry=reg
        )
        self.trust = LogTrust(guard, reg)
        """Authors' certificates and ``log`` permissions (checked in an authority realm)."""
        self._sid = self.rng.randrange(1 << 30)
        self._req = 0
        self._now = 0.0
        # counters (for metrics and tests)
        self.invalid_ops = 0
        self.sessions_started = 0
        self.sessions_failed = 0
        self.sessions_completed = 0
        self.ops_stored = 0
        self.ops_refused = 0
        self.requests_dropped = 0  # store requests not issued: max_requests in flight
        self.store_errors = 0  # store requests that failed (not counting invalid operations)
        self.ops_ahead = 0  # operations refused: timestamp beyond our clock + max_clock_skew
        self.ops_foreign_realm = 0  # operations refused: signed for another realm (violations too)

    # -- application API -------------------------------------------------------------------------

    def interest(self, log: str, peers: Iterable[NodeId], now: float | None = None) -> list[LogOutput]:
        """Replicate ``log`` with ``peers`` (replaces the previous peer set for ``log``); connected
        peers become due at once, in the order given. Raises :class:`~quicmesh.errors.LimitExceeded`
        past ``max_interests`` log names."""
        now = self._tick(now)
        if log not in self._interest and len(self._interest) >= self.config.max_interests:
            raise LimitExceeded("store.max_interests", self.config.max_interests)
        old = self._interest.get(log, frozenset())
        wanted = [p for p in dict.fromkeys(peers) if p != self.me.node_id]  # the caller's order, not a set's
        new = frozenset(wanted)
        self._interest[log] = new
        out: list[LogOutput] = []
        for peer in sorted(old - new):  # sorted: a set's order varies by process (ids hash by address)
            out += self._end_pair(peer, log, now)
        for peer in wanted:
            if peer in self._connected:
                self._ensure_pair(peer, log, now)
        out += self._start_due(now)
        return out

    def uninterest(self, log: str, now: float | None = None) -> list[LogOutput]:
        """Stop replicating ``log``; its sessions end and held operations are replayed."""
        now = self._tick(now)
        out: list[LogOutput] = []
        for peer in sorted(self._interest.pop(log, frozenset())):
            out += self._end_pair(peer, log, now)
        for key in [k for k in self._pairs.keys() if k[1] == log]:
            out += self._end_pair(key[0], log, now)
        return out

    def interests(self) -> dict[str, frozenset[NodeId]]:
        """A copy of the log names replicated and their peers."""
        return dict(self._interest)

    def append(
        self, log: str, payload: bytes, *, now: float, now_us: int, min_us: int = 0, prune: bool = False
    ) -> tuple[int, list[LogOutput]]:
        """Append to this node's log ``log``: returns the request id and the outputs (one
        :class:`~quicmesh.core.log_effects.StoreWrite`). When it is done, :meth:`store_done`
        outputs :class:`~quicmesh.core.log_effects.Appended` with that id, after the local
        delivery and live pushes of the new operation.

        Raises :class:`~quicmesh.errors.LimitExceeded` when ``max_requests`` are in flight.
        """
        now = self._tick(now)
        query = AppendLocal(self.me, log, payload, now_us, min_us, prune, self.acceptance(now))
        req = self._submit(_Pending(_APPEND, None, log), query, now)
        if req is None:
            raise LimitExceeded("logsync.store_requests", self._pending.capacity)
        return req.req_id, [req]

    def acceptance(self, now: float) -> Acceptance:
        """What this node accepts at ``now``: its realm, timestamps up to its wall clock plus
        ``max_clock_skew``."""
        wall_us = int((now + self.wall_offset) * 1_000_000)
        return Acceptance.at(self.realm, wall_us, self.config.max_clock_skew)

    # -- driver API ------------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId, now: float) -> list[LogOutput]:
        """``peer`` is connected: its pairs become due."""
        now = self._tick(now)
        self._connected.set(peer, None)
        for log, peers in self._interest.items():
            if peer in peers:
                self._ensure_pair(peer, log, now)
        return self._start_due(now)

    def peer_disconnected(self, peer: NodeId, now: float) -> list[LogOutput]:
        """``peer`` is gone: end its sessions (replaying held operations), forget its pairs."""
        now = self._tick(now)
        self._connected.pop(peer)
        out: list[LogOutput] = []
        for key in [k for k in self._pairs.keys() if k[0] == peer]:
            out += self._end_pair(peer, key[1], now)
        for key in [k for k in self._sessions.keys() if k[0] == peer]:
            out += self._end_pair(peer, key[1], now)
        out += self._start_due(now)
        return out

    def handle_message(self, peer: NodeId, msg: Message, now: float) -> list[LogOutput]:
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
            if op.header.log in self._interest and self.trust.refuses(peer, op, msg.cert, now + self.wall_offset, now):
                return []
            return self.on_live_operation(peer, op, msg.payload, now)
        return []

    def on_live_operation(self, peer: NodeId, op: Operation, payload: bytes, now: float) -> list[LogOutput]:
        """A live operation pushed by ``peer``: held while a session with ``peer`` on its log
        runs, otherwise validated and stored at once (its author's certificate and permission
        are checked before, by :meth:`handle_message`)."""
        now = self._tick(now)
        log = op.header.log
        if log not in self._interest:
            return []
        key = (peer, log)
        if key in self._sessions:
            try:
                validate(op, payload, None, self.config.max_operation_size, allow_gap=True, accept=self.acceptance(now))
            except InvalidOperation as exc:
                return self._refused(peer, exc)
            if not self.buffer.hold(peer, log, op, payload, now):
                pair = self._pairs.peek(key)
                if pair is not None:
                    pair.dirty = True
            return []
        return self._ingest_live(peer, log, ((op, payload),), now)

    def store_done(self, req_id: int, result: object, now: float) -> list[LogOutput]:
        """The store request ``req_id`` finished with ``result`` (the query's return value, or
        the exception it raised). Unknown ids (e.g. after :meth:`close`) are ignored."""
        now = self._tick(now)
        p = self._pending.pop(req_id)
        if p is None:
            return []
        failed = isinstance(result, BaseException)
        if failed and not (p.kind == _APPEND and isinstance(result, InvalidOperation | LimitExceeded)):
            self.store_errors += 1
        if p.kind == _APPEND:
            if isinstance(result, StoredOp):
                self.ops_stored += 1
                out: list[LogOutput] = [OperationStored(result.op, result.payload, None)]
                return [*out, *self._push(result.op, result.payload, exclude=None), Appended(req_id, result)]
            err = result if isinstance(result, BaseException) else TypeError(f"append result {result!r}")
            return [Appended(req_id, None, err)]
        assert p.peer is not None
        if p.kind == _HEADS:
            return self._on_heads(p, None if failed else result, now)
        if p.kind == _SERVE:
            if failed or not isinstance(result, BatchRead):
                return []  # the puller times out and retries
            return [Send(p.peer, SyncBatch(sid=p.sid, log=p.log, ops=result.ops, more=result.more,
                                           certs=result.certs))]
        results = result if isinstance(result, list) else []
        if p.kind == _BATCH:
            return self._on_ingested(p, results, failed, now)
        return self._on_live_ingested(p, results, now)

    def handle_timer(self, now: float) -> list[LogOutput]:
        """Expire held operations and violation counts, time out sessions, start due ones."""
        now = self._tick(now)
        out: list[LogOutput] = []
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
        """When :meth:`handle_timer` should run next, or ``None`` (allocates nothing when empty)."""
        cands: list[float] = [s.deadline for s in self._sessions.values()] if self._sessions else []
        if self._pairs and len(self._sessions) < self.config.max_sync_sessions:
            cands += [p.next_at for k, p in self._pairs.items() if k not in self._sessions and k[0] in self._connected]
        for d in (self.buffer.next_deadline() if self.buffer else None,
                  self._violations.next_deadline() if self._violations else None):
            if d is not None:
                cands.append(d)
        return min(cands) if cands else None

    def running(self) -> list[tuple[NodeId, str]]:
        """The ``(peer, log)`` pull sessions running now."""
        return list(self._sessions.keys())

    def in_flight(self) -> int:
        """Store requests output and not yet reported with :meth:`store_done`."""
        return len(self._pending)

    def close(self) -> None:
        """Leave the registry (containers are dropped; later results are ignored)."""
        self._connected.close()
        self._pairs.close()
        self._sessions.close()
        self._pending.close()
        self._violations.close()
        self.buffer.close()
        self.trust.close()

    # -- internals -------------------------------------------------------------------------------

    def _tick(self, now: float | None) -> float:
        if now is not None:
            self._now = max(self._now, now)
            return now
        return self._now

    def _submit(
        self, pending: _Pending, query: ReadHeads | ReadBatch | IngestOps | AppendLocal, now: float
    ) -> StoreRequest | None:
        """Register a store request; ``None`` (counted) when ``max_requests`` are in flight."""
        self._req = (self._req + 1) & 0x7FFFFFFFFFFF
        try:
            self._pending.set(self._req, pending)
        except ContainerFull:
            self.requests_dropped += 1
            return None
        if isinstance(query, ReadHeads | ReadBatch):
            return StoreRead(self._req, query)
        return StoreWrite(self._req, query)

    def _ensure_pair(self, peer: NodeId, log: str, now: float) -> _Pair:
        pair = self._pairs.get((peer, log))
        if pair is None:
            pair = _Pair(now)
            self._pairs.set((peer, log), pair)
        return pair

    def _make_due(self, pair: _Pair, now: float) -> None:
        floor = now if pair.last_start is None else pair.last_start + self.config.sync_retry_min
        pair.next_at = min(pair.next_at, max(now, floor))

    def _start_due(self, now: float) -> list[LogOutput]:
        free = self.config.max_sync_sessions - len(self._sessions)
        if free <= 0:
            return []
        due = sorted(
            ((p.next_at, k) for k, p in self._pairs.items() if p.next_at <= now and k not in self._sessions),
            key=lambda t: t[0],
        )
        out: list[LogOutput] = []
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
            out += self._ask(key, self._sid, now)
        return out

    def _ask(self, key: _Key, sid: int, now: float) -> list[LogOutput]:
        """Read our heads for the next request of the session (sent in :meth:`_on_heads`); when
        no request can be issued the session fails at its timeout."""
        req = self._submit(_Pending(_HEADS, key[0], key[1], sid), ReadHeads(key[1]), now)
        return [] if req is None else [req]

    def _on_heads(self, p: _Pending, heads: object, now: float) -> list[LogOutput]:
        assert p.peer is not None
        key = (p.peer, p.log)
        session = self._sessions.peek(key)
        if session is None or session.sid != p.sid:
            return []  # the session ended meanwhile
        if not isinstance(heads, dict):
            return self._finish(key, now, ok=False)  # the store failed
        mine: dict[LogKey, int] = heads
        return [Send(p.peer, SyncRequest(sid=p.sid, log=p.log, heads=[(a.raw, seq) for (a, _), seq in mine.items()]))]

    def _serve(self, peer: NodeId, msg: SyncRequest, now: float) -> list[LogOutput]:
        log = msg.log
        if log not in self._interest:
            return [Send(peer, SyncBatch(sid=msg.sid, log=log, ops=[], more=False, refused=True))]
        out: list[LogOutput] = []
        if peer in self._connected and (peer, log) not in self._sessions:
            pair = self._pairs.peek((peer, log))
            if pair is None or pair.last_start is None:
                self._make_due(self._ensure_pair(peer, log, now), now)
        theirs: dict[bytes, int] = {}
        for raw, seq in msg.heads[: self.config.max_logs]:
            theirs[raw] = seq
        cfg = self.config
        query = ReadBatch(log, theirs, cfg.sync_batch_ops, cfg.sync_batch_bytes,
                          self.trust.serve_filter(now + self.wall_offset))
        req = self._submit(_Pending(_SERVE, peer, log, msg.sid), query, now)
        if req is not None:  # else dropped: the puller times out and retries
            out.append(req)
        out += self._start_due(now)
        return out

    def _on_batch(self, peer: NodeId, msg: SyncBatch, now: float) -> list[LogOutput]:
        key = (peer, msg.log)
        session = self._sessions.peek(key)
        if session is None or session.sid != msg.sid:
            return []  # late or unsolicited: ignored
        if msg.refused:
            return self._finish(key, now, ok=True)
        ops: list[tuple[Operation, bytes]] = []
        bad = False
        for data, payload in msg.ops:
            try:
                op = decode_operation(data)
                if op.header.log != msg.log:
                    raise InvalidOperation("operation of another log in a sync batch")
            except InvalidOperation:
                bad = True
                break
            ops.append((op, payload))
        ops, certs, denied = self.trust.check_batch(peer, msg.log, ops, msg.certs, now + self.wall_offset, now)
        if not ops:
            if bad:
                return [*self._violation(peer), *self._finish(key, now, ok=False)]
            return self._finish(key, now, ok=not denied)
        # with ``bad``, what precedes the invalid operation is still stored, then the session fails
        pending = _Pending(_BATCH, peer, msg.log, msg.sid, tuple(ops), msg.more, bad, denied)
        query = IngestOps(pending.ops, allow_gap=True, accept=self.acceptance(now), certs=certs)
        req = self._submit(pending, query, now)
        if req is None:
            return []  # the session fails at its timeout
        session.deadline = now + self.config.sync_timeout
        return [req]

    def _on_ingested(self, p: _Pending, results: list[object], failed: bool, now: float) -> list[LogOutput]:
        """A received batch was ingested: deliver what was stored, then ask again or end."""
        assert p.peer is not None
        key = (p.peer, p.log)
        out: list[LogOutput] = []
        progress = False
        invalid = p.bad
        ahead = False
        for (op, payload), res in zip(p.ops, results, strict=False):
            if isinstance(res, TimestampAhead):
                out += self._refused(p.peer, res)
                ahead = True  # not the sender's fault: retried with backoff
                break
            if isinstance(res, InvalidOperation):
                if isinstance(res, ForeignRealm):
                    self.ops_foreign_realm += 1
                invalid = True
                break
            if res is IngestResult.STORED:
                progress = True
                self.ops_stored += 1
                out.append(OperationStored(op, payload, p.peer))
            elif res is IngestResult.DUPLICATE:
                progress = True
            else:
                self.ops_refused += 1
        if invalid:
            out += self._violation(p.peer)
        session = self._sessions.peek(key)
        if session is None or session.sid != p.sid:
            return out  # the session ended meanwhile: nothing more to ask
        if invalid or failed or ahead or p.denied:
            return out + self._finish(key, now, ok=False)
        if p.more and progress:
            session.deadline = now + self.config.sync_timeout
            return out + self._ask(key, p.sid, now)
        return out + self._finish(key, now, ok=True)

    def _finish(self, key: _Key, now: float, *, ok: bool) -> list[LogOutput]:
        """End the session of ``key``, reschedule its pair, replay held live operations."""
        if self._sessions.pop(key) is None:
            return []
        pair = self._pairs.peek(key)
        if ok:
            self.sessions_completed += 1
        else:
            self.sessions_failed += 1
        if pair is not None:
            pair.reschedule(ok, now, self.config, self.rng.random())
        out = self._replay(key[0], key[1], now)
        out += self._start_due(now)
        return out

    def _end_pair(self, peer: NodeId, log: str, now: float) -> list[LogOutput]:
        self._pairs.pop((peer, log))
        out = self._finish((peer, log), now, ok=False) if (peer, log) in self._sessions else []
        return out + self._replay(peer, log, now)

    def _replay(self, peer: NodeId, log: str, now: float) -> list[LogOutput]:
        """Ingest what the gossip buffer held for ``(peer, log)``, in arrival order."""
        held = self.buffer.release(peer, log)
        return self._ingest_live(peer, log, tuple(held), now) if held else []

    def _ingest_live(
        self, peer: NodeId, log: str, ops: tuple[tuple[Operation, bytes], ...], now: float
    ) -> list[LogOutput]:
        query = IngestOps(ops, allow_gap=False, accept=self.acceptance(now), certs=self.trust.certs_for(ops))
        req = self._submit(_Pending(_LIVE, peer, log, ops=ops), query, now)
        if req is None:  # dropped: pull sync fetches them
            self._resync(peer, log, now)
            return []
        return [req]

    def _on_live_ingested(self, p: _Pending, results: list[object], now: float) -> list[LogOutput]:
        assert p.peer is not None
        out: list[LogOutput] = []
        gap = len(results) < len(p.ops)  # the store failed: fetch them by pull sync
        for (op, payload), res in zip(p.ops, results, strict=False):
            if isinstance(res, SeqGap):
                gap = True  # we are behind
            elif isinstance(res, InvalidOperation):
                out += self._refused(p.peer, res)
            elif res is IngestResult.STORED:
                self.ops_stored += 1
                out.append(OperationStored(op, payload, p.peer))
                out += self._push(op, payload, exclude=p.peer)
            elif res is IngestResult.REFUSED:
                self.ops_refused += 1
        if gap:
            self._resync(p.peer, p.log, now)
        return out

    def _resync(self, peer: NodeId, log: str, now: float) -> None:
        if peer in self._connected and log in self._interest:
            self._make_due(self._ensure_pair(peer, log, now), now)

    def _push(self, op: Operation, payload: bytes, exclude: NodeId | None) -> list[LogOutput]:
        peers = self._interest.get(op.header.log)
        if not peers:
            return []
        msg = self.trust.live(op, payload)
        if msg is None:
            return []  # no certificate for it: its peers pull it (with one) instead
        return [Send(p, msg) for p in sorted(peers, key=lambda n: n.raw) if p != exclude and p in self._connected]

    def _refused(self, peer: NodeId, exc: InvalidOperation) -> list[LogOutput]:
        """Count an operation from ``peer`` refused with ``exc``: a timestamp too far ahead is
        counted apart and is no violation; anything else is one."""
        if isinstance(exc, TimestampAhead):
            self.ops_ahead += 1
            return []
        if isinstance(exc, ForeignRealm):
            self.ops_foreign_realm += 1
        return self._violation(peer)

    def _violation(self, peer: NodeId) -> list[LogOutput]:
        self.invalid_ops += 1
        count = (self._violations.get(peer) or 0) + 1
        self._violations.set(peer, count, self._now)
        if count >= self.config.max_invalid_ops:
            self._violations.pop(peer)
            return [Disconnect(peer, "invalid_operations")]
        return []
