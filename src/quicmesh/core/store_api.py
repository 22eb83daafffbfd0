"""The store contract, on the core side: what log sync and the runtime expect of a log store.

:mod:`quicmesh.store` implements it (:class:`~quicmesh.store.MemoryStore`,
:class:`~quicmesh.store.SqliteStore`, with the capacity policy described in
:mod:`quicmesh.store.base`); the core only depends on this interface, so ``core`` never imports
``store``. Log sync does not call a store itself: it asks for reads and writes as outputs
(:mod:`quicmesh.core.log_effects`) that its driver runs against a :class:`Store`.

Every method is synchronous and short (one log, one bounded batch): the runtime calls an SQLite
store from one worker thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..identity import KeyPair, NodeId
from .oplog import Acceptance, LogHead, Operation, create_operation, encode_operation

__all__ = ["IngestResult", "LogKey", "Store", "StoreCounts", "StoredOp", "append"]

LogKey = tuple[NodeId, str]
"""``(author, log name)``."""


class IngestResult(enum.Enum):
    """What :meth:`Store.ingest` did with a valid operation."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    """Already stored, or older than what the log retains (nothing to do)."""
    REFUSED = "refused"
    """A capacity limit refused it (see the policy above); it may be offered again later."""


@dataclass(frozen=True, slots=True)
class StoredOp:
    """An operation with its payload and id."""

    op: Operation
    payload: bytes
    id: bytes

    @property
    def size(self) -> int:
        """Bytes it counts against the store's byte cap."""
        return len(encode_operation(self.op)) + len(self.payload)


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """What a store holds, and what its capacity policy removed or refused."""

    operations: int
    logs: int
    bytes: int
    evicted_logs: int = 0
    """Whole foreign logs evicted to make room for this node's own appends (since open)."""
    evicted_ops: int = 0
    """Operations of those logs."""
    quota_refused: int = 0
    """Foreign operations refused because their author was at its quota (since open)."""


@runtime_checkable
class Store(Protocol):
    """Replicated signed logs, capped (the capacity policy: :mod:`quicmesh.store.base`)."""

    def append_local(self, op: Operation, payload: bytes, *, accept: Acceptance | None = None) -> StoredOp:
        """Store this node's own new operation, checked with
        :func:`~quicmesh.core.oplog.validate_local` (as its peers will check it: decoded from
        its bytes, then validated against the log's head and ``accept``).

        Returns only once stored (durably, for a persistent store). Raises an
        :class:`~quicmesh.errors.InvalidOperation` subclass when invalid (nothing is stored),
        and :class:`~quicmesh.errors.LimitExceeded` when the caps leave no room even after
        evicting every foreign log.
        """
        ...

    def ingest(
        self, op: Operation, payload: bytes, *, allow_gap: bool = False, accept: Acceptance | None = None
    ) -> IngestResult:
        """Validate (against the log's head and ``accept``: realm and clock skew) and store a
        foreign operation.

        Raises an :class:`~quicmesh.errors.InvalidOperation` subclass when invalid (a different
        operation at a stored seq, a fork, raises :class:`~quicmesh.errors.BacklinkMismatch`).
        ``allow_gap``: accept a forward gap (the sender no longer retains the missing ones);
        older operations of the log are then dropped so the log stays one verified chain.
        An author at its quota (``max_ops_per_author`` / ``max_bytes_per_author``) is refused.
        """
        ...

    def get(self, author: NodeId, log: str, seq: int) -> StoredOp | None:
        """One operation, or ``None``."""
        ...

    def head(self, author: NodeId, log: str) -> LogHead | None:
        """The latest operation's seq and id, or ``None`` for an unknown log."""
        ...

    def low(self, author: NodeId, log: str) -> int | None:
        """The lowest retained seq, or ``None`` for an unknown log."""
        ...

    def heads(self, log: str | None = None) -> dict[LogKey, int]:
        """Latest seq per ``(author, log)`` (only logs named ``log`` when given)."""
        ...

    def iter_range(self, author: NodeId, log: str, from_seq: int, limit: int) -> list[StoredOp]:
        """Up to ``limit`` operations of one log with seq >= ``from_seq``, in seq order."""
        ...

    def drop_log(self, author: NodeId, log: str) -> int:
        """Remove a whole log; returns the number of operations removed."""
        ...

    def prune(self, author: NodeId, log: str, before_seq: int) -> int:
        """Drop the operations with seq < ``before_seq`` (never the latest); returns the count."""
        ...

    def set_retention(self, log: str, max_length: int) -> None:
        """Keep at most ``max_length`` operations per log named ``log`` (0: no limit)."""
        ...

    def is_local(self, author: NodeId, log: str) -> bool:
        """Whether the log was written here with :meth:`append_local`."""
        ...

    def counts(self) -> StoreCounts:
        """Operations, logs and bytes held."""
        ...

    def certificate(self, author: NodeId) -> bytes | None:
        """The member certificate kept for ``author`` (:meth:`put_certificate`), or ``None``."""
        ...

    def put_certificate(self, author: NodeId, data: bytes) -> None:
        """Keep ``data`` (an encoded certificate, verified by the caller) as ``author``'s, in
        place of the one held, so its operations can be served with it (after a restart too,
        for a persistent store). Ignored for an author without a stored log; dropped with the
        author's last log, so at most one is kept per stored author."""
        ...

    def close(self) -> None:
        """Release resources; the store must not be used afterwards."""
        ...


def append(
    store: Store,
    keypair: KeyPair,
    log: str,
    payload: bytes,
    now_us: int,
    *,
    prune: bool = False,
    realm: str = "default",
    accept: Acceptance | None = None,
) -> StoredOp:
    """Create, sign and durably store the next operation of ``keypair``'s log ``log`` of realm
    ``realm`` (checked against ``accept`` when given).

    Raises :class:`~quicmesh.errors.LimitExceeded` when the store has no room (nothing is
    written) and :class:`~quicmesh.errors.OperationTooLarge` for an oversized payload.
    """
    author = keypair.node_id
    head = store.head(author, log)
    prev = None if head is None else store.get(author, log, head.seq)
    op = create_operation(keypair, log, payload, None if prev is None else prev.op, now_us, prune, realm=realm)
    return store.append_local(op, payload, accept=accept)
