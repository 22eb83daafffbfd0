"""What light clients may make a gateway node hold: per client and for all clients together.

Theory of operation
-------------------
Outsiders must not exhaust the node's own caps, and one client must not pin the node's memory.
The gateway (:mod:`.gateway`) consults one :class:`ClientBudgets` before it takes anything on a
client's behalf, and returns what it took when that ends:

* **bytes** (:meth:`ClientBudgets.take_bytes` / :meth:`~ClientBudgets.give_bytes`): payload bytes
  of a client's calls in flight and of its publishes waiting their turn, at most
  ``max_client_pending_bytes`` per client; a call or publish beyond it is refused at once with
  ``LimitExceeded("gateway.max_client_pending_bytes")``. Call timeouts are clamped to
  ``max_client_call_timeout``, so bytes are held for a bounded time;
* **topics** (:meth:`~ClientBudgets.hold_topic`, :meth:`~ClientBudgets.drop_topic`,
  :meth:`~ClientBudgets.touch_published`): the swarms a client subscribes or publishes to (the
  node joins one per topic; a publish-only membership lingers ``PUBLISH_LINGER`` seconds, so
  a published topic is held that long after its last publish), at most ``max_client_topics``
  per client and ``max_clients_topics`` for all clients;
* **subscriptions** for all clients: ``max_clients_subscriptions`` (per client:
  ``max_client_subscriptions``, checked by the gateway);
* **advertised names** for all clients: ``max_clients_advertisements`` (per client:
  ``max_client_advertisements``).

A node that serves clients sizes its containers for its own caps *plus* these totals
(``gossip.max_topics + max_clients_topics`` swarms, ``pubsub.max_subscriptions +
max_clients_subscriptions`` subscriptions), and its own checks leave out what is held for
clients (``Node.subscribe`` subtracts the clients' subscriptions; the mesh subtracts
:meth:`ClientBudgets.swarms_held`, given to it as ``Mesh.client_swarms``), so clients at their
caps never make the node's own ``subscribe`` fail, and the node's own caps stay its own. A topic
a departed client published to stays counted until the node's publish-only membership of it
lapses (``PUBLISH_LINGER`` after the last publish). Client adverts are signed by the node
and share ``registry.max_per_provider`` with its own (that is what other nodes accept per
provider): the config requires ``max_clients_advertisements`` below it, the rest is the node's.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field
from typing import Protocol

from ..config import GatewayConfig
from ..core.gateway_messages import GError, GPublish
from ..core.mesh import PUBLISH_LINGER
from ..errors import (
    CallTimeout,
    ConfigError,
    ConnectionLost,
    InvalidTopic,
    LimitExceeded,
    MessageTooLarge,
    NodeClosed,
    NoProvider,
    Overloaded,
    PermissionDenied,
    RemoteError,
)
from ..identity import NodeId
from .transport import Connection

__all__ = ["ClientBudgets", "ClientHoldings", "GatewayStats", "Session", "SubHandle", "error_frame", "forget_task",
           "session_of"]


@dataclass(slots=True)
class GatewayStats:
    """Counters of the gateway (totals since start)."""

    accepted_total: int = 0
    disconnected_total: int = 0
    superseded_total: int = 0
    slow_consumer_total: int = 0
    slow_consumer_pending_total: int = 0
    """Of which: closed for holding more than ``max_pending_bytes`` unsent."""
    slow_consumer_stalled_total: int = 0
    """Of which: closed for writes stalled ``write_stall_timeout``."""
    limit_refusals_total: int = 0
    messages_forwarded_total: int = 0
    calls_total: int = 0
    invocations_total: int = 0


@dataclass(eq=False, slots=True)
class ClientHoldings:
    """What one client holds (kept in its gateway session)."""

    pending_bytes: int = 0
    """Payload bytes of calls in flight and publishes waiting."""
    sub_topics: dict[str, int] = field(default_factory=dict)  # bounded: max_client_topics
    """Swarm -> the client's subscriptions in it."""
    pub_topics: dict[str, float] = field(default_factory=dict)  # bounded: max_client_topics
    """Swarm -> when the client last published to it."""

    def topics(self) -> int:
        """Distinct swarms held."""
        return len(self.sub_topics.keys() | self.pub_topics.keys())


class SubHandle(Protocol):
    """A client subscription as its session holds it: the task forwarding a node subscription
    of its own, or its member of a shared one (:class:`~.gateway_subs.Member`)."""

    def cancel(self) -> bool:
        """End it (idempotent)."""
        ...


