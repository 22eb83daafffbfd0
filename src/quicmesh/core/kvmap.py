"""A last-writer-wins map replicated over one log name.

Theory of operation
-------------------
Every node writes its own log named ``log`` (the logs are replicated by
:class:`~quicmesh.core.logsync.LogSync`); each operation's payload is one entry: set ``key`` to
``value``, or delete ``key`` (a *tombstone*). A replica applies every operation it stores, in
any order, and keeps per key the entry with the greatest *stamp* ``(timestamp, author, seq)``:
the header's microsecond timestamp, then the author's 32 raw key bytes, then the seq (for two
writes by one author in the same microsecond). The stamp is a total order over operations, so
the winner of every key does not depend on the order operations arrive in, and all replicas
that stored the same operations hold the same map. Deletes keep their stamp as a tombstone so
that an older set arriving later cannot resurrect the key.

Timestamps of writes (the field range and the clock skew)
--------------------------------------------------------
A write is stamped ``max(now, floor)`` where the floor is the winning stamp of its key plus one
(:meth:`KvMap.floor`: so that a write wins over what its writer saw, even when another writer's
clock runs ahead) and the writer's previous operation's timestamp. Timestamps are 0..2^63-1
(:data:`~quicmesh.core.oplog.MAX_TIMESTAMP`) and every node refuses operations stamped more
than ``store.max_clock_skew`` ahead of its wall clock. So the rule is:

* the floor never exceeds 2^63-1 (:meth:`KvMap.floor` saturates);
* a floor beyond the writer's wall clock plus the skew is *ignored*: such a winning stamp comes
  from a hostile or broken clock (stored by an earlier release, or accepted within the skew by
  a node whose clock runs ahead), and following it would make an operation every peer refuses.
  The write is then stamped with the writer's clock: it is valid, every replica stores it, and
  the replicas stay identical; it loses that key to the ahead-of-time stamp until real time
  passes it (a hostile writer can thus hold a key for at most ``max_clock_skew``, and a stamp
  of 2^63-1 only if it is already stored, since no node accepts it any more);
* the writer's own clock is never adjusted: a writer whose clock runs beyond the skew gets
  :class:`~quicmesh.errors.TimestampAhead` and stores nothing.

The rule is applied where the operation is made (:class:`~quicmesh.core.log_effects.AppendLocal`,
with the node's :class:`~quicmesh.core.oplog.Acceptance`), and the operation is then checked
exactly as the peers will check it before it is stored.

Payloads are MessagePack ``[key, value]`` with ``value`` ``None`` for a delete; a payload that
does not decode is ignored on every replica alike (counted in ``malformed``).

Bound: at most ``max_keys`` keys (live plus tombstones). A new key beyond it is refused and
counted in ``refused`` (its replicas may then differ; size ``max_keys`` above the expected key
count). Writes by the application raise :class:`~quicmesh.errors.LimitExceeded` instead.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from ..bounded import BoundedDict, ContainerRegistry
from ..errors import ContainerFull, LimitExceeded
from .oplog import MAX_TIMESTAMP, Operation
from .store_api import Store

__all__ = ["KvMap", "Stamp", "decode_entry", "encode_delete", "encode_set"]

_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(tuple[str, bytes | None])


class Stamp(NamedTuple):
    """The total order of writes: later timestamp wins, then greater author, then greater seq."""

    timestamp: int
    author: bytes
    seq: int


def encode_set(key: str, value: bytes) -> bytes:
    """The payload of an operation setting ``key`` to ``value``."""
    return _ENC.encode((key, value))


def encode_delete(key: str) -> bytes:
    """The payload of an operation deleting ``key``."""
    return _ENC.encode((key, None))


def decode_entry(payload: bytes) -> tuple[str, bytes | None] | None:
    """``(key, value or None)``, or ``None`` when ``payload`` is not a map entry."""
    try:
        key, value = _DEC.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None
    return key, value


class KvMap:
    """The LWW view of the log name ``log``. Apply stored operations with :meth:`apply`.

    At most ``max_keys`` keys (tombstones included) are held, in a
    :class:`~quicmesh.bounded.BoundedDict` named ``kv.entries`` registered in ``registry``
    (default: the process registry; a node passes its own so that ``/metrics`` shows it).
    """

    def __init__(self, log: str, *, max_keys: int = 100_000, registry: ContainerRegistry | None = None) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self.log = log
        self.max_keys = max_keys
        self._entries: BoundedDict[str, tuple[Stamp, bytes | None]] = BoundedDict(
            "kv.entries", max_keys, registry=registry
        )
        """Every key ever written (tombstones included), registered as ``kv.entries``."""
        self._live = 0
        self.malformed = 0
        self.refused = 0

    def apply(self, op: Operation, payload: bytes) -> bool:
        """Fold one stored operation of this log in; ``True`` when a key's visible value changed.

        Idempotent and order-independent. Operations of other logs are ignored.
        """
        h = op.header
        if h.log != self.log:
            return False
        entry = decode_entry(payload)
        if entry is None:
            self.malformed += 1
            return False
        key, value = entry
        stamp = Stamp(h.timestamp, h.author, h.seq)
        old = self._entries.get(key)
        if old is None:
            try:
                self._entries[key] = (stamp, value)
            except ContainerFull:  # max_keys (counted as a rejection of kv.entries too)
                self.refused += 1
                return False
            self._live += value is not None
            return value is not None
        if stamp <= old[0]:
            return False
        self._entries[key] = (stamp, value)
        self._live += (value is not None) - (old[1] is not None)
        return old[1] != value

    def check_room(self, key: str) -> None:
        """Raise :class:`~quicmesh.errors.LimitExceeded` when writing ``key`` would be refused."""
        if key not in self._entries and len(self._entries) >= self.max_keys:
            raise LimitExceeded("kv.max_keys", self.max_keys)

    def floor(self, key: str) -> int:
        """The least timestamp a write of ``key`` needs to win over its current winner: the
        winning timestamp plus one, at most 2^63-1; 0 for an unknown key. (The writer ignores a
        floor beyond its clock plus the allowed skew: see the module docstring.)"""
        e = self._entries.get(key)
        return 0 if e is None else min(e[0].timestamp + 1, MAX_TIMESTAMP)

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """The current value of ``key``, or ``default`` when absent or deleted."""
        e = self._entries.get(key)
        return default if e is None or e[1] is None else e[1]

    def stamp(self, key: str) -> Stamp | None:
        """The stamp of the winning write of ``key`` (a set or a delete), or ``None``."""
        e = self._entries.get(key)
        return None if e is None else e[0]

    def __contains__(self, key: object) -> bool:
        e = self._entries.get(key) if isinstance(key, str) else None
        return e is not None and e[1] is not None

    def __len__(self) -> int:
        """Live keys (tombstones excluded)."""
        return self._live

    @property
    def tombstones(self) -> int:
        """Deleted keys remembered."""
        return len(self._entries) - self._live

    def items(self) -> list[tuple[str, bytes]]:
        """Live ``(key, value)`` pairs, sorted by key."""
        return sorted((k, v) for k, (_, v) in self._entries.items() if v is not None)

    def snapshot(self) -> dict[str, Any]:
        """Every key with its stamp and value (``None`` for a tombstone), for comparisons."""
        return {k: (tuple(s), v) for k, (s, v) in sorted(self._entries.items())}

    def load(self, store: Store, batch: int = 256) -> int:
        """Apply every stored operation of this log from ``store``, in bounded batches.

        Returns the number of operations read.
        """
        n = 0
        for (author, log), _hi in store.heads(self.log).items():
            seq = store.low(author, log) or 0
            while True:
                ops = store.iter_range(author, log, seq, batch)
                if not ops:
                    break
                for s in ops:
                    self.apply(s.op, s.payload)
                n += len(ops)
                seq = ops[-1].op.seq + 1
        return n
