"""QUIC transport (qh3): authenticated, realm-checked, admission-controlled connections.

Theory of operation
-------------------
One UDP socket per transport (see :mod:`._quic_adapter`) carries every QUIC connection, inbound
and outbound; qh3's core is driven by datagrams and by its own timer (``call_at`` on
``get_timer()``), never by polling. Each connection (:mod:`.quic_connection`) carries quicmesh
frames (``Codec`` framing) on one bidirectional stream opened by the dialer.

Authentication is the sans-IO handshake of :mod:`quicmesh.core.handshake` (TLS 1.3 with the
listener's Ed25519 certificate, then ``Hello`` carrying the dialer's proof bound to the
connection and ``Welcome``, or ``Hello``/``Challenge``/``Proof``/``Welcome`` with a listener that
takes no binding; qh3 servers cannot request client certificates, hence the proof). Every
admission rule is decided by the shared :class:`~quicmesh.runtime.admission.AdmissionTable`;
this module executes the decisions.

Admission, where connections arrive: at the first packet of a new connection the listener
refuses (QUIC close ``CONNECTION_REFUSED``, reason phrase ``max_connections`` or
``max_incoming_handshakes``) when the held connections reached ``max_connections`` or the
handshakes in progress (TLS plus hello/proof) reached ``max_incoming_handshakes``; nothing of
ours exists for a refused attempt. ``max_connections`` is checked again after the proof (slots
may have filled meanwhile): ``Refuse("max_connections")`` + application close. The dialer maps
either form to :class:`~quicmesh.errors.AdmissionRefused` with that reason. ``handshake_timeout``
ends slow or silent handshakes on both sides (:class:`~quicmesh.errors.HandshakeTimeout`).
Outbound dials beyond ``max_connections`` evict the least recently used connection from the LRU
pool, which is closed with code ``evicted``.

Light clients (``Hello.role == "client"``, see :mod:`.gateway`): held in their own table
(``clients()``), never in the peer pool, so they neither count against ``max_connections`` nor
get evicted by it. Admission happens at the ``Hello``, before any per-client state exists:
when ``max_clients`` (set by :meth:`QuicTransport.enable_clients`; 0, the default, serves no
client) are held the listener replies ``Refuse("max_clients")`` and closes, and the client
raises :class:`~quicmesh.errors.AdmissionRefused` ``("max_clients")``; the limit is checked again
after the proof. A client that authenticates again under the same id supersedes its previous
connection (closed with code ``duplicate``). A transport created with ``role="client"`` dials
only: it refuses every incoming attempt (``client_only``).

Duplicates: at most one connection per peer pair, decided by
:func:`~quicmesh.core.handshake.duplicate_survivor`. The loser is closed with code ``duplicate``
and ``dial()`` on both sides returns the survivor. In a simultaneous dial a listener whose own
dial the peer answered and would win holds the peer's verified attempt until that dial is done,
then decides on it (``duplicate``), so the loser never reaches either node; otherwise it admits
the attempt, and its own dials the peer never answered end, returning it (``should_park``).

Per source and address validation: at most ``max_handshakes_per_source`` handshakes in progress
per source IP address (refused at the first packet, reason ``max_handshakes_per_source``); from
``retry_threshold`` handshakes in progress on (0: always), the endpoint answers a new dialer's
first Initial with a QUIC Retry and creates the connection only when the Initial comes back with
the token, from the same address (:meth:`QuicTransport.retry_stats`).

Counters: ``refused_total`` counts, per reason, the attempts the listener ended before admission
(``max_connections``, ``max_incoming_handshakes``, ``realm``, ``not_admitted`` (authority mode: a
missing, expired, revoked or foreign certificate), ``auth``, ``peer_id``, ``version``,
``duplicate``, ``handshake_timeout``, ``tls`` for a failed TLS handshake, ``shutdown``) and also
``protocol``: connections closed for a malformed frame, before or after admission.

Close codes travel as the QUIC application error code and as the reason phrase ``"code: text"``.
A refused attempt leaves no state (ours or qh3's): refusals at the first packet drop the qh3
connection right after the close is sent; a close received from the peer ends the connection at
once instead of after qh3's draining period. Under a flood the listener's socket buffers are 4 MiB
(the default ~208 KiB overflowed at a few hundred concurrent dials, and each loss costs a PTO).
``on_connection_lost`` fires exactly once per published connection, and every per-connection
structure is released at that moment.

Relays (#13): ``relay:...`` addresses are dialed through a relay, and the relay service and the
relayed paths live in :attr:`QuicTransport.relay` (:mod:`.relay_paths`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Callable

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..config import TransportConfig
from ..config.relay import RelayConfig
from ..core import handshake as hs
from ..core.relay import RelayAddress, is_relay_address
from ..core.trust import Trust
from ..core.wire import Codec, Message
from ..errors import ConnectionLost, ContainerFull, TransportError
from ..identity import KeyPair, NodeId
from . import _quic_adapter as qa
from . import _quic_endpoint as qe
from .admission import AdmissionTable
from .quic_connection import Duplicate, QuicConnection
from .quic_send import WriteThrough
from .relay_paths import RELAY_TYPES, RelayPaths
from .transport import Connection, Transport, TransportEvents, TransportStats

__all__ = ["QuicTransport"]

log = logging.getLogger("quicmesh.quic")

_REFUSED_MEMORY = 4096
_SOCKET_BUFFER = 4 * 1024 * 1024


class QuicTransport(Transport):
    """The :class:`~quicmesh.runtime.transport.Transport` contract over QUIC (qh3)."""

    connection_class: type[QuicConnection] = QuicConnection
    """The connection class instantiated for every attempt (tests substitute misbehaving peers)."""

    def __init__(
        self,
        keypair: KeyPair,
        realm: str,
        config: TransportConfig,
        codec: Codec,
        *,
        listen: str = "127.0.0.1:0",
        registry: ContainerRegistry | None = None,
        role: str = "node",
        trust: Trust | None = None,
    ) -> None:
        if role not in ("node", "client"):
            raise ValueError(f"role must be 'node' or 'client', got {role!r}")
        if codec.max_frame_size > config.max_frame_size:
            codec = Codec(codec.types, max_frame_size=config.max_frame_size)
        self._keypair = keypair
        self._role = role
        self.config = config
        """The transport's configuration (read by its connections)."""
        self.codec = codec
        """The frame codec (shared by its connections)."""
        self.local = hs.Local(keypair.node_id, trust.wire_id if trust is not None else realm, os.urandom(8), role,
                              trust, time.time() - time.monotonic())
        """This end of every handshake: node id, realm (wire id), instance, role, trust (the
        certificates of authority mode) and the wall clock's offset from the loop's clock."""
        self._listen = listen
        self._registry = registry
        self._events: TransportEvents | None = None
        self._endpoint: qe.Endpoint | None = None
        self._address = ""
        self.table: AdmissionTable[QuicConnection] = AdmissionTable(
            keypair.node_id, config, on_evict=self._evicted, registry=registry
        )
        """Every connection and attempt, and the admission rules."""
        self.touch: Callable[[NodeId], object] = self.table.peers.get
        """Mark a peer's connection used in the LRU pool (called once per flush: no wrapper)."""
        self.counters: TransportStats = self.table.stats
        """The live counters (connections update them; :meth:`stats` returns a snapshot)."""
        self.through: WriteThrough = WriteThrough()  # #14: see quic_send.WriteThrough
        self._dials: LruMap[tuple[str, NodeId | None], asyncio.Future[QuicConnection]] = LruMap(
            "transport.dial_requests", self.table.max_dials, Overflow.REJECT, registry=registry
        )
        self._waiters: LruMap[NodeId, list[asyncio.Future[QuicConnection]]] = LruMap(
            "transport.dial_waiters", self.table.max_dials, Overflow.REJECT, registry=registry
        )  # each list holds the dials to one peer that lost the tie-break (<= dials in flight)
        # qh3 connections: held, handshaking and closing ones (a close drains for up to 3 PTO)
        t = self.table
        self._protos: LruMap[qa.Proto, None] = LruMap(
            "transport.quic_connections", 2 * (t.max_connections + t.max_incoming_handshakes) + t.max_dials,
            Overflow.REJECT, registry=registry,
        )
        self._refused_cids: LruMap[bytes, str] = LruMap(
            "transport.refused_attempts", _REFUSED_MEMORY, registry=registry
        )  # a refused attempt's later datagrams are refused again without being counted again
        self._idle = asyncio.Event()
        self._idle.set()
        self._client_cfg = qa.client_configuration(config)
        self._relayed_cfg = qa.relayed(self._client_cfg)
        self._local_cfg = qa.local_configuration(self._client_cfg, config.max_datagram_size)  # #14
        self.relay = RelayPaths(self, RelayConfig(), registry)
        """#13: relayed paths of this transport and the relay service (:mod:`.relay_paths`)."""

    def configure_relay(self, config: RelayConfig) -> None:
        """Use ``config`` for the relay service (before :meth:`start`)."""
        self.relay.server.close()
        self.relay = RelayPaths(self, config, self._registry)

    @property
    def endpoint(self) -> qe.Endpoint | None:
        """The UDP endpoint once started."""
        return self._endpoint

    def loop_time(self) -> float:
        """The event loop's clock."""
        return asyncio.get_running_loop().time()

    def path_of(self, conn: QuicConnection, proto: qa.Proto) -> str:
        """``direct`` or ``relayed:<relay id>``: the path ``conn``'s packets take now."""
        return self.relay.path_of(conn, proto)

    def keeps(self, conn: QuicConnection) -> bool:
        """Whether ``conn`` must stay open although idle (see :meth:`RelayPaths.keeps`)."""
        return self.relay.keeps(conn)

    # -- ConnectionHost (what connections call) ----------------------------------------------

    def sign_proof(self, transcript: bytes) -> bytes:
        """The dialer's signature over the auth transcript (see :meth:`_proof_signature`)."""
        return self._proof_signature(transcript)

    def nonce(self, n: int) -> bytes:
        """``n`` fresh random bytes for a challenge."""
        return os.urandom(n)

    def count_refusal(self, reason: str) -> None:
        """Count an attempt ended before admission."""
        self.table.count_refusal(reason)

    def alive(self, conn: QuicConnection) -> None:
        """``conn``'s peer sent datagrams lately: tell the owner (``on_alive``), if it asks."""
        on_alive = getattr(self._events, "on_alive", None)
        if on_alive is not None and conn.published:
            on_alive(conn)

    def deliver(self, conn: QuicConnection, message: Message) -> None:
        """An application message arrived on ``conn``."""
        if type(message) in RELAY_TYPES:
            self.relay.on_message(conn, message)
            return
        if self._events is not None:
            try:
                self._events.on_message(conn, message)
            except Exception:
                log.exception("on_message raised")

    def admission(self, conn: QuicConnection, need: hs.NeedAdmission) -> None:
        """Decide on an inbound attempt (at its Hello, or once its proof verified)."""
        table = self.table
        d = table.decide(conn, need.stage, need.peer, need.role)
        if d.verdict == "park":
            table.park(need.peer, conn)
            return
        if d.verdict == "refuse":
            conn.decline(d.code, d.reason)
            return
        if d.supersede is not None:
            d.supersede.abort("duplicate", None, reason="superseded", send=True)
        conn.admit()
        for dial in d.redundant:  # our own dials the peer never answered: their dial() returns conn
            dial.abort("duplicate", None, reason="superseded", send=True)

    def established(self, conn: QuicConnection) -> None:
        """``conn`` finished its handshake: (dialer) apply the duplicate rule, then publish."""
        peer = conn.peer
        assert peer is not None
        if conn.outbound:
            assert conn.ready is not None
            d = self.table.decide_dialed(conn, peer)
            if d.verdict == "refuse":
                assert d.survivor is not None
                conn.ready.set_result(d.survivor)
                conn.abort("duplicate", None, reason="superseded", send=True)
                return
            if d.supersede is not None:
                d.supersede.abort("duplicate", None, reason="superseded", send=True)
        self._publish(conn, peer)
        if conn.ready is not None and not conn.closed and not conn.ready.done():
            conn.ready.set_result(conn)

    def released(self, conn: QuicConnection, error: Exception | None) -> None:
        """``conn`` closed: drop it from every table; tell the node once if it was published."""
        resume = self.table.release(conn, conn.peer)
        self.relay.released(conn)
        if resume is not None:
            self._resume_parked(resume)
        if conn.published and self._events is not None:
            try:
                self._events.on_connection_lost(conn, error)
            except Exception:
                log.exception("on_connection_lost raised")

    # -- Transport API -------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        """This transport's node id."""
        return self._keypair.node_id

    @property
    def address(self) -> str:
        """The bound ``HOST:PORT`` once started."""
        return self._address

    @property
    def max_clients(self) -> int:
        """Light clients held at once; 0 (the default) refuses every client (``max_clients``).
        Set by :meth:`enable_clients`."""
        return self.table.max_clients

    async def start(self, events: TransportEvents) -> str:
        """Bind the UDP socket and start accepting; return ``HOST:PORT``."""
        if self._endpoint is not None:
            return self._address
        self._events = events
        host, port = _split(self._listen)
        server_cfg = (qa.server_configuration(self._keypair, self.config) if self._role == "node"
                      else qa.refusing_configuration(self.config))  # a light client admits no one
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # A burst of Initials (~1.3 kB each, two per ClientHello) overflows the default ~208 KiB
            # receive buffer at a few hundred concurrent dials; every drop costs a 1 s PTO.
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
            sock.bind((host, port))
            batched = self.config.batched_udp and sys.platform == "linux"  # #14: recvmmsg, GRO, GSO
            endpoint = await qe.open_endpoint(
                lambda: qe.Endpoint(configuration=server_cfg, create_protocol=self._incoming,
                                    sock=None if batched else sock, retry_wanted=self.table.retry_wanted,
                                    local_datagram_size=self.config.max_datagram_size),
                sock, batched=batched)
        except BaseException:
            sock.close()
            raise
        self._endpoint = endpoint
        endpoint.router = self.relay
        self.relay.start()
        name = endpoint.transport.get_extra_info("sockname") if endpoint.transport else (host, port)
        self._address = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
        return self._address

    async def dial(self, address: str, expected: NodeId | None = None) -> Connection:
        """Connect to ``address`` (see :meth:`Transport.dial` for the errors raised); a relayed
        address (``relay:<relay>@HOST:PORT/<peer>``, :class:`~quicmesh.core.relay.RelayAddress`)
        goes through that relay."""
        if self._endpoint is None or self.table.closing:
            raise TransportError("transport is not running")
        relayed: RelayAddress | None = None
        if is_relay_address(address):
            try:
                relayed = RelayAddress.parse(address)
            except ValueError as exc:
                raise TransportError(str(exc)) from None
            if relayed.target is None:  # a relay's own announcement: dial the relay itself
                return await self.dial(relayed.host, relayed.relay)
        existing = self.get(expected) if expected is not None else next(  # an address dialed before
            (c for c in self.table.peers.values() if c.outbound and c.remote_address == address and not c.closed), None)
        if existing is not None:
            return existing
        key = (address, expected)
        pending = self._dials.peek(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[QuicConnection] = asyncio.get_running_loop().create_future()
        try:
            self._dials.set(key, fut)
        except ContainerFull:
            raise TransportError(f"{self.table.max_dials} dials in flight") from None
        try:
            conn = await (self.relay.dial(relayed, expected) if relayed is not None else self._dial(address, expected))
            fut.set_result(conn)
            return conn
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: sharers re-raise it; no "never retrieved" warning
            raise
        finally:
            self._dials.pop(key)

    def get(self, peer: NodeId) -> Connection | None:
        """The open connection to ``peer``, if any."""
        return self.table.get(peer)

    def connections(self) -> list[Connection]:
        """Every open connection to a mesh peer (light clients are listed by :meth:`clients`)."""
        return [c for c in self.table.peers.values() if not c.closed]

    def enable_clients(self, max_clients: int) -> None:
        """Accept up to ``max_clients`` light clients (``Hello.role == "client"``) besides the
        ``max_connections`` mesh peers. A client over the limit is refused at its ``Hello``
        (:class:`~quicmesh.errors.AdmissionRefused` ``("max_clients")`` on its side). Clients are
        keyed by node id: a client that reconnects replaces its previous connection."""
        self.table.enable_clients(max_clients)

    def clients(self) -> list[Connection]:
        """Every open light-client connection."""
        return [c for c in self.table.clients.values() if not c.closed]

    def get_client(self, client: NodeId) -> Connection | None:
        """The open connection of light client ``client``, if any."""
        return self.table.get_client(client)

    def stats(self) -> TransportStats:
        """A snapshot of the counters (``handshakes_in_progress`` counts incoming handshakes)."""
        s = self.table.stats
        return TransportStats(
            connections=len(self.table.peers),
            handshakes_in_progress=len(self.table.incoming),
            accepted_total=s.accepted_total,
            dialed_total=s.dialed_total,
            refused_total=dict(s.refused_total),
            evicted_total=s.evicted_total,
            dropped_frames_total=s.dropped_frames_total,
            auth_failures_total=s.auth_failures_total, handshakes_early_total=s.handshakes_early_total,
        )

    def quic_state(self) -> dict[str, int]:
        """Sizes of every per-connection structure, ours and qh3's (for tests and /health)."""
        t = self.table
        return {
            "connections": len(t.peers),
            "clients": len(t.clients),
            "handshakes": len(t.incoming) + len(t.dialing),
            "incoming_handshakes": len(t.incoming),
            "dials": len(self._dials),
            "waiters": len(self._waiters),
            "parked": len(t.parked),
            "quic_connections": len(self._protos),
            "routes": self._endpoint.routes if self._endpoint is not None else 0,
            "handshake_sources": len(t.by_source),
        }

    def retry_stats(self) -> dict[str, int]:
        """QUIC Retry counters since start: ``retries_sent`` (first Initials answered with a
        Retry) and ``retries_validated`` (connections created from a valid token)."""
        ep = self._endpoint
        return {"retries_sent": ep.retries_sent if ep is not None else 0,
                "retries_validated": ep.retries_validated if ep is not None else 0}

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Return once no QUIC connection state is left (closing ones finished draining)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, *, linger: bool = True) -> None:
        """Close every connection (code ``shutdown``), wait briefly for the closes (not with
        ``linger=False``: #14, a light client's close sends the close and returns), unbind."""
        t = self.table
        if t.closing:
            return
        t.closing = True
        t.parked.clear()
        for c in [*t.peers.values(), *t.clients.values(), *t.handshakes()]:
            c.abort("shutdown", None if c.published else TransportError("transport stopped"), send=True)
        for waiters in self._waiters.values():
            for w in waiters:
                if not w.done():
                    w.set_exception(TransportError("transport stopped"))
        self._waiters.clear()
        if linger:
            with contextlib.suppress(TimeoutError):
                await self.wait_idle(min(2.0, self.config.handshake_timeout))
        for p in list(self._protos.keys()):
            p.abandon()
        ep, self._endpoint = self._endpoint, None
        if ep is not None and ep.transport is not None:
            ep.transport.close()
            await asyncio.sleep(0)  # asyncio closes the socket one loop turn later: free the port now
        t.close()
        self.relay.stop()
        self._protos.close()
        self._dials.close()
        self._waiters.close()
        self._refused_cids.close()

    # -- hooks (overridable in tests) ----------------------------------------------------

    def _proof_signature(self, transcript: bytes) -> bytes:
        """The dialer's signature over the auth transcript."""
        return self._keypair.sign(transcript)

    # -- internals: creation -------------------------------------------------------------

    def _track(self, proto: qa.Proto) -> bool:
        """Count ``proto`` in; ``False`` when ``transport.quic_connections`` is full."""
        try:
            self._protos.set(proto, None)
        except ContainerFull:
            return False
        self._idle.clear()
        proto.on_terminated = self._untrack
        return True

    def _untrack(self, proto: qa.Proto) -> None:
        self._protos.pop(proto)
        if not self._protos:
            self._idle.set()

    def _incoming(self, quic: qa.QhConnection, source: str = "") -> qa.Proto:
        """Factory the endpoint calls at the first packet of a new connection (``source``: its
        IP address): admission happens here."""
        proto = qa.Proto(quic)
        reason = "client_only" if self._role == "client" else self.table.refusal_at_first_packet(source)
        if self.table.closing:
            reason = "shutdown"
        if not self._track(proto) and reason is None:
            reason = "max_incoming_handshakes"  # too many connections still closing: dropped at once
        if reason is not None:
            dcid = quic.original_destination_connection_id
            if self._refused_cids.peek(dcid) is None:  # not a later datagram of a refused attempt
                self.table.count_refusal(reason)
            # the dialer may address its next datagrams to either id
            self._refused_cids.set(dcid, reason)
            self._refused_cids.set(quic.host_cid, reason)
            proto.refuse_reason = reason
            return proto
        conn = self.connection_class(self, proto, outbound=False, remote_address="?")
        self.table.begin_incoming(conn, source)
        return proto

    async def _dial(self, address: str, expected: NodeId | None) -> QuicConnection:
        host, port = _split(address)
        try:  # a numeric address needs no resolver thread: the dial is in flight at once
            addr: tuple[str, int] = (str(ipaddress.ip_address(host)), port)
        except ValueError:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
            addr = (str(infos[0][4][0]), int(infos[0][4][1]))
        return await self.dial_address(addr, f"{addr[0]}:{addr[1]}", expected)

    async def dial_address(self, addr: tuple[str, int], name: str, expected: NodeId | None) -> QuicConnection:
        """Dial the resolved (or virtual) ``addr``, known as ``name``."""
        ep = self._endpoint
        if ep is None or self.table.closing:
            raise TransportError("transport is not running")
        cfg = (self._relayed_cfg if addr[0] == qa.VIRTUAL_HOST
               else self._local_cfg if qa.is_local(addr[0]) else self._client_cfg)
        proto = qa.Proto(qa.new_client_connection(cfg))
        if not self._track(proto):
            raise TransportError(f"{self._protos.capacity} QUIC connections held or closing")
        conn = self.connection_class(self, proto, outbound=True, remote_address=name, expected=expected)
        self.table.begin_dial(conn)  # room guaranteed: one per entry of _dials
        ep.add_outbound(proto)
        proto.connect(addr)
        assert conn.ready is not None
        try:
            return await conn.ready
        except Duplicate as dup:
            return await self._await_survivor(dup.peer)
        except asyncio.CancelledError:
            conn.abort("normal", TransportError("dial cancelled"), send=True)
            raise

    async def _await_survivor(self, peer: NodeId) -> QuicConnection:
        existing = self.table.get(peer)
        if existing is not None:
            return existing
        fut: asyncio.Future[QuicConnection] = asyncio.get_running_loop().create_future()
        lst = self._waiters.peek(peer)
        if lst is None:
            lst = []  # bounded: the dials to this peer in flight
            self._waiters.set(peer, lst)
        lst.append(fut)
        try:
            return await asyncio.wait_for(fut, self.config.handshake_timeout)
        except TimeoutError:
            raise ConnectionLost(f"lost the duplicate tie-break and no connection to {peer.short()} followed") from None
        finally:
            lst = self._waiters.peek(peer)
            if lst is not None:
                if fut in lst:
                    lst.remove(fut)
                if not lst:
                    self._waiters.pop(peer)

    # -- internals: publication ----------------------------------------------------------

    def _resume_parked(self, peer: NodeId) -> None:
        """Our dial to ``peer`` finished (either way): decide on its parked inbound attempt."""
        parked = self.table.unpark(peer)
        if parked is not None:
            self.admission(parked, hs.NeedAdmission("proof", peer, parked.role, parked.peer_instance))

    def _publish(self, conn: QuicConnection, peer: NodeId) -> None:
        s = self.table.stats
        if conn.outbound:
            s.dialed_total += 1
        else:
            s.accepted_total += 1
        conn.open()
        self.table.publish(conn, peer, conn.role)  # an outbound dial into a full pool evicts the LRU one
        self.relay.published(conn)
        if conn.role != "client":
            waiters = self._waiters.pop(peer)
            for w in waiters or ():
                if not w.done():
                    w.set_result(conn)
        if self._events is not None:
            try:
                self._events.on_connection(conn)
            except Exception:
                log.exception("on_connection raised")
        if conn.outbound:
            self._resume_parked(peer)

    def _evicted(self, peer: NodeId, conn: QuicConnection) -> None:
        self.table.stats.evicted_total += 1
        conn.abort("evicted", None, reason="connection pool full", send=True)


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TransportError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)
