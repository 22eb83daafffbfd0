"""The node inbox's guard: each peer's fair share, and messages whose handling raised.

Theory of operation
-------------------
The driver's inbox is one bounded FIFO of ``(connection, message)`` shared by every peer
(:class:`~quicmesh.runtime.driver.NodeDriver`). :class:`InboxGuard` keeps, per connection, how
many of its messages wait in it. A connection that reaches its *share*,
``max(transport.inbox_peer_share_min, inbox capacity // connected peers)``, is paused
(:meth:`~quicmesh.runtime.transport.Connection.pause_reading`: the transport stops handing its
messages on, so the back-pressure reaches the peer) and resumed once half of its share has been
processed. One peer's tiny frames therefore never fill the inbox, and no other peer's message
is dropped to make room for them.

While the driver does not drain its inbox because the node's delivery queue is full
(:mod:`quicmesh.runtime.delivery`), the guard is *holding* (:meth:`InboxGuard.hold`): a
connection is paused as soon as ``HOLD_SHARE`` of its messages wait (a gossip frame may carry a
thousand messages, so the share in messages would let megabytes in), and the connections paused
that way resume when the delivery queue has room again (:meth:`InboxGuard.unhold`). That is how
a slow subscriber slows the publishers down instead of losing their messages.

When handling a message raises, the driver calls :meth:`InboxGuard.failed`: the message is
dropped and counted (``errors``), a log line is written at most once per
``_ERROR_LOG_INTERVAL`` seconds (with the number suppressed since), and the connection's offences
are counted; at ``transport.max_peer_offences`` the connection is closed with code ``protocol``.
All per-connection state is dropped with the connection (:meth:`peer_down`) or as soon as its
last waiting message is taken.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..bounded import BoundedDict, ContainerRegistry
from ..config import TransportConfig
from ..core.wire import Message
from ..errors import ContainerFull
from .transport import Connection

__all__ = ["InboxGuard"]

log = logging.getLogger("quicmesh.node")

HOLD_SHARE = 16
"""Messages of one connection waiting in the inbox at which it is paused while holding."""
_ERROR_LOG_INTERVAL = 10.0
"""Seconds between two log lines about messages whose handling raised (the rest are counted)."""


class InboxGuard:
    """Per-connection accounting of a shared inbox of ``capacity`` messages (see the module
    docstring). ``spawn`` runs a coroutine in the background (the connection's close)."""

    def __init__(
        self, config: TransportConfig, capacity: int, max_clients: int, *,
        spawn: Callable[[Awaitable[Any]], None], registry: ContainerRegistry,
    ) -> None:
        self.config = config
        self.capacity = capacity
        self._spawn = spawn
        self.errors = 0
        """Messages whose handling raised (each dropped)."""
        self.offender_closes = 0
        """Connections closed because their peer caused ``max_peer_offences`` errors."""
        self.paused_total = 0
        """Times a connection was paused for holding its share of the inbox."""
        self.queued: dict[Connection, int] = {}  # bounded: one entry per connection with messages in the inbox
        """Per connection: its messages waiting in the inbox."""
        self._paused: dict[Connection, None] = {}  # bounded: a subset of the keys of queued
        self._offences: BoundedDict[Connection, int] = BoundedDict(
            "node.peer_offences", 2 * config.max_connections + max_clients, registry=registry
        )
        self._peers = 0
        self.share = max(config.inbox_peer_share_min, capacity)
        """Messages one connection may have waiting before it is paused."""
        self._next_log = 0.0
        self._unlogged = 0
        self.holding = False
        """Whether the driver stopped draining the inbox (its delivery queue is full)."""
        self.held_total = 0
        """Times the guard started holding."""

    def hold(self) -> None:
        """The inbox is not drained for now: pause every connection holding ``HOLD_SHARE``."""
        if self.holding:
            return
        self.holding = True
        self.held_total += 1
        for conn, n in self.queued.items():
            if n >= HOLD_SHARE and conn not in self._paused and not conn.closed:
                self._paused[conn] = None
                self.paused_total += 1
                conn.pause_reading()

    def unhold(self) -> None:
        """The inbox is drained again: connections paused by :meth:`hold` below half their
        share resume (the others when :meth:`take` brings them there)."""
        if not self.holding:
            return
        self.holding = False
        half = self.share // 2
        for conn in [c for c in self._paused if self.queued.get(c, 0) <= half]:
            del self._paused[conn]
            if not conn.closed:
                conn.resume_reading()

    @property
    def paused(self) -> int:
        """Connections paused right now."""
        return len(self._paused)

    def peer_up(self) -> None:
        """A mesh peer connected: the shares shrink."""
        self._peers += 1
        self._reshare()

    def peer_down(self, conn: Connection) -> None:
        """``conn`` closed: forget its offences and pause (its waiting messages stay counted)."""
        self._offences.pop(conn, None)
        if conn.role != "client":
            self._peers = max(0, self._peers - 1)
            self._reshare()
        self._paused.pop(conn, None)

    def put(self, conn: Connection) -> None:
        """One message of ``conn`` entered the inbox: pause it at its share."""
        n = self.queued.get(conn, 0) + 1
        self.queued[conn] = n
        if (n >= self.share or (self.holding and n >= HOLD_SHARE)) and conn not in self._paused and not conn.closed:
            self._paused[conn] = None
            self.paused_total += 1
            conn.pause_reading()

    def take(self, conn: Connection) -> None:
        """One message of ``conn`` left the inbox: resume it once below half its share."""
        left = self.queued.get(conn, 1) - 1
        if left > 0:
            self.queued[conn] = left
        else:
            self.queued.pop(conn, None)
        if conn in self._paused and left <= self.share // 2 and not self.holding:
            del self._paused[conn]
            if not conn.closed:
                conn.resume_reading()

    def failed(self, conn: Connection, message: Message, exc: Exception) -> None:
        """Handling ``message`` from ``conn`` raised ``exc``: count, log (rate-limited), and close
        the connection once its peer reached ``max_peer_offences``. The message is dropped."""
        self.errors += 1
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + _ERROR_LOG_INTERVAL
            log.warning(
                "dropped a %s from %s: %s: %s (%d more since the last report)", type(message).__name__,
                conn.peer_id.short(), type(exc).__name__, str(exc)[:200], self._unlogged,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            self._unlogged = 0
        else:
            self._unlogged += 1
        if conn.closed:
            return
        limit = self.config.max_peer_offences
        count = self._offences.get(conn, 0) + 1
        try:
            self._offences[conn] = count
        except ContainerFull:
            count = limit  # no room to keep count: close now
        if count >= limit:
            self._offences.pop(conn, None)
            self.offender_closes += 1
            self._spawn(conn.close("protocol", f"{count} messages could not be handled"))

    def _reshare(self) -> None:
        self.share = max(self.config.inbox_peer_share_min, self.capacity // max(1, self._peers))
