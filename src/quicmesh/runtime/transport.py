"""The transport contract: authenticated, realm-checked connections that carry typed messages.

Two implementations: :class:`quicmesh.runtime.quic_transport.QuicTransport` (real QUIC over UDP, through
qh3) and :class:`quicmesh.runtime.memory.MemoryTransport` (in-process, for tests). The node sees
only this interface, so the QUIC library can be swapped.

Guarantees every implementation gives:

* a :class:`Connection` exists only after both ends proved their node id and realm (in an
  authority realm, each end's certificate was checked by the other: :attr:`Connection.certificate`
  and :attr:`Connection.permissions` say what the peer may do);
* at most one connection per peer pair (a simultaneous dial from both sides ends with one;
  the other is closed with reason ``duplicate``);
* messages on one connection arrive in the order sent; small messages are coalesced into few
  writes (one flush per event-loop iteration);
* every connection's unsent bytes are capped (``send_buffer_bytes``): ``send`` returns ``False``
  and counts a drop instead of buffering more;
* incoming connections beyond ``max_connections`` or ``max_incoming_handshakes`` are refused
  with a reason the dialer surfaces as :class:`~quicmesh.errors.AdmissionRefused`;
* light clients (``role == "client"``) are held apart from the mesh peers, up to
  ``max_clients`` (:meth:`Transport.enable_clients`).

Both implementations share their admission rules and connection tables
(:class:`~quicmesh.runtime.admission.AdmissionTable`) and the handshake protocol
(:mod:`quicmesh.core.handshake`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..core.permissions import EVERYTHING, Permissions
from ..core.trust import Certificate
from ..core.wire import Message
from ..identity import NodeId

__all__ = ["Connection", "Transport", "TransportEvents", "TransportStats"]


class Connection(abc.ABC):
    """One authenticated connection to a peer."""

    peer_id: NodeId
    """The node id the peer proved."""
    remote_address: str
    """``HOST:PORT`` of the peer as seen by us."""
    outbound: bool
    """``True`` when we dialed."""
    role: str = "node"
    """The peer's role: ``"node"`` (a mesh peer) or ``"client"`` (a light client the gateway serves)."""
    close_code: str | None = None
    """Why the connection closed (``normal``, ``shutdown``, ``duplicate``, ``evicted``, ``protocol``,
    ``slow_consumer``...; the peer's code when the peer closed it), ``None`` while open."""
    attachment: object | None = None
    """The owner's per-connection state, dropped with the connection (the gateway keeps a
    client's session here, so the transport's client table is the only set of clients)."""
    certificate: Certificate | None = None
    """Authority mode: the peer's certificate, verified in the handshake (a light client's
    credential for a client); ``None`` in an open realm."""
    permissions: Permissions = EVERYTHING
    """What the peer may do: its certificate's permissions (authority mode), everything in an
    open realm (set when the connection is established)."""

    @abc.abstractmethod
    def send(self, message: Message) -> bool:
        """Queue ``message``; ``False`` when dropped because the send buffer is full or the
        connection is closed. Never blocks."""

    def send_many(self, messages: Sequence[Message]) -> bool:
        """Queue several messages; ``False`` when any was dropped."""
        ok = True
        for m in messages:
            ok = self.send(m) and ok
        return ok

    @property
    @abc.abstractmethod
    def pending_bytes(self) -> int:
        """Bytes queued but not yet handed to the network."""

    @property
    def pending_bound(self) -> int:
        """#14: at least :attr:`pending_bytes`, cheaper to read (a check against a limit reads it
        first and :attr:`pending_bytes` only past the limit). This default is exact."""
        return self.pending_bytes

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """``True`` once the connection is closing or closed."""

    @property
    def path(self) -> str:
        """#13: ``"direct"``, or ``"relayed:<relay node id>"`` while the connection's packets go
        through a relay (the QUIC transport re-reads it live; see
        :meth:`quicmesh.runtime.relay_paths.RelayPaths.path_changed` for change events)."""
        return "direct"

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time in seconds, when known."""
        return None

    @property
    def datagram_size(self) -> int | None:
        """#14: the largest UDP payload (bytes) the connection sends now, after path MTU
        discovery; ``None`` where the transport has no datagrams (in memory) or not yet."""
        return None

    async def drain(self, until: int | None = None) -> None:
        """Wait until the unsent bytes fall to ``until`` (default: the low-water mark, a quarter
        of the send buffer) or the connection closes. Publishers await this for backpressure
        instead of having frames dropped; a stopping node awaits ``until=0`` so that what it sent
        last leaves before the close. The default returns at once (transports that never queue)."""
        return

    def pause_reading(self) -> None:
        """Stop handing received messages to the owner until :meth:`resume_reading` (the owner's
        inbox holds the peer's fair share). Received data waits unread, capped by the transport.
        The default does nothing (transports without a read side to pause)."""
        return

    def resume_reading(self) -> None:
        """Hand received messages to the owner again (see :meth:`pause_reading`)."""
        return

    @abc.abstractmethod
    async def close(self, code: str = "normal", reason: str = "") -> None:
        """Close the connection, telling the peer ``code``/``reason``; idempotent."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Return once the connection is closed."""


class TransportEvents(Protocol):
    """Callbacks the transport's owner (the node) implements. They must not block."""

    def on_connection(self, conn: Connection) -> None:
        """A connection (either direction) finished authentication and admission."""

    def on_message(self, conn: Connection, message: Message) -> None:
        """A message arrived on ``conn`` (handshake messages and pings are not passed on)."""

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        """``conn`` closed; ``error`` is ``None`` for an orderly local close."""

    # An owner may also define ``on_alive(conn)``: the peer of ``conn`` sent datagrams lately
    # (at most a few calls per second per connection); the node's failure detector counts it as
    # heard, so a peer whose answers queue behind bulk data is not taken for dead.


@dataclass(slots=True)
class TransportStats:
    """Counters for metrics and /health."""

    connections: int = 0
    handshakes_in_progress: int = 0
    accepted_total: int = 0
    dialed_total: int = 0
    refused_total: dict[str, int] = field(default_factory=dict)  # bounded: one key per refusal reason
    evicted_total: int = 0
    dropped_frames_total: int = 0
    auth_failures_total: int = 0
    handshakes_early_total: int = 0
    """#14: connections established with the dialer's identity proof in its ``Hello`` (one round
    trip fewer); the others took the listener's ``Challenge`` (a peer of an earlier release)."""


class WriteScope(Protocol):
    """#14: a transport's write-through scope: what connections queue between :meth:`begin` and
    the outermost :meth:`end` is written at that ``end`` (see ``quic_send.WriteThrough``)."""

    def begin(self) -> None:
        """Open (or nest) the scope."""

    def end(self) -> None:
        """Close it; the outermost ``end`` writes what was queued inside."""


class _NoScope:
    """The scope of a transport that writes every frame at once (the in-memory one)."""

    def begin(self) -> None:
        pass

    def end(self) -> None:
        pass


class Transport(abc.ABC):
    """Listens, dials, and reports connections and messages to :class:`TransportEvents`."""

    through: WriteScope = _NoScope()
    """#14: the write-through scope of this transport's connections."""

    @abc.abstractmethod
    async def start(self, events: TransportEvents) -> str:
        """Start listening; return the bound ``HOST:PORT``."""

    @abc.abstractmethod
    async def dial(self, address: str, expected: NodeId | None = None) -> Connection:
        """Connect to ``address``; when ``expected`` is given the peer must prove that id.

        Returns the existing connection when one to that peer is open. Raises
        :class:`~quicmesh.errors.PeerIdMismatch`, :class:`~quicmesh.errors.RealmMismatch`,
        :class:`~quicmesh.errors.AdmissionRefused`, :class:`~quicmesh.errors.HandshakeTimeout`,
        :class:`~quicmesh.errors.AuthenticationFailed` or another
        :class:`~quicmesh.errors.TransportError`.
        """

    @abc.abstractmethod
    def get(self, peer: NodeId) -> Connection | None:
        """The open connection to ``peer``, if any."""

    @abc.abstractmethod
    def connections(self) -> list[Connection]:
        """Every open connection."""

    @abc.abstractmethod
    def enable_clients(self, max_clients: int) -> None:
        """Accept up to ``max_clients`` light clients besides the mesh peers (0: none, the
        default). Must be called before clients connect."""

    @abc.abstractmethod
    def clients(self) -> list[Connection]:
        """Every open light-client connection (never listed by :meth:`connections`)."""

    @abc.abstractmethod
    def get_client(self, client: NodeId) -> Connection | None:
        """The open connection of light client ``client``, if any."""

    @abc.abstractmethod
    def stats(self) -> TransportStats:
        """A snapshot of the counters."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close every connection and stop listening; idempotent."""
