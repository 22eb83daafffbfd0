"""The records :class:`~quicmesh.core.logsync.LogSync` keeps: a ``(peer, log)`` pair's sync
schedule, a running pull session, and a store request in flight with what to do with its result.
Plain data, no behaviour (the machine is :mod:`quicmesh.core.logsync`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import StoreConfig
from ..identity import NodeId
from .oplog import Operation

__all__: list[str] = []

# kinds of store requests in flight
_HEADS = 0  # our heads, for the next SyncRequest of a session
_SERVE = 1  # a batch to answer a peer's SyncRequest
_BATCH = 2  # ingest of a received SyncBatch
_LIVE = 3  # ingest of live operations (pushed, or replayed from the gossip buffer)
_APPEND = 4  # a local append


class _Pair:
    """The sync schedule of one ``(peer, log)`` pair."""

    __slots__ = ("dirty", "failures", "last_start", "next_at")

    def __init__(self, next_at: float) -> None:
        self.next_at = next_at
        self.failures = 0
        self.last_start: float | None = None
        self.dirty = False

    def reschedule(self, ok: bool, now: float, cfg: StoreConfig, jitter: float) -> None:
        """A session of this pair ended (``ok``: it succeeded): schedule the next one, after
        ``resync_interval`` (at once, past the floor, when live operations were missed meanwhile)
        or after the exponential backoff of failures; ``jitter`` is a random number in [0, 1)."""
        cfg_floor = (self.last_start if self.last_start is not None else now) + cfg.sync_retry_min
        if ok:
            self.failures = 0
            delay = cfg.resync_interval * (0.9 + 0.1 * jitter)
        else:
            self.failures += 1
            base = min(cfg.sync_retry_max, cfg.sync_retry_min * 2.0 ** min(self.failures - 1, 62))
            delay = base * (0.75 + 0.25 * jitter)
        self.next_at = max(now + delay, cfg_floor)
        if ok and self.dirty:
            self.next_at = max(now, cfg_floor)


class _Session:
    """A running pull session: its id and when it fails without an answer."""

    __slots__ = ("deadline", "sid")

    def __init__(self, sid: int, deadline: float) -> None:
        self.sid = sid
        self.deadline = deadline


@dataclass(slots=True)
class _Pending:
    """A store request in flight: what to do with its result."""

    kind: int
    peer: NodeId | None
    log: str
    sid: int = 0
    ops: tuple[tuple[Operation, bytes], ...] = ()
    more: bool = False
    bad: bool = False  # the batch had an invalid operation after ``ops``
    denied: bool = False  # the sender sent operations its authors may not write (penalised)
