"""#13 (relay): relayed QUIC paths of one transport, and the relay service it may offer.

Theory of operation
-------------------
Every :class:`~.quic_transport.QuicTransport` has one :class:`RelayPaths`, the
:class:`~._quic_adapter.VirtualRouter` of its endpoint (see :mod:`quicmesh.core.relay` for the
protocol). A relayed path to peer P through relay R is a *virtual address*
``(VIRTUAL_HOST, port)``, one port per (R, P), named by the relayed address
``relay:<R>@<R's HOST:PORT>/<P>`` (what ``remote_address`` and ``quicmesh status`` show):

* qh3 sends a datagram to it -> :meth:`RelayPaths.send_virtual` wraps it in a
  :class:`~quicmesh.core.relay_messages.RelayData` for P on the connection to R;
* R's :class:`~quicmesh.core.relay_messages.RelayForward` from P arrives ->
  :meth:`_on_forward` hands the packet to the endpoint as a datagram from that address
  (accepted only from a relay this node holds a reservation at, or on a path it dialed).

As a relay (``relay.serve``), :meth:`_on_data` asks the sans-IO
:class:`~quicmesh.core.relay.RelayServer` about every packet and forwards what it allows,
tagged with the sender's authenticated id. The relay's budgets and counters live there.

When the connection to a relay closes, every path through it goes at once: the QUIC
connections that used one are closed (code ``relay_lost``), so their owners redial through
another relay instead of waiting for an idle timeout; ``on_relay_lost`` callbacks run.
Virtual addresses no connection used for two sweeps (``SWEEP_INTERVAL`` apart) are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..bounded import BoundedDict, BoundedSet, ContainerRegistry
from ..config import TransportConfig
from ..config.relay import RelayConfig
from ..core.relay import RelayAddress, RelayServer
from ..core.relay_messages import MAX_RELAYED_PACKET, RelayData, RelayForward, RelayReserve, RelayReserved
from ..core.wire import Message
from ..errors import ContainerFull, InvalidNodeId, TransportError
from ..identity import NodeId
from . import _quic_adapter as qa
from . import _quic_endpoint as qe
from .admission import AdmissionTable
from .quic_connection import QuicConnection
from .transport import Connection

__all__ = ["RELAY_TYPES", "RelayPaths"]

log = logging.getLogger("quicmesh.relay")

RELAY_TYPES: frozenset[type[Message]] = frozenset({RelayData, RelayForward, RelayReserve, RelayReserved})
"""The messages the transport hands to :class:`RelayPaths` instead of the node."""
SWEEP_INTERVAL = 5.0
"""Seconds between two sweeps of the relay's sessions and of unused virtual addresses."""
_MAX_PORT = 65535


class PathHost(Protocol):
    """What :class:`RelayPaths` needs from its transport (:class:`~.quic_transport.QuicTransport`)."""

    config: TransportConfig
    table: AdmissionTable[QuicConnection]

    @property
    def node_id(self) -> NodeId:
        """This transport's node id."""

    @property
    def endpoint(self) -> qe.Endpoint | None:
        """The UDP endpoint once started."""

    def loop_time(self) -> float:
        """The event loop's clock."""

    async def dial(self, address: str, expected: NodeId | None = None) -> Connection:
        """Connect to ``address``."""

    async def dial_address(self, addr: tuple[str, int], name: str, expected: NodeId | None) -> QuicConnection:
        """Dial a resolved or virtual address."""


@dataclass(slots=True)
class _Path:
    relay: NodeId
    peer: NodeId
    name: str
    addr: tuple[str, int]
    uses: int = 0
    seen: int = -1


