"""A persistent log store on SQLite (standard library ``sqlite3``), same contract and policy as
:class:`~quicmesh.store.memory.MemoryStore`.

Theory of operation
-------------------
Three tables: ``logs`` (one row per ``(author, name)``: ``lo``/``hi`` seqs, head id, counts,
the local and prunable flags), ``ops`` (one row per operation: canonical header bytes,
payload, id, timestamp, size) and ``certs`` (one member certificate per stored author, deleted
with the author's last log; added by this release to files of the same schema version).
Store-wide totals (operations, bytes, logs) are read once at open
and then kept in memory, updated after each commit.

Durability: WAL journal. A local append commits with ``synchronous=FULL`` (the WAL is fsynced
before :meth:`append_local` returns, so an acknowledged append survives ``kill -9`` and power
loss); foreign ingests commit with ``synchronous=NORMAL`` (they survive a process crash and can
be fetched again from peers after a power loss). Each write is one ``BEGIN IMMEDIATE``
transaction that computes what it frees and whether the caps allow it before changing anything,
and rolls back when refused.

Foreign authors (without a local log here) are held to ``max_ops_per_author`` /
``max_bytes_per_author`` (summed over their rows of ``logs``); every write stamps its log's
``touched`` with a store-wide counter, so that a local append on a full store evicts the foreign
logs written least recently, whole, first.

Schema version: ``PRAGMA user_version`` is :data:`SCHEMA_VERSION` (the operation header version,
:data:`~quicmesh.core.oplog.OP_VERSION`). A file of an earlier release that holds operations is
refused at open with :class:`~quicmesh.errors.UnknownVersion` (its operations cannot be read
nor replicated by this release); an empty one is upgraded in place.

Every public method takes one lock and touches one log or one bounded batch; the runtime calls
the store from one worker thread only (:mod:`quicmesh.runtime.store_worker`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from ..bounded import ContainerRegistry
from ..config import StoreConfig
from ..core.oplog import (
    OP_VERSION,
    Acceptance,
    LogHead,
    Operation,
    decode_operation,
    encode_operation,
    operation_id,
    validate,
    validate_local,
)
from ..errors import BacklinkMismatch, LimitExceeded, SeqGap, UnknownVersion
from ..identity import NodeId
from .base import IngestResult, LogKey, StoreCounts, StoredOp
from .policy import StoreStats

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

SCHEMA_VERSION = OP_VERSION
"""``PRAGMA user_version`` of a store file this release writes."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs(
    author BLOB NOT NULL, name TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    head_id BLOB NOT NULL, local INTEGER NOT NULL, pruned INTEGER NOT NULL,
    prunable INTEGER NOT NULL, nops INTEGER NOT NULL, nbytes INTEGER NOT NULL,
    touched INTEGER NOT NULL,
    PRIMARY KEY(author, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS logs_by_name ON logs(name);
CREATE INDEX IF NOT EXISTS logs_by_touched ON logs(touched);
CREATE TABLE IF NOT EXISTS ops(
    author BLOB NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL, id BLOB NOT NULL,
    ts INTEGER NOT NULL, size INTEGER NOT NULL, op BLOB NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY(author, name, seq));
CREATE TABLE IF NOT EXISTS retention(name TEXT PRIMARY KEY, max_length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS certs(author BLOB PRIMARY KEY, cert BLOB NOT NULL) WITHOUT ROWID;
DELETE FROM certs WHERE author NOT IN (SELECT author FROM logs);
"""

_Key = tuple[bytes, str]


class _Row:
    __slots__ = ("hi", "lo", "local", "nbytes", "nops", "pruned")

    def __init__(self, r: Any) -> None:
        self.lo, self.hi, self.local, self.pruned, self.nops, self.nbytes = (
            int(r[0]),
            int(r[1]),
            bool(r[2]),
            bool(r[3]),
            int(r[4]),
            int(r[5]),
        )


class SqliteStore(StoreStats):
    """Replicated logs in an SQLite file at ``path`` (created when missing)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: StoreConfig | None = None,
        *,
        registry: ContainerRegistry | None = None,
        name: str = "store",
    ) -> None:
        self.config = config or StoreConfig()
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._sync_mode = ""
        self._set_sync("FULL")
        self._check_version()
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._retention: dict[str, int] = {  # bounded: one entry per log name the application configured
            str(n): int(m) for n, m in self._db.execute("SELECT name, max_length FROM retention")
        }
        # the default retention may differ from the last run: recompute which logs are prunable
        self._db.execute(
            "UPDATE logs SET prunable = (local = 0 AND (pruned = 1 OR ? > 0"
            " OR name IN (SELECT name FROM retention WHERE max_length > 0)))",
            (self.config.max_log_length,),
        )
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nops),0), COALESCE(SUM(nbytes),0) FROM logs").fetchone()
        self._nlogs, self._nops, self._held_bytes = int(row[0]), int(row[1]), int(row[2])
        self._touched = int(self._db.execute("SELECT COALESCE(MAX(touched),0) FROM logs").fetchone()[0])
        self._evicted_logs = self._evicted_ops = self._quota_refused = 0
        StoreStats.__init__(self, name, self.config, registry)
        self._note_size(self._nops)

    # -- reads -----------------------------------------------------------------------------------

    def _row(self, key: _Key) -> _Row | None:
        r = self._db.execute(
            "SELECT lo, hi, local, pruned, nops, nbytes FROM logs WHERE author=? AND name=?", key
        ).fetchone()
        return None if r is None else _Row(r)

    def get(self, author: NodeId, log: str, seq: int) -> StoredOp | None:
        with self._lock:
            r = self._db.execute(
                "SELECT op, payload, id FROM ops WHERE author=? AND name=? AND seq=?", (author.raw, log, seq)
            ).fetchone()
        return None if r is None else StoredOp(decode_operation(r[0]), bytes(r[1]), bytes(r[2]))

    def head(self, author: NodeId, log: str) -> LogHead | None:
        with self._lock:
            r = self._db.execute("SELECT hi, head_id FROM logs WHERE author=? AND name=?", (author.raw, log)).fetchone()
        return None if r is None else LogHead(int(r[0]), bytes(r[1]))

    def low(self, author: NodeId, log: str) -> int | None:
        with self._lock:
            r = self._db.execute("SELECT lo FROM logs WHERE author=? AND name=?", (author.raw, log)).fetchone()
        return None if r is None else int(r[0])

    def heads(self, log: str | None = None) -> dict[LogKey, int]:
        with self._lock:
            if log is None:
                rows = self._db.execute("SELECT author, name, hi FROM logs").fetchall()
            else:
                rows = self._db.execute("SELECT author, name, hi FROM logs WHERE name=?", (log,)).fetchall()
        return {(NodeId(bytes(a)), str(n)): int(h) for a, n, h in rows}

    def iter_range(self, author: NodeId, log: str, from_seq: int, limit: int) -> list[StoredOp]:
        if limit <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT op, payload, id FROM ops WHERE author=? AND name=? AND seq>=? ORDER BY seq LIMIT ?",
                (author.raw, log, max(0, from_seq), limit),
            ).fetchall()
        return [StoredOp(decode_operation(o), bytes(p), bytes(i)) for o, p, i in rows]

    def is_local(self, author: NodeId, log: str) -> bool:
        with self._lock:
            r = self._row((author.raw, log))
        return r is not None and r.local

    def counts(self) -> StoreCounts:
        return StoreCounts(
            self._nops, self._nlogs, self._held_bytes, self._evicted_logs, self._evicted_ops, self._quota_refused
        )


    def certificate(self, author: NodeId) -> bytes | None:
        with self._lock:
            r = self._db.execute("SELECT cert FROM certs WHERE author=?", (author.raw,)).fetchone()
        return None if r is None else bytes(r[0])

    # -- writes ----------------------------------------------------------------------------------

    def put_certificate(self, author: NodeId, data: bytes) -> None:
        with self._lock:
            self._set_sync("NORMAL")
            self._db.execute(
                "INSERT OR REPLACE INTO certs SELECT ?, ? WHERE EXISTS (SELECT 1 FROM logs WHERE author=?)",
                (author.raw, bytes(data), author.raw),
            )

    def append_local(self, op: Operation, payload: bytes, *, accept: Acceptance | None = None) -> StoredOp:
        key = (op.header.author, op.header.log)
        oid = operation_id(op)
        with self._lock:
            row = self._row(key)
            if row is not None and op.seq <= row.hi:
                r = self._db.execute(
                    "SELECT id FROM ops WHERE author=? AND name=? AND seq=?", (*key, op.seq)
                ).fetchone()
                if r is not None and bytes(r[0]) == oid:
                    return StoredOp(op, payload, oid)
                raise SeqGap(f"seq {op.seq} is not after the log's latest {row.hi}")
            validate_local(op, payload, self._head(key, row), self.config.max_operation_size, accept=accept)
            stored = StoredOp(op, payload, oid)
            if not self._write(key, row, stored, local=True):  # pragma: no cover - _write raises for local
                raise LimitExceeded("store", 0)
            return stored

    def ingest(
        self, op: Operation, payload: bytes, *, allow_gap: bool = False, accept: Acceptance | None = None
    ) -> IngestResult:
        key = (op.header.author, op.header.log)
        oid = operation_id(op)
        max_size = self.config.max_operation_size
        with self._lock:
            row = self._row(key)
            if row is not None and op.seq <= row.hi:
                validate(op, payload, None, max_size, allow_gap=True, accept=accept)
                if op.seq < row.lo:
                    return IngestResult.DUPLICATE
                r = self._db.execute(
                    "SELECT id FROM ops WHERE author=? AND name=? AND seq=?", (*key, op.seq)
                ).fetchone()
                if r is not None and bytes(r[0]) == oid:
                    return IngestResult.DUPLICATE
                raise BacklinkMismatch(f"a different operation is stored at seq {op.seq} (fork)")
            gap = allow_gap and not (row and row.local)
            validate(op, payload, self._head(key, row), max_size, allow_gap=gap, accept=accept)
            ok = self._write(key, row, StoredOp(op, payload, oid), local=False)
        return IngestResult.STORED if ok else IngestResult.REFUSED

    def drop_log(self, author: NodeId, log: str) -> int:
        key = (author.raw, log)
        with self._lock:
            row = self._row(key)
            if row is None:
                return 0
            self._set_sync("FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM ops WHERE author=? AND name=?", key)
                self._db.execute("DELETE FROM logs WHERE author=? AND name=?", key)
                self._drop_cert(key[0])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._nops -= row.nops
            self._held_bytes -= row.nbytes
            self._nlogs -= 1
            return row.nops

    def prune(self, author: NodeId, log: str, before_seq: int) -> int:
        key = (author.raw, log)
        with self._lock:
            row = self._row(key)
            if row is None:
                return 0
            self._set_sync("FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n, b = self._trim(key, row.lo, min(before_seq, row.hi))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._nops -= n
            self._held_bytes -= b
            return n

    def set_retention(self, log: str, max_length: int) -> None:
        if max_length < 0:
            raise ValueError("max_length must be >= 0")
        with self._lock:
            self._set_sync("FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if max_length == 0:
                    self._retention.pop(log, None)
                    self._db.execute("DELETE FROM retention WHERE name=?", (log,))
                else:
                    self._retention[log] = max_length
                    self._db.execute("INSERT OR REPLACE INTO retention VALUES (?, ?)", (log, max_length))
                keep = self._retain(log)
                self._db.execute(
                    "UPDATE logs SET prunable = (local = 0 AND (pruned = 1 OR ? > 0)) WHERE name=?", (keep, log)
                )
                freed_n = freed_b = 0
                if keep:
                    rows = self._db.execute("SELECT author, lo, hi FROM logs WHERE name=?", (log,)).fetchall()
                    for a, lo, hi in rows:
                        n, b = self._trim((bytes(a), log), int(lo), int(hi) - keep + 1)
                        freed_n += n
                        freed_b += b
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._nops -= freed_n
            self._held_bytes -= freed_b

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            finally:
                self._unregister()

    # -- internals -------------------------------------------------------------------------------

    def _check_version(self) -> None:
        """Refuse a file of an earlier release holding operations; drop its empty tables."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        tables = {str(r[0]) for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == SCHEMA_VERSION or "logs" not in tables:
            return
        if version > SCHEMA_VERSION or self._db.execute("SELECT 1 FROM ops LIMIT 1").fetchone() is not None:
            self._db.close()
            raise UnknownVersion(
                f"log store {self.path!r} was written by another release (store version {version}, this"
                f" release reads version {SCHEMA_VERSION}: operations of header version {OP_VERSION});"
                " move the file away to start with an empty store"
            )
        self._db.executescript("DROP TABLE IF EXISTS ops; DROP TABLE IF EXISTS logs;")

    def _drop_cert(self, author: bytes) -> None:
        """Delete ``author``'s certificate when it has no log left. Inside a transaction."""
        self._db.execute(
            "DELETE FROM certs WHERE author=? AND NOT EXISTS (SELECT 1 FROM logs WHERE author=?)", (author, author)
        )

    def _set_sync(self, mode: str) -> None:
        if mode != self._sync_mode:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    def _head(self, key: _Key, row: _Row | None) -> LogHead | None:
        if row is None:
            return None
        r = self._db.execute("SELECT head_id FROM logs WHERE author=? AND name=?", key).fetchone()
        return LogHead(row.hi, bytes(r[0]))

    def _retain(self, log: str) -> int:
        return self._retention.get(log, self.config.max_log_length)

    def _trim(self, key: _Key, lo: int, new_lo: int) -> tuple[int, int]:
        """Delete seqs ``lo <= seq < new_lo`` of one log; update its row. Inside a transaction."""
        if new_lo <= lo:
            return 0, 0
        r = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size),0) FROM ops WHERE author=? AND name=? AND seq<?", (*key, new_lo)
        ).fetchone()
        n, b = int(r[0]), int(r[1])
        self._db.execute("DELETE FROM ops WHERE author=? AND name=? AND seq<?", (*key, new_lo))
        self._db.execute(
            "UPDATE logs SET lo=?, nops=nops-?, nbytes=nbytes-? WHERE author=? AND name=?", (new_lo, n, b, *key)
        )
        return n, b

    def _write(self, key: _Key, row: _Row | None, s: StoredOp, *, local: bool) -> bool:
        cfg = self.config
        seq = s.op.seq
        data = encode_operation(s.op)
        size = len(data) + len(s.payload)
        new_lo = seq if (row is None or s.op.prune or seq != row.hi + 1) else row.lo
        keep = self._retain(key[1])
        if keep > 0:
            new_lo = max(new_lo, seq - keep + 1)
        need_logs = self._nlogs + (row is None) - cfg.max_logs
        if need_logs > 0 and not local:
            return self._refuse_write(local, "store.max_logs", cfg.max_logs)
        self._set_sync("FULL" if local else "NORMAL")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            freed_n = freed_b = evicted_n = evicted_b = evicted_logs = 0
            if row is not None:
                r = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size),0) FROM ops WHERE author=? AND name=? AND seq<?",
                    (*key, min(new_lo, row.hi + 1)),
                ).fetchone()
                freed_n, freed_b = int(r[0]), int(r[1])
            r = db.execute(
                "SELECT COALESCE(MAX(local),0), COALESCE(SUM(nops),0), COALESCE(SUM(nbytes),0)"
                " FROM logs WHERE author=?",
                (key[0],),
            ).fetchone()
            author_local = bool(r[0])
            ops_after, bytes_after = int(r[1]) + 1 - freed_n, int(r[2]) + size - freed_b
            if not local and not author_local and (
                ops_after > cfg.max_ops_per_author or bytes_after > cfg.max_bytes_per_author
            ):
                db.execute("ROLLBACK")
                self._quota_refused += 1
                return self._refuse_write(False, "store.max_ops_per_author", cfg.max_ops_per_author)
            over_n = self._nops + 1 - freed_n - cfg.max_operations
            over_b = self._held_bytes + size - freed_b - cfg.max_bytes
            if over_n > 0 or over_b > 0 or need_logs > 0:
                trimmable = need_logs <= 0
                if trimmable:
                    r = db.execute(
                        "SELECT COALESCE(SUM(l.nops-1),0), COALESCE(SUM(l.nbytes-h.size),0) FROM logs l"
                        " JOIN ops h ON h.author=l.author AND h.name=l.name AND h.seq=l.hi"
                        " WHERE l.prunable=1 AND NOT (l.author=? AND l.name=?)",
                        key,
                    ).fetchone()
                    trimmable = over_n <= int(r[0]) and over_b <= int(r[1])
                evict: list[tuple[_Key, int, int]] | None = None
                if not trimmable and local:
                    evict = self._plan_evictions(key, over_n, over_b, need_logs)
                if not trimmable and evict is None:
                    db.execute("ROLLBACK")
                    limit, cap = (
                        ("store.max_logs", cfg.max_logs) if need_logs > 0
                        else ("store.max_operations", cfg.max_operations) if over_n > 0
                        else ("store.max_bytes", cfg.max_bytes)
                    )
                    return self._refuse_write(local, limit, cap)
                for vkey, n, b in evict or ():
                    db.execute("DELETE FROM ops WHERE author=? AND name=?", vkey)
                    db.execute("DELETE FROM logs WHERE author=? AND name=?", vkey)
                    self._drop_cert(vkey[0])
                    evicted_logs += 1
                    evicted_n += n
                    evicted_b += b
                while evict is None and (over_n > 0 or over_b > 0):
                    v = db.execute(
                        "SELECT o.author, o.name, o.seq, o.size FROM logs l JOIN ops o"
                        " ON o.author=l.author AND o.name=l.name AND o.seq=l.lo"
                        " WHERE l.prunable=1 AND l.lo<l.hi AND NOT (l.author=? AND l.name=?)"
                        " ORDER BY o.ts, o.author, o.name LIMIT 1",
                        key,
                    ).fetchone()
                    vkey = (bytes(v[0]), str(v[1]))
                    n, b = self._trim(vkey, int(v[2]), int(v[2]) + 1)
                    evicted_n += n
                    evicted_b += b
                    over_n -= n
                    over_b -= b
            trimmed_n = trimmed_b = 0
            new_log = row is None
            self._touched += 1
            if row is None:
                db.execute(
                    "INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0, ?)",
                    (*key, seq, seq, s.id, int(local), self._touched),
                )
                is_local, pruned = local, False
            else:
                trimmed_n, trimmed_b = self._trim(key, row.lo, min(new_lo, row.hi + 1))
                is_local, pruned = row.local or local, row.pruned
            pruned = pruned or s.op.prune
            prunable = (not is_local) and (pruned or keep > 0)
            db.execute(
                "INSERT INTO ops VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, seq, s.id, s.op.timestamp, size, data, s.payload),
            )
            db.execute(
                "UPDATE logs SET lo=CASE WHEN nops=0 OR lo>? THEN ? ELSE lo END, hi=?, head_id=?, local=?, pruned=?,"
                " prunable=?, nops=nops+1, nbytes=nbytes+?, touched=? WHERE author=? AND name=?",
                (seq, seq, seq, s.id, int(is_local), int(pruned), int(prunable), size, self._touched, *key),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._nops += 1 - trimmed_n - evicted_n
        self._held_bytes += size - trimmed_b - evicted_b
        self._nlogs += int(new_log) - evicted_logs
        self._evicted_logs += evicted_logs
        self._evicted_ops += evicted_n if evicted_logs else 0
        self.note_eviction(evicted_n)
        self._note_size(self._nops)
        return True

    def _plan_evictions(
        self, exclude: _Key, over_n: int, over_b: int, need_logs: int
    ) -> list[tuple[_Key, int, int]] | None:
        """Whole foreign logs (authors without a local log), least recently written first, to
        free ``over_n`` operations, ``over_b`` bytes and ``need_logs`` logs; ``None`` when all of
        them would not do. Inside a transaction."""
        plan: list[tuple[_Key, int, int]] = []
        cur = self._db.execute(
            "SELECT author, name, nops, nbytes FROM logs WHERE author NOT IN (SELECT author FROM logs WHERE local=1)"
            " ORDER BY touched"
        )
        for a, n, nops, nbytes in cur:
            if over_n <= 0 and over_b <= 0 and need_logs <= 0:
                break
            k = (bytes(a), str(n))
            if k == exclude:
                continue
            plan.append((k, int(nops), int(nbytes)))
            over_n -= int(nops)
            over_b -= int(nbytes)
            need_logs -= 1
        cur.close()
        if over_n > 0 or over_b > 0 or need_logs > 0:
            return None
        return plan