@dataclass(eq=False, slots=True)
class Session:
    """One client's session at the gateway, kept on its connection (``Connection.attachment``)."""

    client: NodeId
    conn: Connection
    # The maps below are capped by GatewayConfig (checked before every insert).
    subs: dict[int, SubHandle] = field(default_factory=dict)  # bounded: max_client_subscriptions
    advs: set[str] = field(default_factory=set)  # bounded: max_client_advertisements
    calls: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # bounded: max_client_pending_calls
    invocations: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)  # bounded: max_client_pending_calls
    publishes: collections.deque[GPublish] = field(default_factory=collections.deque)  # bounded: pending calls cap
    publisher: asyncio.Task[None] | None = None
    held: ClientHoldings = field(default_factory=ClientHoldings)
    sub_swarms: dict[SubHandle, str] = field(default_factory=dict)  # bounded: max_client_subscriptions
    """Subscription (its task, or its member of a shared subscription) -> its swarm, while its
    budget is held."""
    call_bytes: dict[asyncio.Task[None], int] = field(default_factory=dict)  # bounded: max_client_pending_calls
    """Call task -> payload bytes it holds."""
    inv_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    stall_since: float | None = None
    stall_mark: int = 0
    open: bool = True


def session_of(conn: Connection) -> Session | None:
    """The open session kept on a client's connection, if any."""
    s = conn.attachment
    return s if isinstance(s, Session) and s.open else None


def forget_task(tasks: dict[int, SubHandle] | dict[int, asyncio.Task[None]], key: int,
                task: asyncio.Task[None]) -> None:
    """Done callback: drop ``task`` from its session map (unless a newer task took the key)."""
    if tasks.get(key) is task:
        del tasks[key]


