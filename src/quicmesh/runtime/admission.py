"""The admission/connection table shared by the QUIC and the in-memory transports.

Theory of operation
-------------------
One :class:`AdmissionTable` per transport holds every connection the transport knows, each in
exactly one registered bounded container (so ``/metrics`` shows them):

* ``transport.connections``: published mesh peers, keyed by node id, capped at
  ``max_connections``; an outbound connection published into a full pool evicts the least
  recently used one (the owner's ``on_evict`` closes it with code ``evicted``);
* ``transport.clients``: published light clients, keyed by node id: **the** set of clients
  (the gateway keeps its per-client session on the connection, not in a second map);
* ``transport.incoming_handshakes``: inbound attempts between the first packet and publication,
  capped at ``max_incoming_handshakes``, and at ``max_handshakes_per_source`` per source IP
  address (``transport.handshakes_by_source``); from ``retry_threshold`` attempts on, new ones
  must first pass a QUIC Retry (:meth:`retry_wanted`, executed by the QUIC endpoint);
* ``transport.dials``: outbound attempts in flight (each also sits in the transport's dial
  table); ``transport.parked``: inbound attempts held during a simultaneous dial.

Every admission rule is decided here, once, for both transports: the refusal at the first packet
(:meth:`refusal_at_first_packet`), the check at the ``Hello`` (:meth:`decide` with
``stage="hello"``: only light clients are limited there) and the check after the proof
(``stage="proof"``: capacity and the duplicate rule of :mod:`quicmesh.core.handshake`). The room
for clients is computed in one place (:meth:`_client_refusal`). The table never closes anything:
it returns a :class:`Decision` and the transport executes it (close the superseded connection,
send ``Refuse``, publish). It does no I/O and reads no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..config import TransportConfig
from ..core.handshake import Link, duplicate_survivor, should_park
from ..identity import NodeId
from .transport import TransportStats

__all__ = ["AdmissionTable", "Decision", "Member"]


class Member(Protocol):
    """What the table reads from a connection (hashed by identity)."""

    def __hash__(self) -> int: ...

    @property
    def outbound(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    @property
    def peer_instance(self) -> bytes: ...

    @property
    def target(self) -> NodeId | None:
        """The peer id this connection is (or will be) to, once known or expected."""
        ...

    @property
    def path(self) -> str:
        """``direct`` or ``relayed:<relay id>`` (#13)."""
        ...

    @property
    def stale(self) -> bool:
        """Whether nothing arrived for longer than a live connection stays silent."""
        ...

    @property
    def in_tls(self) -> bool:
        """Whether the QUIC/TLS handshake is still running (a dial the peer has not answered)."""
        ...


C = TypeVar("C", bound=Member)


@dataclass(slots=True)
class Decision(Generic[C]):
    """What the transport does with an authenticated attempt.

    ``verdict``: ``"admit"`` (publish it; first close ``supersede`` with code ``duplicate``),
    ``"refuse"`` (``Refuse(code, reason)``; for a dialed connection that lost the tie-break,
    ``survivor`` is the connection its ``dial()`` returns) or ``"park"`` (decide later: the
    transport's own dial to the peer is under way). An admitted inbound attempt lists in
    ``redundant`` this transport's own dials to the same peer that the peer has not answered:
    the transport ends them with code ``duplicate`` and their ``dial()`` returns the admitted one."""

    verdict: Literal["admit", "refuse", "park"]
    code: str = ""
    reason: str = ""
    supersede: C | None = None
    survivor: C | None = None
    redundant: tuple[C, ...] = ()


class AdmissionTable(Generic[C]):
    """Connections and attempts of one transport, and the admission rules (module docstring)."""

    def __init__(
        self,
        local: NodeId,
        config: TransportConfig,
        *,
        on_evict: Callable[[NodeId, C], None],
        registry: ContainerRegistry | None = None,
    ) -> None:
        self.local = local
        self.max_connections = config.max_connections
        self.max_incoming_handshakes = config.max_incoming_handshakes
        self.max_dials = config.max_connections + config.max_incoming_handshakes
        """Outbound attempts in flight at once (beyond it ``dial`` fails at once)."""
        self.max_clients = 0
        """Light clients held at once; 0 serves none (set by :meth:`enable_clients`)."""
        self.closing = False
        """Set when the transport stops: every authenticated attempt is refused (``shutdown``)."""
        self.stats = TransportStats()
        """The transport's counters (shared by the transport and its connections)."""
        self._registry = registry
        self.peers: LruMap[NodeId, C] = LruMap(
            "transport.connections", config.max_connections, on_evict=on_evict, registry=registry
        )
        self.clients: LruMap[NodeId, C] = LruMap("transport.clients", 1, Overflow.REJECT, registry=registry)
        self.incoming: LruMap[C, str] = LruMap(
            "transport.incoming_handshakes", config.max_incoming_handshakes, Overflow.REJECT, registry=registry
        )
        """Inbound attempts -> their source IP address ("" when unknown)."""
        self.max_per_source = config.max_handshakes_per_source
        self.by_source: LruMap[str, int] = LruMap(
            "transport.handshakes_by_source", config.max_incoming_handshakes, Overflow.REJECT, registry=registry
        )
        """Source IP address -> inbound attempts from it in progress (an entry per source with at
        least one, so at most ``max_incoming_handshakes``)."""
        self.retry_threshold = config.retry_threshold
        self.dialing: LruMap[C, None] = LruMap("transport.dials", self.max_dials, Overflow.REJECT, registry=registry)
        self.parked: LruMap[NodeId, C] = LruMap("transport.parked", self.max_dials, Overflow.REJECT, registry=registry)

    # -- configuration -----------------------------------------------------------------------

    def enable_clients(self, max_clients: int) -> None:
        """Hold up to ``max_clients`` light clients besides the mesh peers."""
        if max_clients < 0:
            raise ValueError("max_clients must be >= 0")
        if len(self.clients):
            raise RuntimeError("enable_clients() must be called before clients connect")
        self.clients.close()
        self.clients = LruMap("transport.clients", max(1, max_clients), Overflow.REJECT, registry=self._registry)
        self.max_clients = max_clients

    # -- lookups -----------------------------------------------------------------------------

    def get(self, peer: NodeId) -> C | None:
        """The open published connection to mesh peer ``peer``."""
        c = self.peers.peek(peer)
        return c if c is not None and not c.closed else None

    def get_client(self, client: NodeId) -> C | None:
        """The open published connection of light client ``client``."""
        c = self.clients.peek(client)
        return c if c is not None and not c.closed else None

    def handshakes(self) -> list[C]:
        """Every attempt in progress (inbound, outbound, parked ones included)."""
        return [*self.incoming.keys(), *self.dialing.keys()]

    def count_refusal(self, reason: str) -> None:
        """Count an attempt the listener ended before admission (``refused_total``)."""
        r = self.stats.refused_total
        r[reason] = r.get(reason, 0) + 1

    # -- admission ---------------------------------------------------------------------------

    def refusal_at_first_packet(self, source: str = "") -> str | None:
        """Why a new inbound attempt from ``source`` (its IP address; "" unknown) is refused
        before any state exists, or ``None``."""
        if self.closing:
            return "shutdown"
        if len(self.peers) >= self.max_connections:
            return "max_connections"
        if len(self.incoming) >= self.max_incoming_handshakes:
            return "max_incoming_handshakes"
        if source and (self.by_source.peek(source) or 0) >= self.max_per_source:
            return "max_handshakes_per_source"
        return None

    def retry_wanted(self) -> bool:
        """Whether a new inbound attempt must first prove its address with a QUIC Retry:
        ``retry_threshold`` handshakes (or more) are in progress (0: always)."""
        return len(self.incoming) >= self.retry_threshold

    def begin_incoming(self, conn: C, source: str = "") -> None:
        """An inbound attempt from ``source`` passed :meth:`refusal_at_first_packet`."""
        self.incoming.set(conn, source)
        if source:
            self.by_source.set(source, (self.by_source.peek(source) or 0) + 1)

    def _end_incoming(self, conn: C) -> None:
        source = self.incoming.pop(conn)
        if source:
            n = (self.by_source.peek(source) or 0) - 1
            if n > 0:
                self.by_source.set(source, n)
            else:
                self.by_source.pop(source)

    def begin_dial(self, conn: C) -> None:
        """An outbound attempt starts (raises :class:`~quicmesh.errors.ContainerFull` beyond
        ``max_dials``)."""
        self.dialing.set(conn, None)

    def decide(self, conn: C, stage: str, peer: NodeId, role: str) -> Decision[C]:
        """The listener's decision on an inbound attempt at the ``Hello`` or after the proof."""
        if stage == "proof" and self.closing:
            return Decision("refuse", "shutdown", "node stopping")
        if role == "client":
            old = self.get_client(peer)
            superseded = old if stage == "proof" and old is not None and old is not conn else None
            refusal = self._client_refusal(superseded)
            if refusal is not None:
                return Decision("refuse", "max_clients", refusal)
            return Decision("admit", supersede=superseded)
        if stage == "hello":
            return Decision("admit")  # mesh peers were limited at the first packet
        existing = self.get(peer)
        if existing is not None and existing is not conn:
            if self._survivor(existing, conn, peer) == "existing":
                return Decision("refuse", "duplicate", "a connection to this peer already exists", survivor=existing)
        existing = existing if existing is not conn else None
        own = tuple(d for d in self.dialing.keys() if d.target == peer) if existing is None else ()
        theirs_relayed = conn.path != "direct"
        if any(should_park(self.local, peer, own_dial_in_flight=True, own_dial_answered=not d.in_tls,
                           own_relayed=d.path != "direct", theirs_relayed=theirs_relayed) for d in own):
            return Decision("park")
        held = len(self.peers) - (1 if existing is not None else 0)
        if held >= self.max_connections:
            return Decision("refuse", "max_connections", f"{self.max_connections} connections held")
        return Decision("admit", supersede=existing, redundant=tuple(d for d in own if d.in_tls))

    def decide_dialed(self, conn: C, peer: NodeId) -> Decision[C]:
        """The dialer's decision once welcomed: the duplicate rule against an existing connection."""
        existing = self.get(peer)
        if existing is None or existing is conn:
            return Decision("admit")
        if self._survivor(existing, conn, peer) == "existing":
            return Decision("refuse", "duplicate", "superseded", survivor=existing)
        return Decision("admit", supersede=existing)

    def park(self, peer: NodeId, conn: C) -> None:
        """Hold ``conn`` (verified, inbound) until our own dial to ``peer`` is done."""
        self.parked.set(peer, conn)

    def unpark(self, peer: NodeId) -> C | None:
        """The parked attempt of ``peer`` (removed), if any and still open."""
        c = self.parked.pop(peer)
        return c if c is not None and not c.closed else None

    def publish(self, conn: C, peer: NodeId, role: str) -> None:
        """``conn`` was admitted: it leaves the attempts and joins the peers or the clients.

        An outbound connection into a full pool evicts the least recently used peer."""
        self._end_incoming(conn)
        self.dialing.pop(conn)
        if role == "client":
            self.clients.set(peer, conn)  # room checked by decide()
        else:
            self.peers.set(peer, conn)

    def release(self, conn: C, peer: NodeId | None) -> NodeId | None:
        """Forget ``conn`` everywhere. Returns the peer whose parked attempt must now be decided
        (an outbound attempt to it ended), if any."""
        resume: NodeId | None = None
        if conn in self.incoming:
            self._end_incoming(conn)
            if peer is not None and self.parked.peek(peer) is conn:
                self.parked.pop(peer)
        elif conn in self.dialing:
            self.dialing.pop(conn)
            target = conn.target
            if target is not None and target in self.parked:
                resume = target
        if peer is not None:
            if self.peers.peek(peer) is conn:
                self.peers.pop(peer)
            if self.clients.peek(peer) is conn:
                self.clients.pop(peer)
        return resume

    def close(self) -> None:
        """Drop every entry and leave the registry (the transport stopped)."""
        for c in (self.peers, self.clients, self.incoming, self.dialing, self.parked, self.by_source):
            c.close()

    # -- rules -------------------------------------------------------------------------------

    def _client_refusal(self, leaving: C | None) -> str | None:
        """The one check of ``max_clients``: ``leaving`` is a held client about to be superseded."""
        held = len(self.clients) - (1 if leaving is not None else 0)
        if held >= self.max_clients:
            return f"{self.max_clients} clients held"
        return None

    def _link(self, conn: C, peer: NodeId) -> Link:
        return Link(self.local if conn.outbound else peer, conn.peer_instance, conn.path != "direct", conn.stale)

    def _survivor(self, existing: C, new: C, peer: NodeId) -> str:
        return duplicate_survivor(self._link(existing, peer), self._link(new, peer))
