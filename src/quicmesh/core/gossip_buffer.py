"""The gossip buffer of log sync: live operations held per ``(peer, log)`` while a sync session
with that peer runs (see :mod:`quicmesh.core.logsync`)."""

from __future__ import annotations

from collections import deque

from ..bounded import ContainerRegistry, Overflow
from ..bounded._base import _Bounded
from ..identity import NodeId
from .oplog import Operation

__all__ = ["GossipBuffer"]

_Key = tuple[NodeId, str]


class _Held:
    __slots__ = ("deadline", "op", "payload", "size")

    def __init__(self, op: Operation, payload: bytes, deadline: float) -> None:
        self.op = op
        self.payload = payload
        self.deadline = deadline
        self.size = len(payload) + 200 + len(op.header.log)


def _held_size(h: _Held) -> int:
    return h.size


class GossipBuffer(_Bounded):
    """Live operations held per ``(peer, log)`` while a sync session with that peer runs.

    Capped in operations and bytes over all keys; when full, the new operation is dropped and
    counted (``hold`` returns ``False``; the caller re-syncs that pair so it is not lost). Each
    held operation expires ``ttl`` seconds after it arrived (inside :meth:`expire`). A key whose
    queue becomes empty is removed at once. A bounded container (kind ``gossip_buffer``,
    overflow ``DROP_NEWEST``): it reports :class:`~quicmesh.bounded.ContainerStats` and
    registers itself in ``registry``.
    """

    kind = "gossip_buffer"

    def __init__(
        self,
        name: str,
        capacity: int,
        capacity_bytes: int,
        ttl: float,
        *,
        registry: ContainerRegistry | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"{name}: ttl must be positive")
        super().__init__(
            name, capacity, Overflow.DROP_NEWEST, capacity_bytes=capacity_bytes, sizeof=_held_size, registry=registry
        )
        self.ttl = float(ttl)
        # One key per running sync session (<= max_sync_sessions), removed as soon as empty;
        # entries are capped in count and bytes over all keys in hold().
        self._queues: dict[_Key, deque[_Held]] = {}  # bounded: keys <= sessions; entries capped in hold()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _size(self) -> int:
        return self._count

    def _clear(self) -> None:
        self._queues.clear()
        self._count = self._bytes = 0

    def keys(self) -> list[_Key]:
        """The ``(peer, log)`` keys holding at least one operation."""
        return list(self._queues)

    def hold(self, peer: NodeId, log: str, op: Operation, payload: bytes, now: float) -> bool:
        """Hold ``op``; ``False`` when the buffer is full (the operation is dropped, counted)."""
        item = _Held(op, payload, now + self.ttl)
        if not self._fits(self._count + 1, self._bytes + item.size):
            return self._refuse()
        self._queues.setdefault((peer, log), deque()).append(item)
        self._count += 1
        self._bytes += item.size
        self._note_size(self._count)
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
