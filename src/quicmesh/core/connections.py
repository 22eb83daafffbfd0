"""The mesh's connection table: which peers are connected, dialled, waited for, or lingering.

Theory of operation
-------------------
:class:`Connections` is one part of :class:`~quicmesh.core.mesh.Mesh` (which owns one and is the
only caller). It never decides *whom* to talk to (the overlays do); it decides *how* a message
reaches a peer:

* **connected** (``conns``, an :class:`~quicmesh.bounded.LruMap` capped at
  ``transport.max_connections``): :meth:`send` returns a :class:`~quicmesh.core.effects.Send`.
  The driver reports connections with :meth:`connected` and losses with :meth:`disconnected`.
* **not connected**: the message waits in the peer's *dial queue* (a
  :class:`~quicmesh.bounded.BoundedDeque` of ``gossip.dial_queue_capacity`` messages, oldest
  dropped and counted; at most :data:`MAX_DIAL_QUEUES` peers have one, the least recently used
  queue is dropped) and one :class:`~quicmesh.core.effects.Dial` is emitted (``dialing``).
  :meth:`connected` hands the queue back as Sends; :meth:`dial_failed`, or :data:`DIAL_TIMEOUT`
  without an answer (:meth:`expire_dials`), drops it. A peer without a known address cannot be
  dialled: :meth:`send` returns ``None`` and the mesh treats it as a failed dial.
* **lingering**: a connection no overlay needs (the ``needed`` callback says no, and no message
  waits for it) is closed :data:`LINGER` seconds later with ``Disconnect(peer, "idle")``
  (:meth:`expire_idle`), unless it became needed meanwhile (:meth:`check_linger`).

Counters (``dial_queue_dropped``, ``dials_failed``) go to the mesh's counter dict, given at
construction.
"""

from __future__ import annotations

from collections.abc import Callable

from ..bounded import BoundedDeque, ContainerRegistry, LruMap, Overflow, TtlMap, Watch
from ..config import NodeConfig
from ..identity import NodeId
from .addressbook import AddressBook
from .effects import Dial, Disconnect, Effect, Send
from .wire import Message

__all__ = ["DIAL_TIMEOUT", "LINGER", "MAX_DIAL_QUEUES", "Connections"]

DIAL_TIMEOUT = 10.0
"""Seconds a dial may stay unanswered before it counts as failed."""
LINGER = 5.0
"""Seconds an unneeded connection is kept open before ``Disconnect(peer, "idle")``."""
MAX_DIAL_QUEUES = 1024
"""Peers with messages waiting for a dial at once; the least recently used queue is dropped."""


