"""Outputs of :class:`~quicmesh.core.logsync.LogSync`: what log sync asks its driver to do.

Besides the network effects of :mod:`quicmesh.core.effects` (:class:`Send`,
:class:`Disconnect`), log sync asks for store work as plain values:

* :class:`StoreRead` / :class:`StoreWrite` carry a ``req_id`` and a *query*
  (:class:`ReadHeads`, :class:`ReadBatch`, :class:`IngestOps`, :class:`AppendLocal`). The driver
  runs ``query.run(store)`` wherever it likes (the runtime: on its one store worker thread, in
  FIFO order; a test or the simulator: inline) and hands the result, or the exception it raised,
  back with ``LogSync.store_done(req_id, result, now)``. Requests must be run in the order they
  were output (FIFO), and each exactly once.
* :class:`OperationStored`: an operation was newly stored, for the local watchers.
* :class:`Appended`: the result of ``LogSync.append`` (the stored operation, or the error), so
  the driver can answer the application.

How log sync uses them: a pull session reads our heads, then sends its request; a received batch
is decoded by log sync and ingested by one write, after which the session asks again or ends;
serving a request is one read whose result is sent back; live operations (and the held ones
replayed) are one write per arrival. A session stays open while its store work is in flight; if
it times out meanwhile, the late result is still reported (stored operations are delivered) but
nothing more is sent.

Store requests in flight are capped (``LogSync(max_requests=...)``: the map
``logsync.store_requests``, overflow ``REJECT``, rejections in metrics; each drop also counts in
``LogSync.requests_dropped``). When full: a served request is dropped (the puller times out and
retries); a session's read or a batch's ingest is not issued (the session fails at its timeout,
retried with backoff); a live operation is dropped and its pair made due (pull sync fetches it);
``LogSync.append`` raises :class:`~quicmesh.errors.LimitExceeded` (nothing written).

A query's ``run`` is the only code here that touches a store, and only when a driver calls it:
the state machine itself never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidOperation
from ..identity import KeyPair, NodeId
from .effects import Disconnect, Send
from .log_trust import CertFilter, newer_certificate
from .oplog import MAX_TIMESTAMP, Acceptance, Operation, create_operation, encode_operation
from .store_api import IngestResult, LogKey, Store, StoredOp

__all__ = [
    "AppendLocal",
    "Appended",
    "BatchRead",
    "IngestOps",
    "LogOutput",
    "OperationStored",
    "ReadBatch",
    "ReadHeads",
    "StoreRead",
    "StoreRequest",
    "StoreWrite",
    "timestamp_for",
]


@dataclass(frozen=True, slots=True)
class OperationStored:
    """An operation was newly stored: hand it to the local watchers of ``op.log``.

    ``source`` is the peer it came from, ``None`` when appended on this node.
    """

    op: Operation
    payload: bytes
    source: NodeId | None


@dataclass(frozen=True, slots=True)
class Appended:
    """The outcome of ``LogSync.append`` number ``req_id``: ``stored`` (durable for a
    persistent store) or ``error`` (e.g. :class:`~quicmesh.errors.LimitExceeded`)."""

    req_id: int
    stored: StoredOp | None
    error: BaseException | None = None


# -- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadHeads:
    """Latest seq per ``(author, log)`` of the logs named ``log``."""

    log: str

    def run(self, store: Store) -> dict[LogKey, int]:
        """Run against ``store``."""
        return store.heads(self.log)


@dataclass(frozen=True, slots=True)
class BatchRead:
    """The result of :class:`ReadBatch`: encoded ``(operation, payload)`` pairs, whether the
    reader has more to give, and the certificate of each author in ``ops`` (authority realm)."""

    ops: list[tuple[bytes, bytes]]
    more: bool
    certs: list[bytes] = field(default_factory=list)  # bounded: one per author in ops


@dataclass(frozen=True, slots=True)
class ReadBatch:
    """What a peer with heads ``theirs`` (author id -> latest seq) misses of the logs named
    ``log``: at most ``max_ops`` operations and ``max_bytes`` bytes (at least one operation),
    authors in id order, each author's in seq order. With ``certs`` (an authority realm) each
    author's certificate is attached (its bytes count) and the authors whose certificate
    ``certs`` refuses are left out."""

    log: str
    theirs: dict[bytes, int]
    max_ops: int
    max_bytes: int
    certs: CertFilter | None = None

    def run(self, store: Store) -> BatchRead:
        """Run against ``store``."""
        out = BatchRead([], False)
        ops = out.ops
        nbytes = 0
        mine = sorted(store.heads(self.log).items(), key=lambda kv: kv[0][0].raw)
        for (author, _), hi in mine:
            start = self.theirs.get(author.raw, -1) + 1
            cert = b""
            if self.certs is not None and start <= hi:
                cert = self.certs.cert(author.raw, store.certificate(author), self.log) or b""
                if not cert:
                    continue  # its operations would be refused: not served
            while start <= hi:
                if len(ops) >= self.max_ops:
                    return BatchRead(ops, True, out.certs)
                batch = store.iter_range(author, self.log, start, min(16, self.max_ops - len(ops)))
                if not batch:
                    break
                for s in batch:
                    data = encode_operation(s.op)
                    size = len(data) + len(s.payload) + len(cert)
                    if ops and nbytes + size > self.max_bytes:
                        return BatchRead(ops, True, out.certs)
                    ops.append((data, s.payload))
                    nbytes += size
                    start = s.op.seq + 1
                    if cert:
                        out.certs.append(cert)
                        cert = b""  # once per author
        return out


@dataclass(frozen=True, slots=True)
class IngestOps:
    """Validate and store foreign operations in order.

    The result has one entry per operation tried: its :class:`IngestResult`, or the
    :class:`~quicmesh.errors.InvalidOperation` it raised. With ``allow_gap`` (a sync batch) the
    first invalid operation ends the batch; without (live operations) every one is tried.
    ``accept``: the receiver's realm and latest acceptable timestamp (``None``: unchecked).
    ``certs``: verified certificates of the authors (id -> encoded), kept by the store with the
    first operation of each author stored (a newer one replaces the one held).
    """

    ops: tuple[tuple[Operation, bytes], ...]
    allow_gap: bool
    accept: Acceptance | None = None
    certs: dict[bytes, bytes] | None = None

    def run(self, store: Store) -> list[IngestResult | InvalidOperation]:
        """Run against ``store``."""
        out: list[IngestResult | InvalidOperation] = []
        stored: dict[bytes, NodeId] = {}  # bounded: authors of self.ops
        for op, payload in self.ops:
            try:
                res = store.ingest(op, payload, allow_gap=self.allow_gap, accept=self.accept)
            except InvalidOperation as exc:
                out.append(exc)
                if self.allow_gap:
                    break
                continue
            out.append(res)
            if res is IngestResult.STORED:
                stored[op.header.author] = op.author
        for raw, author in stored.items():
            cert = self.certs.get(raw) if self.certs else None
            if cert is not None and newer_certificate(store.certificate(author), cert):
                store.put_certificate(author, cert)
        return out


_UNCHECKED = Acceptance("", MAX_TIMESTAMP)
"""No realm, no clock: for a bare :class:`AppendLocal` (a node always passes its own)."""


@dataclass(frozen=True, slots=True)
class AppendLocal:
    """Sign and durably store the next operation of ``keypair``'s log ``log`` of realm
    ``accept.realm``, checked as the peers will check it (``Store.append_local`` runs
    :func:`~quicmesh.core.oplog.validate_local` with ``accept``).

    Its timestamp is the greatest of ``now_us``, ``min_us`` and the previous operation's, so
    this node's later writes win over its earlier ones, except that a floor (``min_us``, the
    previous timestamp) beyond ``accept.not_after`` (the wall clock plus the allowed skew) is
    ignored: a floor that far ahead comes from a hostile or broken clock, and following it would
    make an operation every peer refuses. ``now_us`` itself is never adjusted: a writer whose
    clock runs beyond the skew gets :class:`~quicmesh.errors.TimestampAhead`. Raises
    :class:`~quicmesh.errors.LimitExceeded` when the store has no room (nothing is written) and
    :class:`~quicmesh.errors.InvalidOperation` subclasses when the operation is invalid.
    """

    keypair: KeyPair
    log: str
    payload: bytes
    now_us: int
    min_us: int = 0
    prune: bool = False
    accept: Acceptance = _UNCHECKED

    def run(self, store: Store) -> StoredOp:
        """Run against ``store``."""
        me = self.keypair.node_id
        head = store.head(me, self.log)
        prev = None if head is None else store.get(me, self.log, head.seq)
        prev_op = None if prev is None else prev.op
        ts = timestamp_for(self.now_us, (self.min_us, 0 if prev_op is None else prev_op.timestamp), self.accept)
        op = create_operation(self.keypair, self.log, self.payload, prev_op, ts, self.prune, realm=self.accept.realm)
        return store.append_local(op, self.payload, accept=self.accept)


def timestamp_for(now_us: int, floors: tuple[int, ...], accept: Acceptance) -> int:
    """A writer's timestamp: ``now_us`` raised to the floors that are not beyond
    ``accept.not_after`` (see :class:`AppendLocal`)."""
    return max(now_us, *(f for f in floors if f <= accept.not_after), 0)


ReadQuery = ReadHeads | ReadBatch
WriteQuery = IngestOps | AppendLocal


@dataclass(frozen=True, slots=True)
class StoreRead:
    """Run ``query`` (it only reads) and report its result with ``LogSync.store_done``."""

    req_id: int
    query: ReadQuery


@dataclass(frozen=True, slots=True)
class StoreWrite:
    """Run ``query`` (it writes) and report its result with ``LogSync.store_done``."""

    req_id: int
    query: WriteQuery


StoreRequest = StoreRead | StoreWrite
LogOutput = Send | Disconnect | OperationStored | Appended | StoreRead | StoreWrite
"""What :class:`~quicmesh.core.logsync.LogSync` asks its driver to do."""