class RelayPaths:
    """Relayed paths of one transport, and its relay service (see the module docstring)."""

    def __init__(self, transport: PathHost, config: RelayConfig, registry: ContainerRegistry | None) -> None:
        self._t = transport
        self.config = config
        self.server = RelayServer(config, registry)
        """The relay's decisions, budgets and counters (serves only with ``relay.serve``)."""
        cap = min(_MAX_PORT, transport.table.max_connections + transport.table.max_incoming_handshakes
                  + transport.table.max_dials)
        self._paths: BoundedDict[tuple[NodeId, NodeId], _Path] = BoundedDict("relay.paths", cap, registry=registry)
        self._ports: BoundedDict[int, _Path] = BoundedDict("relay.path_ports", cap, registry=registry)
        self._next_port = 1
        self.reserved_at: BoundedSet[NodeId] = BoundedSet("relay.reservations_held", 64, registry=registry)
        """Relays that hold a reservation for this node."""
        self._pending: BoundedDict[NodeId, asyncio.Future[str]] = BoundedDict(
            "relay.reserve_requests", 64, registry=registry)
        self.on_relay_lost: list[Callable[[NodeId], None]] = []  # bounded: set up once by the node's agent
        """Called with a relay's id when the connection to a relay holding our reservation closed."""
        self.on_path_change: list[Callable[[QuicConnection, str], None]] = []  # bounded: set up once
        self.on_relayed: list[Callable[[NodeId, NodeId], None]] = []  # bounded: set up once by the node
        """Called with ``(peer, relay)`` when a connection this node dialed through a relay is up
        (the hole-punching side starts a punch towards a direct path there)."""
        """Called with a connection and its new ``path`` when it changed (see :meth:`path_changed`)."""
        self.sent = 0
        """Packets sent on relayed paths."""
        self.received = 0
        """Packets received on relayed paths."""
        self.unsolicited = 0
        """Forwarded packets dropped: from a relay without our reservation, on no path we dialed."""
        self.send_dropped = 0
        """Packets for a relayed path dropped here (relay gone or its connection congested)."""
        self.idle_closes_refused = 0
        """Idle closes of connections the relay uses, refused (see :meth:`keeps`)."""
        self._timer: asyncio.TimerHandle | None = None
        self._paths_of: dict[int, str] = {}  # bounded: one per held connection (id -> last path seen)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Arm the periodic sweep (called once the endpoint is bound)."""
        self._timer = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        """Stop the sweep and forget every path."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        self._paths.clear()
        self._ports.clear()
        self.reserved_at.clear()
        self._paths_of.clear()
        self.server.close()

    # -- dialing -------------------------------------------------------------------------------

    async def reserve(self, address: str, relay: NodeId | None = None) -> Connection:
        """Connect to the relay at ``address`` and hold a reservation there (peers can then
        reach this node through it). Raises :class:`~quicmesh.errors.TransportError` when the
        relay refuses or does not answer within the handshake timeout."""
        conn = await self._t.dial(address, relay)
        peer = conn.peer_id
        if peer in self.reserved_at and not conn.closed:
            return conn
        fut = self._pending.get(peer)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            try:
                self._pending[peer] = fut
            except ContainerFull:
                raise TransportError("too many reservations requested at once") from None
            conn.send(RelayReserve())
        try:
            reason = await asyncio.wait_for(asyncio.shield(fut), self._t.config.handshake_timeout)
        except TimeoutError:
            raise TransportError(f"relay {peer.short()} did not answer the reservation") from None
        finally:
            if self._pending.get(peer) is fut and fut.done():
                del self._pending[peer]
        if reason:
            raise TransportError(f"relay {peer.short()} refused the reservation: {reason}")
        if conn.closed:
            raise TransportError(f"relay {peer.short()} closed the connection")
        self.reserved_at.add(peer)
        return conn

    async def dial(self, target: RelayAddress, expected: NodeId | None) -> QuicConnection:
        """Connect to ``target.target`` through ``target.relay`` (see :meth:`QuicTransport.dial`)."""
        if target.target is None:
            raise TransportError(f"no target peer in {target}")
        if expected is not None and expected != target.target:
            raise TransportError(f"{target} does not lead to {expected.short()}")
        if target.target == self._t.node_id:
            raise TransportError("a relayed address of this node")
        rconn = await self._t.dial(target.host, target.relay)
        path = self._path(rconn.peer_id, target.target, rconn.remote_address)
        if path is None:
            raise TransportError(f"{self._paths.capacity} relayed paths held")
        return await self._t.dial_address(path.addr, path.name, target.target)

    # -- VirtualRouter -------------------------------------------------------------------------

    def send_virtual(self, data: bytes, addr: Any) -> None:
        """qh3 sends ``data`` to a virtual address: on to the relay, for the peer behind it."""
        path = self._ports.get(addr[1])
        conn = self._t.table.peers.get(path.relay) if path is not None else None
        if (path is None or conn is None or len(data) > MAX_RELAYED_PACKET  # (a PMTU probe: as if lost)
                or not conn.send(RelayData(path.peer.raw, data))):
            self.send_dropped += 1
            return
        path.uses += 1
        self.sent += 1

    def virtual_name(self, addr: Any) -> str | None:
        """The relayed address a virtual address stands for."""
        path = self._ports.get(addr[1])
        return path.name if path is not None else None

    # -- messages ------------------------------------------------------------------------------

    def on_message(self, conn: QuicConnection, m: Message) -> None:
        """A relay message arrived on ``conn`` (the transport's ``deliver`` sends them here)."""
        if type(m) is RelayData:
            self._on_data(conn, m)
        elif type(m) is RelayForward:
            self._on_forward(conn, m)
        elif isinstance(m, RelayReserve):
            member = conn.role == "node"
            reason = self.server.reserve(conn.peer_id, m.on) if member else "not_member"
            if not member:
                self.server.counters.reservations_refused += 1
            conn.send(RelayReserved(ok=reason is None, reason=reason or ""))
        elif isinstance(m, RelayReserved):
            fut = self._pending.get(conn.peer_id)
            if fut is not None and not fut.done():
                fut.set_result("" if m.ok else (m.reason or "refused"))

    def _on_data(self, conn: QuicConnection, m: RelayData) -> None:
        try:
            dst = NodeId(m.p)
        except InvalidNodeId:
            return
        member = conn.role == "node" and not conn.closed
        dconn = self._t.table.peers.get(dst) if member else None
        src = conn.peer_id
        if self.server.forward(src, dst, len(m.d), self._t.loop_time(), member=member,
                               route=dconn is not None and not dconn.closed) is not None:
            return
        assert dconn is not None
        if not dconn.send(RelayForward(src.raw, m.d)):
            self.server.count_drop("congested")

    def _on_forward(self, conn: QuicConnection, m: RelayForward) -> None:
        relay = conn.peer_id
        try:
            src = NodeId(m.p)
        except InvalidNodeId:
            return
        path = self._paths.get((relay, src))
        if path is None:
            if relay not in self.reserved_at or conn.role != "node":
                self.unsolicited += 1
                return
            path = self._path(relay, src, conn.remote_address)
            if path is None:
                self.unsolicited += 1
                return
        path.uses += 1
        self.received += 1
        ep = self._t.endpoint
        if ep is not None:
            ep.ingest(m.d, path.addr)

    # -- connections ---------------------------------------------------------------------------

    def released(self, conn: QuicConnection) -> None:
        """``conn`` closed: a relay's paths go; as a relay, the peer's reservation goes."""
        self._paths_of.pop(id(conn), None)
        if not conn.published:
            return
        peer = conn.peer_id
        self.server.peer_lost(peer)
        fut = self._pending.pop(peer, None)
        if fut is not None and not fut.done():
            fut.set_result("connection lost")
        gone = [p for p in self._paths.values() if p.relay == peer]
        if not gone and peer not in self.reserved_at:
            return
        self.reserved_at.discard(peer)
        for p in gone:
            self._drop(p)
        names = {p.name for p in gone}
        for c in list(self._t.table.peers.values()):
            if c.remote_address in names and not c.closed:
                c.abort("relay_lost", TransportError(f"relay {peer.short()} lost"), send=False)
        for cb in list(self.on_relay_lost):
            try:
                cb(peer)
            except Exception:
                log.exception("on_relay_lost callback raised")

    def keeps(self, conn: QuicConnection) -> bool:
        """Whether ``conn`` carries something of the relay's (a reservation either way, a session
        on the relay, or paths to peers): then an ``idle`` close from the node is refused."""
        if not conn.published or conn.closed:
            return False
        peer = conn.peer_id
        kept = (peer in self.reserved_at or self.server.holds(peer)
                or any(p.relay == peer for p in self._paths.values()))
        if kept:
            self.idle_closes_refused += 1
        return kept

    def path_of(self, conn: QuicConnection, proto: qa.Proto) -> str:
        """``direct`` or ``relayed:<relay id>`` for the path qh3 sends ``conn``'s packets on now."""
        addr: Any = getattr(proto.quic, "_remote_addr", None)
        if addr and addr[0] == qa.VIRTUAL_HOST:
            path = self._ports.get(addr[1])
            return f"relayed:{path.relay}" if path is not None else "relayed:?"
        return "direct"

    def published(self, conn: QuicConnection) -> None:
        """``conn`` was published by the transport: remember its path, and tell ``on_relayed``
        when this node dialed it through a relay."""
        path = conn.path
        self._paths_of[id(conn)] = path
        if not conn.outbound or not path.startswith("relayed:") or conn.peer is None:
            return
        try:
            relay = NodeId.parse(path.partition(":")[2])
        except (ValueError, InvalidNodeId):
            return
        for cb in list(self.on_relayed):
            try:
                cb(conn.peer, relay)
            except Exception:
                log.exception("on_relayed callback raised")

    def path_changed(self, conn: QuicConnection) -> None:
        """Re-read ``conn.path`` and tell ``on_path_change`` when it differs from what was last
        seen (the hole-punching side calls this once it moved a connection to a direct path;
        the sweep checks every connection too)."""
        now = conn.path
        before = self._paths_of.get(id(conn))
        self._paths_of[id(conn)] = now
        if before is not None and before != now:
            for cb in list(self.on_path_change):
                try:
                    cb(conn, now)
                except Exception:
                    log.exception("on_path_change callback raised")

    def stats(self) -> dict[str, int]:
        """Counters of both roles (``relay_*`` metrics)."""
        return {**self.server.stats(), "paths": len(self._paths), "reservations_held": len(self.reserved_at),
                "path_packets_sent": self.sent, "path_packets_received": self.received,
                "path_unsolicited": self.unsolicited, "path_send_dropped": self.send_dropped,
                "idle_closes_refused": self.idle_closes_refused}

    # -- internals -----------------------------------------------------------------------------

    def _path(self, relay: NodeId, peer: NodeId, relay_host: str) -> _Path | None:
        key = (relay, peer)
        path = self._paths.get(key)
        if path is not None:
            return path
        if len(self._paths) >= self._paths.capacity:
            return None
        port = self._next_port
        while port in self._ports:
            port = port % _MAX_PORT + 1
        self._next_port = port % _MAX_PORT + 1
        path = _Path(relay, peer, str(RelayAddress(relay, relay_host, peer)), (qa.VIRTUAL_HOST, port))
        self._paths[key] = path
        self._ports[port] = path
        return path

    def _drop(self, path: _Path) -> None:
        self._paths.pop((path.relay, path.peer), None)
        self._ports.pop(path.addr[1], None)

    def _sweep(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)
        self.server.expire(self._t.loop_time())
        live = {c.remote_address for c in self._t.table.peers.values() if not c.closed}
        for p in list(self._paths.values()):
            if p.uses == p.seen and p.name not in live:
                self._drop(p)
            p.seen = p.uses
        held = {id(c) for c in self._t.table.peers.values()}
        for key in [k for k in self._paths_of if k not in held]:
            del self._paths_of[key]
        for c in list(self._t.table.peers.values()):
            self.path_changed(c)