class Connections:
    """Connected, dialled and lingering peers of one node, and the messages waiting for a dial.

    ``needed(peer)`` tells whether some overlay still needs a connection to ``peer`` (a peer with
    queued messages is needed anyway). ``counters`` is the owner's counter dict.
    """

    def __init__(
        self,
        config: NodeConfig,
        book: AddressBook,
        registry: ContainerRegistry,
        counters: dict[str, int],
        needed: Callable[[NodeId], bool],
    ) -> None:
        self.book = book
        self.registry = registry
        self.counters = counters
        self.needed_by_overlays = needed
        self.queue_capacity = config.gossip.dial_queue_capacity
        maxc = config.transport.max_connections
        self.conns: LruMap[NodeId, bool] = LruMap("mesh.connections", maxc, Overflow.DROP_NEWEST, registry=registry)
        """Connected peers -> whether we dialled them."""
        self.dialing: TtlMap[NodeId, None] = TtlMap("mesh.dialing", maxc, DIAL_TIMEOUT, registry=registry)
        self.dial_queues: LruMap[NodeId, BoundedDeque[Message]] = LruMap(
            "mesh.dial_queues", MAX_DIAL_QUEUES, on_evict=self._queue_evicted, registry=registry
        )
        self.linger: TtlMap[NodeId, None] = TtlMap("mesh.linger", maxc, LINGER, registry=registry)

    # -- sending ---------------------------------------------------------------------------------

    def send(self, peer: NodeId, msg: Message, now: float) -> list[Effect] | None:
        """A Send when connected; else queue ``msg`` and dial (once). ``None``: ``peer`` has no
        known address, the dial failed at once (the caller reports :meth:`dial_failed` to
        everyone concerned)."""
        if peer in self.conns:
            return [Send(peer, msg)]
        q = self.dial_queues.get(peer)
        if q is None:
            q = BoundedDeque("mesh.dial_queue", self.queue_capacity, on_evict=self._queued_dropped,
                             registry=self.registry)
            self.dial_queues.set(peer, q)
        q.append(msg)
        if peer in self.dialing:
            return []
        addrs = self.book.addresses(peer)
        if not addrs:
            return None
        self.dialing.set(peer, None, now)
        return [Dial(peer, addrs)]

    # -- transport events ------------------------------------------------------------------------

    def connected(self, peer: NodeId, addresses: tuple[str, ...], outbound: bool, now: float) -> list[Effect] | None:
        """Record a connection (``addresses`` normalized) and return the Sends of its dial queue;
        ``None`` when refused (``transport.max_connections``)."""
        if peer not in self.conns and not self.conns.set(peer, outbound):
            return None
        self.book.set_connected(peer, addresses if outbound else (), now)
        self.dialing.pop(peer)
        q = self.dial_queues.pop(peer)
        if q is None:
            return []
        out: list[Effect] = [Send(peer, m) for m in q.drain()]
        q.close()
        return out

    def disconnected(self, peer: NodeId, now: float) -> None:
        """Forget the connection to ``peer`` (lost, closed by it, or closed by us)."""
        self.conns.pop(peer)
        self.linger.pop(peer)
        self.book.set_disconnected(peer, now)

    def dial_failed(self, peer: NodeId) -> None:
        """A dial to ``peer`` failed: count it and drop its queue."""
        self.dialing.pop(peer)
        self.counters["dials_failed"] += 1
        q = self.dial_queues.pop(peer)
        if q is not None:
            self.counters["dial_queue_dropped"] += len(q)
            q.close()

    def forget(self, peer: NodeId) -> list[Effect]:
        """Drop everything about ``peer``; a ``Disconnect(peer, "removed")`` when connected."""
        q = self.dial_queues.pop(peer)
        if q is not None:
            q.close()
        self.dialing.pop(peer)
        self.linger.pop(peer)
        if self.conns.pop(peer) is not None:
            return [Disconnect(peer, "removed")]
        return []

    # -- lingering -------------------------------------------------------------------------------

    def needed(self, peer: NodeId) -> bool:
        """Whether the connection to ``peer`` is in use: an overlay knows it, or messages wait."""
        return peer in self.dial_queues or self.needed_by_overlays(peer)

    def in_use(self, peer: NodeId) -> None:
        """``peer`` became an overlay neighbour: its connection stops lingering."""
        self.linger.pop(peer)

    def check_linger(self, peer: NodeId, now: float) -> None:
        """Start (or stop) the linger timer of ``peer``'s connection, as it is (not) needed."""
        if peer not in self.conns:
            return
        if self.needed(peer):
            self.linger.pop(peer)
        elif peer not in self.linger:
            self.linger.set(peer, None, now)

    # -- timers ----------------------------------------------------------------------------------

    def expire_dials(self, now: float) -> list[NodeId]:
        """The peers whose dial stayed unanswered for :data:`DIAL_TIMEOUT` (report them failed)."""
        return [peer for peer, _ in self.dialing.expire(now)]

    def expire_idle(self, now: float) -> list[Effect]:
        """Close the connections that lingered :data:`LINGER` seconds and are still not needed."""
        out: list[Effect] = []
        for peer, _ in self.linger.expire(now):
            if peer in self.conns and not self.needed(peer):
                self.conns.pop(peer)
                self.book.set_disconnected(peer, now)
                out.append(Disconnect(peer, "idle"))
        return out

    def timers(self) -> tuple[Callable[[], float | None], ...]:
        """The ``next_deadline`` of each timer kept here (dial timeouts, linger ends), for an owner
        that merges many timers without a call per part."""
        return (self.dialing.next_deadline, self.linger.next_deadline)

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever one of :meth:`timers` may change may change."""
        for c in (self.dialing, self.linger,):
            c.watch(w)

    def next_deadline(self) -> float | None:
        """The earliest dial timeout or linger end, or ``None``."""
        a, b = self.dialing.next_deadline(), self.linger.next_deadline()
        return a if b is None or (a is not None and a < b) else b

    # -- swarms ----------------------------------------------------------------------------------

    def purge_swarm(self, swarm: str) -> None:
        """Drop the queued messages of ``swarm`` (the node left it)."""
        for peer in list(self.dial_queues.keys()):
            q = self.dial_queues.peek(peer)
            if q is None:
                continue
            for m in [m for m in q.drain() if getattr(m, "s", None) != swarm]:
                q.append(m)

    def queued(self, swarm: str) -> int:
        """Messages of ``swarm`` waiting for a dial."""
        return sum(1 for q in self.dial_queues.values() for m in q if getattr(m, "s", None) == swarm)

    # -- eviction callbacks ------------------------------------------------------------------------

    def _queued_dropped(self, _msg: Message) -> None:
        self.counters["dial_queue_dropped"] += 1

    def _queue_evicted(self, _peer: NodeId, q: BoundedDeque[Message]) -> None:
        self.counters["dial_queue_dropped"] += len(q)
        q.close()
