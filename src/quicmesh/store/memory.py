"""An in-memory log store with caps on operations, bytes and logs.

Theory of operation
-------------------
Logs are kept as ``(author, name) -> _Log``; each ``_Log`` holds a contiguous run of seqs
``lo..hi`` (a verified chain: every write is validated against the head, and a prune operation
or an allowed gap moves ``lo`` forward, dropping everything before). An index by log name
answers ``heads(name)`` without scanning every log, and the set of *prunable foreign* logs is
kept apart so that making room when full only looks at logs the policy may trim.

Every write first computes what it would free (prune flag, gap, retention) and what the caps
would then need; it mutates nothing until it knows the write can succeed, so a refused write
leaves the store exactly as it was. The capacity policy is described in
:mod:`quicmesh.store.base`.

Foreign authors (authors without a local log here) are accounted per author (operations and
bytes, against ``max_ops_per_author`` / ``max_bytes_per_author``), and their logs are kept in
least-recently-written order, so that a local append on a full store evicts the foreign logs
written least recently, whole, first.

The member certificate of each stored author (:meth:`MemoryStore.put_certificate`) is kept
while the author has a log here, and dropped with its last one.
"""

from __future__ import annotations

from ..bounded import ContainerRegistry
from ..config import StoreConfig
from ..core.oplog import Acceptance, LogHead, Operation, operation_id, validate, validate_local
from ..errors import BacklinkMismatch, LimitExceeded, SeqGap
from ..identity import NodeId
from .base import IngestResult, LogKey, StoreCounts, StoredOp
from .policy import StoreStats, victim_order

__all__ = ["MemoryStore"]


class _Log:
    __slots__ = ("hi", "lo", "local", "nbytes", "ops", "pruned")

    def __init__(self, lo: int, local: bool) -> None:
        self.ops: dict[int, StoredOp] = {}  # bounded: store-wide max_operations, enforced in _write()
        self.lo = lo
        self.hi = lo - 1
        self.local = local
        self.pruned = False
        self.nbytes = 0