class ClientBudgets:
    """The per-client and all-client budgets of one gateway (see the module docstring)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.cfg = config
        self.refs: dict[str, int] = {}  # bounded: max_clients_topics
        """Swarm -> clients holding it."""
        self.subscriptions = 0
        """Subscriptions of all clients (reserved before the node subscribes)."""
        self.pending_bytes = 0
        """Payload bytes held for all clients."""
        self.refusals: dict[str, int] = {}  # bounded: one key per limit name
        """Refusals per limit name."""
        self.lingering: dict[str, float] = {}  # bounded: entries of refs, max_clients_topics
        """Publish-only swarms of clients that left -> when the node's membership lapses (they
        keep their reference until then: the node still holds the swarm)."""

    # -- bytes -----------------------------------------------------------------------------------

    def clamp_timeout(self, timeout: float) -> float:
        """A client's requested call timeout, within ``(0, max_client_call_timeout]``."""
        return min(max(0.001, timeout), self.cfg.max_client_call_timeout)

    def take_bytes(self, h: ClientHoldings, n: int) -> None:
        """Hold ``n`` payload bytes for a client; :class:`LimitExceeded` past its budget."""
        cap = self.cfg.max_client_pending_bytes
        if h.pending_bytes + n > cap:
            self._refuse("gateway.max_client_pending_bytes", cap)
        h.pending_bytes += n
        self.pending_bytes += n

    def give_bytes(self, h: ClientHoldings, n: int) -> None:
        """Release ``n`` bytes taken with :meth:`take_bytes`."""
        h.pending_bytes -= n
        self.pending_bytes -= n

    # -- subscriptions ---------------------------------------------------------------------------

    def take_subscription(self) -> None:
        """Reserve one subscription of the all-client total (:class:`LimitExceeded` when full)."""
        if self.subscriptions >= self.cfg.max_clients_subscriptions:
            self._refuse("gateway.max_clients_subscriptions", self.cfg.max_clients_subscriptions)
        self.subscriptions += 1

    def give_subscription(self) -> None:
        """Release a subscription taken with :meth:`take_subscription`."""
        self.subscriptions -= 1

    # -- topics ----------------------------------------------------------------------------------

    def hold_topic(self, h: ClientHoldings, swarm: str, now: float) -> None:
        """A client subscribes in ``swarm`` (:class:`LimitExceeded` past a topic cap)."""
        if swarm not in h.sub_topics and swarm not in h.pub_topics:
            self._admit(h, swarm, now)
        h.sub_topics[swarm] = h.sub_topics.get(swarm, 0) + 1

    def drop_topic(self, h: ClientHoldings, swarm: str) -> None:
        """A subscription of the client in ``swarm`` ended."""
        n = h.sub_topics.get(swarm, 0) - 1
        if n > 0:
            h.sub_topics[swarm] = n
            return
        h.sub_topics.pop(swarm, None)
        if swarm not in h.pub_topics:
            self._unref(swarm)

    def touch_published(self, h: ClientHoldings, swarm: str, now: float) -> None:
        """A client publishes to ``swarm`` (:class:`LimitExceeded` past a topic cap)."""
        if swarm in h.pub_topics or swarm in h.sub_topics:
            h.pub_topics[swarm] = now
            return
        self._admit(h, swarm, now)
        h.pub_topics[swarm] = now

    def release(self, h: ClientHoldings) -> None:
        """The client left: release everything it held (a topic it published to stays counted
        until the node's publish-only membership lapses, ``PUBLISH_LINGER`` after its last
        publish)."""
        for swarm in h.sub_topics.keys() | h.pub_topics.keys():
            last = h.pub_topics.get(swarm)
            if last is not None and swarm not in self.lingering:
                self.lingering[swarm] = last + PUBLISH_LINGER  # keeps this client's reference
            elif last is not None:
                self.lingering[swarm] = max(self.lingering[swarm], last + PUBLISH_LINGER)
                self._unref(swarm)
            else:
                self._unref(swarm)
        h.sub_topics.clear()
        h.pub_topics.clear()
        self.give_bytes(h, h.pending_bytes)

    def swarms_held(self, now: float) -> int:
        """Swarms held for clients at ``now`` (lapsed publish-only ones of departed clients
        released first)."""
        if self.lingering:
            for swarm in [s for s, until in self.lingering.items() if until <= now]:
                del self.lingering[swarm]
                self._unref(swarm)
        return len(self.refs)

    # -- internals -------------------------------------------------------------------------------

    def _admit(self, h: ClientHoldings, swarm: str, now: float) -> None:
        """A swarm new to the client: prune its lapsed publish topics, then check both caps."""
        self.swarms_held(now)
        for s in [s for s, t in h.pub_topics.items() if now - t > PUBLISH_LINGER]:
            del h.pub_topics[s]
            if s not in h.sub_topics:
                self._unref(s)
        if h.topics() >= self.cfg.max_client_topics:
            self._refuse("gateway.max_client_topics", self.cfg.max_client_topics)
        if swarm not in self.refs and len(self.refs) >= self.cfg.max_clients_topics:
            self._refuse("gateway.max_clients_topics", self.cfg.max_clients_topics)
        self.refs[swarm] = self.refs.get(swarm, 0) + 1

    def _unref(self, swarm: str) -> None:
        n = self.refs.get(swarm, 0) - 1
        if n > 0:
            self.refs[swarm] = n
        else:
            self.refs.pop(swarm, None)

    def _refuse(self, limit: str, capacity: int) -> None:
        self.refusals[limit] = self.refusals.get(limit, 0) + 1
        raise LimitExceeded(limit, capacity)


def error_frame(req_id: int, exc: BaseException) -> GError:
    """The ``GError`` a client turns back into the same typed exception."""
    text = str(exc)[:1000]
    if isinstance(exc, PermissionDenied):  # before RemoteError: a refused call is both
        return GError(req_id, "permission_denied", text, action=exc.action, subject=exc.subject[:1000])
    if isinstance(exc, LimitExceeded):
        return GError(req_id, "limit", text, limit=exc.limit, capacity=exc.capacity)
    if isinstance(exc, RemoteError):
        return GError(req_id, exc.code, exc.message[:1000], retryable=exc.retryable, remote=True)
    if isinstance(exc, NoProvider):
        return GError(req_id, "no_provider", text)
    if isinstance(exc, CallTimeout):
        return GError(req_id, "timeout", text)
    if isinstance(exc, Overloaded):
        return GError(req_id, "overloaded", text, retryable=True)
    if isinstance(exc, ConnectionLost):
        return GError(req_id, "connection_lost", text, retryable=True)
    if isinstance(exc, NodeClosed):
        return GError(req_id, "closed", text)
    if isinstance(exc, InvalidTopic):
        return GError(req_id, "invalid_topic", text)
    if isinstance(exc, MessageTooLarge):
        return GError(req_id, "too_large", text)
    if isinstance(exc, ConfigError | ValueError | TypeError):
        return GError(req_id, "invalid", text)
    return GError(req_id, "error", f"{type(exc).__name__}: {text}")