class MemoryStore(StoreStats):
    """Replicated logs in memory. Not thread-safe: use it from one thread (the event loop)."""

    def __init__(
        self, config: StoreConfig | None = None, *, registry: ContainerRegistry | None = None, name: str = "store"
    ) -> None:
        self.config = config or StoreConfig()
        self._logs: dict[tuple[bytes, str], _Log] = {}  # bounded: max_logs, enforced in _write()
        self._by_name: dict[str, set[bytes]] = {}  # bounded: one entry per stored log name (<= max_logs)
        self._prunable: dict[tuple[bytes, str], None] = {}  # bounded: subset of _logs
        self._retention: dict[str, int] = {}  # bounded: one entry per log name the application configured
        self._usage: dict[bytes, list[int]] = {}  # bounded: one entry per stored author (<= max_logs)
        """Author -> [operations, bytes] held over all its logs."""
        self._local_authors: dict[bytes, int] = {}  # bounded: authors with a local log (<= max_logs)
        """Author -> its local logs (this node's own key, in practice)."""
        self._foreign: dict[tuple[bytes, str], None] = {}  # bounded: subset of _logs
        """The logs of foreign authors, least recently written first."""
        self._certs: dict[bytes, bytes] = {}  # bounded: one per author in _usage (<= max_logs)
        """Author -> its member certificate (encoded)."""
        self._nops = 0
        self._held_bytes = 0
        self._evicted_logs = 0
        self._evicted_ops = 0
        self._quota_refused = 0
        StoreStats.__init__(self, name, self.config, registry)

    # -- reads -----------------------------------------------------------------------------------

    def get(self, author: NodeId, log: str, seq: int) -> StoredOp | None:
        lg = self._logs.get((author.raw, log))
        return None if lg is None else lg.ops.get(seq)

    def head(self, author: NodeId, log: str) -> LogHead | None:
        lg = self._logs.get((author.raw, log))
        if lg is None:
            return None
        return LogHead(lg.hi, lg.ops[lg.hi].id)

    def low(self, author: NodeId, log: str) -> int | None:
        lg = self._logs.get((author.raw, log))
        return None if lg is None else lg.lo

    def heads(self, log: str | None = None) -> dict[LogKey, int]:
        if log is None:
            return {(NodeId(a), n): lg.hi for (a, n), lg in self._logs.items()}
        return {(NodeId(a), log): self._logs[(a, log)].hi for a in self._by_name.get(log, ())}

    def iter_range(self, author: NodeId, log: str, from_seq: int, limit: int) -> list[StoredOp]:
        lg = self._logs.get((author.raw, log))
        if lg is None or limit <= 0:
            return []
        start = max(from_seq, lg.lo)
        return [lg.ops[s] for s in range(start, min(lg.hi, start + limit - 1) + 1)]

    def is_local(self, author: NodeId, log: str) -> bool:
        lg = self._logs.get((author.raw, log))
        return lg is not None and lg.local

    def counts(self) -> StoreCounts:
        return StoreCounts(
            self._nops, len(self._logs), self._held_bytes, self._evicted_logs, self._evicted_ops, self._quota_refused
        )

    def certificate(self, author: NodeId) -> bytes | None:
        return self._certs.get(author.raw)

    def put_certificate(self, author: NodeId, data: bytes) -> None:
        if author.raw in self._usage:
            self._certs[author.raw] = bytes(data)

    # -- writes ----------------------------------------------------------------------------------

    def append_local(self, op: Operation, payload: bytes, *, accept: Acceptance | None = None) -> StoredOp:
        key = (op.header.author, op.header.log)
        lg = self._logs.get(key)
        oid = operation_id(op)
        if lg is not None and op.seq <= lg.hi:
            existing = lg.ops.get(op.seq)
            if existing is not None and existing.id == oid:
                return existing  # an idempotent retry
            raise SeqGap(f"seq {op.seq} is not after the log's latest {lg.hi}")
        head = None if lg is None else LogHead(lg.hi, lg.ops[lg.hi].id)
        validate_local(op, payload, head, self.config.max_operation_size, accept=accept)
        stored = StoredOp(op, payload, oid)
        if not self._write(key, lg, stored, local=True):  # pragma: no cover - _write raises for local
            raise LimitExceeded("store", 0)
        return stored

    def ingest(
        self, op: Operation, payload: bytes, *, allow_gap: bool = False, accept: Acceptance | None = None
    ) -> IngestResult:
        key = (op.header.author, op.header.log)
        lg = self._logs.get(key)
        oid = operation_id(op)
        max_size = self.config.max_operation_size
        if lg is not None and op.seq <= lg.hi:
            validate(op, payload, None, max_size, allow_gap=True, accept=accept)
            if op.seq < lg.lo or lg.ops[op.seq].id == oid:
                return IngestResult.DUPLICATE
            raise BacklinkMismatch(f"a different operation is stored at seq {op.seq} (fork)")
        head = None if lg is None else LogHead(lg.hi, lg.ops[lg.hi].id)
        validate(op, payload, head, max_size, allow_gap=allow_gap and not (lg is not None and lg.local), accept=accept)
        if self._write(key, lg, StoredOp(op, payload, oid), local=False):
            return IngestResult.STORED
        return IngestResult.REFUSED

    def drop_log(self, author: NodeId, log: str) -> int:
        key = (author.raw, log)
        lg = self._logs.pop(key, None)
        if lg is None:
            return 0
        n = len(lg.ops)
        self._nops -= n
        self._held_bytes -= lg.nbytes
        self._account(key[0], -n, -lg.nbytes)
        self._prunable.pop(key, None)
        self._foreign.pop(key, None)
        if lg.local:
            left = self._local_authors.pop(key[0], 1) - 1
            if left > 0:
                self._local_authors[key[0]] = left
        names = self._by_name.get(log)
        if names is not None:
            names.discard(author.raw)
            if not names:
                del self._by_name[log]
        return n

    def prune(self, author: NodeId, log: str, before_seq: int) -> int:
        lg = self._logs.get((author.raw, log))
        if lg is None:
            return 0
        return self._trim(lg, min(before_seq, lg.hi))

    def set_retention(self, log: str, max_length: int) -> None:
        if max_length < 0:
            raise ValueError("max_length must be >= 0")
        if max_length == 0:
            self._retention.pop(log, None)
        else:
            self._retention[log] = max_length
        for a in list(self._by_name.get(log, ())):
            lg = self._logs[(a, log)]
            self._mark_prunable((a, log), lg)
            if max_length:
                self._trim(lg, lg.hi - max_length + 1)

    def close(self) -> None:
        self._logs.clear()
        self._by_name.clear()
        self._prunable.clear()
        self._usage.clear()
        self._local_authors.clear()
        self._foreign.clear()
        self._certs.clear()
        self._nops = self._held_bytes = 0
        self._unregister()

    # -- internals -------------------------------------------------------------------------------

    def _retain(self, log: str) -> int:
        return self._retention.get(log, self.config.max_log_length)

    def _mark_prunable(self, key: tuple[bytes, str], lg: _Log) -> None:
        if not lg.local and (lg.pruned or self._retain(key[1]) > 0):
            self._prunable[key] = None
        else:
            self._prunable.pop(key, None)

    def _account(self, author: bytes, n: int, nbytes: int) -> None:
        u = self._usage.get(author)
        if u is None:
            u = self._usage[author] = [0, 0]
        u[0] += n
        u[1] += nbytes
        if u[0] <= 0:
            del self._usage[author]
            self._certs.pop(author, None)

    def _trim(self, lg: _Log, new_lo: int) -> int:
        n = b = 0
        author = b""
        while lg.lo < new_lo:
            s = lg.ops.pop(lg.lo)
            lg.lo += 1
            size = s.size
            lg.nbytes -= size
            self._held_bytes -= size
            self._nops -= 1
            n += 1
            b += size
            author = s.op.header.author
        if n:
            self._account(author, -n, -b)
        return n

    def _write(self, key: tuple[bytes, str], lg: _Log | None, s: StoredOp, *, local: bool) -> bool:
        """Store ``s`` (already validated) applying prune, gap, retention, quotas and the caps."""
        cfg = self.config
        seq = s.op.seq
        size = s.size
        author = key[0]
        new_lo = seq if (lg is None or s.op.prune or seq != lg.hi + 1) else lg.lo
        keep = self._retain(key[1])
        if keep > 0:
            new_lo = max(new_lo, seq - keep + 1)
        freed_n = freed_b = 0
        if lg is not None:
            for q in range(lg.lo, min(new_lo, lg.hi + 1)):
                freed_n += 1
                freed_b += lg.ops[q].size
        if not local and author not in self._local_authors:
            used = self._usage.get(author, (0, 0))
            if used[0] + 1 - freed_n > cfg.max_ops_per_author or used[1] + size - freed_b > cfg.max_bytes_per_author:
                self._quota_refused += 1
                return self._refuse_write(False, "store.max_ops_per_author", cfg.max_ops_per_author)
        need_logs = len(self._logs) + (lg is None) - cfg.max_logs
        if need_logs > 0 and not local:
            return self._refuse_write(local, "store.max_logs", cfg.max_logs)
        over_n = self._nops + 1 - freed_n - cfg.max_operations
        over_b = self._held_bytes + size - freed_b - cfg.max_bytes
        if over_n > 0 or over_b > 0 or need_logs > 0:
            victims = self._plan_victims(key, over_n, over_b) if need_logs <= 0 else None
            evict = None if victims is not None or not local else self._plan_evictions(key, over_n, over_b, need_logs)
            if victims is None and evict is None:
                limit, cap = (
                    ("store.max_logs", cfg.max_logs) if need_logs > 0
                    else ("store.max_operations", cfg.max_operations) if over_n > 0
                    else ("store.max_bytes", cfg.max_bytes)
                )
                return self._refuse_write(local, limit, cap)
            for vkey, count in victims or ():
                vlg = self._logs[vkey]
                self.note_eviction(self._trim(vlg, vlg.lo + count))
            for vkey in evict or ():
                n = self.drop_log(NodeId(vkey[0]), vkey[1])
                self._evicted_logs += 1
                self._evicted_ops += n
                self.note_eviction(n)
        # commit
        if lg is None:
            lg = _Log(seq, local)
            self._logs[key] = lg
            self._by_name.setdefault(key[1], set()).add(key[0])
            if local:
                self._became_local(author)
        elif local and not lg.local:
            lg.local = True
            self._became_local(author)
        self._trim(lg, min(new_lo, lg.hi + 1))
        if lg.lo > seq or not lg.ops:
            lg.lo = seq
        lg.ops[seq] = s
        lg.hi = seq
        lg.nbytes += size
        if s.op.prune:
            lg.pruned = True
        self._nops += 1
        self._held_bytes += size
        self._account(author, 1, size)
        if author not in self._local_authors:
            self._foreign.pop(key, None)
            self._foreign[key] = None  # most recently written last
        self._mark_prunable(key, lg)
        self._note_size(self._nops)
        return True

    def _became_local(self, author: bytes) -> None:
        """One more local log of ``author``; its logs are no longer foreign (never evicted)."""
        n = self._local_authors.get(author, 0)
        self._local_authors[author] = n + 1
        if n == 0:
            for k in [k for k in self._foreign if k[0] == author]:
                del self._foreign[k]

    def _plan_evictions(
        self, exclude: tuple[bytes, str], over_n: int, over_b: int, need_logs: int
    ) -> list[tuple[bytes, str]] | None:
        """Which whole foreign logs, least recently written first, to evict to free ``over_n``
        operations, ``over_b`` bytes and ``need_logs`` logs; ``None`` when all would not do."""
        plan: list[tuple[bytes, str]] = []
        for k in self._foreign:
            if over_n <= 0 and over_b <= 0 and need_logs <= 0:
                break
            if k == exclude:
                continue
            lg = self._logs[k]
            plan.append(k)
            over_n -= len(lg.ops)
            over_b -= lg.nbytes
            need_logs -= 1
        if over_n > 0 or over_b > 0 or need_logs > 0:
            return None
        return plan

    def _plan_victims(
        self, exclude: tuple[bytes, str], over_n: int, over_b: int
    ) -> list[tuple[tuple[bytes, str], int]] | None:
        """Which oldest operations of prunable foreign logs to drop to free ``over_n`` operations
        and ``over_b`` bytes; ``None`` when even all of them would not suffice."""
        cursors: list[tuple[tuple[bytes, str], _Log, int]] = [
            (k, self._logs[k], self._logs[k].lo) for k in self._prunable if k != exclude
        ]
        plan: dict[tuple[bytes, str], int] = {}
        for idx in victim_order(
            [(lg.ops[c].op.timestamp if c < lg.hi else None) for _, lg, c in cursors],
            lambda i, c: cursors[i][1].ops[c].op.timestamp if c < cursors[i][1].hi else None,
            [c for _, _, c in cursors],
        ):
            if over_n <= 0 and over_b <= 0:
                break
            k, lg, _ = cursors[idx[0]]
            over_n -= 1
            over_b -= lg.ops[idx[1]].size
            plan[k] = plan.get(k, 0) + 1
        if over_n > 0 or over_b > 0:
            return None
        return list(plan.items())
