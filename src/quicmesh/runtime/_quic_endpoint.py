"""The endpoint: one UDP socket for every connection of a transport (see :mod:`._quic_adapter`,
whose theory of operation covers both; together they are the only modules that touch qh3).

#14 (batched UDP): under qh3's optimized datagram transport (``transport.batched_udp``, Linux)
the socket is read with ``recvmmsg`` and UDP GRO, and :meth:`Endpoint.datagrams_received` hands
each run of a connection's packets to QUIC at once (one transmit, one ACK, per run); a
connection's transmit leaves as one ``sendmsg`` per run of equal-sized datagrams (UDP GSO)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

from qh3._hazmat import pull_quic_header as _pull_quic_header
from qh3.asyncio._transport import create_optimized_datagram_transport
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.asyncio.server import QuicServer
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.packet import QuicPacketType

from ._quic_adapter import Proto, is_local, local_configuration, relayed
from ._quic_retry import RetryTokens
from .relay_wire import VIRTUAL_HOST, VirtualRouter, _Wire

__all__ = ["Endpoint", "break_cycles", "connection_binding", "open_endpoint"]

log = logging.getLogger("quicmesh.quic")

_INITIAL = int(QuicPacketType.INITIAL)
_MIN_INITIAL = 1200
_RECV_BURST = 32
"""Datagrams read per socket readiness callback (qh3's own optimized transport reads 32 too)."""
_MAX_DATAGRAM = 65536


class Endpoint(QuicServer):
    """qh3's server datagram protocol, also routing packets of outbound connections.

    Given its (non-blocking) socket, it reads up to ``_RECV_BURST`` datagrams per readiness
    callback: asyncio's datagram transport reads exactly one per event-loop iteration, so a
    busy loop received one packet (and sent one ACK) per turn while a peer sent several. The
    rest waited in the kernel buffer, RTT grew to seconds, and the unsent stream data piled up
    in qh3's native send buffer (~91 B per MFind-sending subscribe/close cycle, up to
    ``send_buffer_bytes`` per connection). Under qh3's batching transport
    (``transport.batched_udp``) there is no socket here: the transport reads in bursts and
    hands runs of datagrams to :meth:`datagrams_received`."""

    _retry: Any
    """qh3's retry handler slot, set per datagram by :meth:`_decide_retry` (``None``: no Retry)."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        create_protocol: Callable[..., Proto],
        sock: socket.socket | None = None,
        retry_wanted: Callable[[], bool] | None = None,
        local_datagram_size: int | None = None,
    ) -> None:
        self._factory = create_protocol
        self._sock = sock
        super().__init__(configuration=configuration, create_protocol=self._create)
        self._tokens = RetryTokens() if retry_wanted is not None else None
        self._retry_wanted = retry_wanted
        self._source: Any = None
        self._dcid = b""
        self.retries_sent = 0
        """Retry packets sent (first Initials answered with a Retry)."""
        self.retries_validated = 0
        """Initials that came back with a valid Retry token (their connection was created)."""
        self.router: VirtualRouter | None = None
        """#13: where datagrams to virtual addresses go (set by the transport)."""
        self._relayed_cfg = relayed(configuration)
        self._local_cfg = (local_configuration(configuration, local_datagram_size)
                           if local_datagram_size is not None else None)
        """#14: the configuration for connections from dialers on this host (larger datagrams)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_Wire(transport, self))  # type: ignore[arg-type]

    def send_virtual(self, data: bytes, addr: Any) -> None:
        """:class:`VirtualRouter`: hand a datagram for a virtual address to :attr:`router`."""
        router = self.router
        if router is not None:
            router.send_virtual(data, addr)

    def virtual_name(self, addr: Any) -> str | None:
        """:class:`VirtualRouter`: the name of a virtual address, from :attr:`router`."""
        router = self.router
        return router.virtual_name(addr) if router is not None else None

    def ingest(self, data: bytes, addr: Any) -> None:
        """#13: a datagram that arrived through a relay, from virtual address ``addr`` (no
        Retry: the relay already authenticated the sender)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        direct = self._configuration
        try:
            self._source = addr
            self._configuration = self._relayed_cfg  # a new connection gets the relayed datagram size
            QuicServer.datagram_received(self, data, addr)
        except Exception as exc:  # routing never raises out of the loop
            log.warning("dropping a relayed datagram: %s: %s", type(exc).__name__, exc)
        finally:
            self._configuration = direct
            self._source = None

    def _create(self, quic: QuicConnection, stream_handler: Any = None) -> Proto:
        src = self._source
        source = f"{src[0]}" if src else ""
        if src and src[0] == VIRTUAL_HOST and self.router is not None:
            source = self.router.virtual_name(src) or source  # per relayed peer, not one for all
        proto = self._factory(quic, source)
        # qh3 routes the new connection under the packet's id and its own; remember them for
        # O(1) removal (after a Retry the packet's id is the Retry's, not the original one)
        proto.cids.update((quic.original_destination_connection_id, quic.host_cid, self._dcid))
        if self._retry is not None:
            self.retries_validated += 1
        return proto

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        """#14: datagrams from one source in arrival order (a batched read: ``recvmmsg``, UDP
        GRO): each run of short-header packets for one connection goes to it at once; the
        rest (long headers: handshakes, new connections, Retry) one by one as before."""
        protocols = self._protocols
        end = 1 + self._configuration.connection_id_length
        i, n = 0, len(data)
        while i < n:
            d = data[i]
            proto = protocols.get(d[1:end]) if d and not d[0] & 0x80 else None
            if not isinstance(proto, Proto):
                self._route(d, addr)
                i += 1
                continue
            cid, j = d[1:end], i + 1
            while j < n and data[j] and not data[j][0] & 0x80 and data[j][1:end] == cid:
                j += 1
            if j == i + 1:
                proto.datagram_received(d, addr)
            else:
                proto.datagrams_received(data[i:j], addr)
            i = j

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self._route(data, addr)
        sock = self._sock  # None under qh3's batching transport, which reads in bursts itself
        if sock is None:
            return
        for _ in range(_RECV_BURST - 1):  # the rest of the burst, without waiting a loop turn
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. ICMP port unreachable: as asyncio's own read reports it
                self.error_received(exc)
                return
            self._route(data, addr)

    def _route(self, data: bytes | str, addr: Any) -> None:
        direct = self._configuration
        try:
            self._source = addr
            if isinstance(data, bytes) and data and data[0] & 0x80:  # a long header: may open one
                if self._tokens is not None:
                    self._decide_retry(data)
                if self._local_cfg is not None and is_local(str(addr[0])):
                    self._configuration = self._local_cfg  # a new connection gets the local size
            super().datagram_received(data, addr)
        except Exception as exc:  # routing never raises out of the loop
            log.warning("dropping a datagram from %s: %s: %s", addr, type(exc).__name__, exc)
        finally:
            self._configuration = direct
            self._retry = None
            self._source = None
            self._dcid = b""

    def _decide_retry(self, data: bytes) -> None:
        """For a long-header packet: whether qh3 must answer it with a Retry (a first Initial
        while ``retry_wanted()``) or validate its token (an Initial that carries one)."""
        try:
            header = _pull_quic_header(data, 0, self._configuration.connection_id_length)
        except ValueError:
            return  # qh3 drops it too
        if header[1] != _INITIAL or len(data) < _MIN_INITIAL or header[3] in self._protocols:
            return
        self._dcid = header[3]
        assert self._retry_wanted is not None
        if header[5]:  # a token: only one we issued, for this address, opens a connection
            self._retry = self._tokens
        elif self._retry_wanted():
            self._retry = self._tokens
            self.retries_sent += 1

    @property
    def routes(self) -> int:
        """Connection ids in the routing table (qh3's own per-connection state)."""
        return len(self._protocols)

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        """The UDP transport (asyncio's, not the relay-aware view connections send through)."""
        t: Any = self._transport
        raw: asyncio.DatagramTransport | None = t._t if isinstance(t, _Wire) else t
        return raw

    def add_outbound(self, proto: Proto) -> None:
        """Route the packets of an outbound connection (as qh3's ``connect`` does per socket)."""
        assert self._transport is not None
        proto.connection_made(self._transport)
        proto._connection_id_issued_handler = partial(self._connection_id_issued, protocol=proto)
        proto._connection_id_retired_handler = partial(self._connection_id_retired, protocol=proto)
        proto._connection_terminated_handler = partial(self._connection_terminated, protocol=proto)
        self._protocols[proto.quic.host_cid] = proto
        proto.cids.add(proto.quic.host_cid)

    def _connection_id_issued(self, cid: bytes, protocol: QuicConnectionProtocol) -> None:
        self._protocols[cid] = protocol
        if isinstance(protocol, Proto):
            protocol.cids.add(cid)

    def _connection_id_retired(self, cid: bytes, protocol: QuicConnectionProtocol) -> None:
        if self._protocols.get(cid) is protocol:
            del self._protocols[cid]
        if isinstance(protocol, Proto):
            protocol.cids.discard(cid)

    def _connection_terminated(self, protocol: QuicConnectionProtocol) -> None:
        # qh3 scans the whole routing table here (O(connections) per close); ours is O(1)
        if isinstance(protocol, Proto):
            for cid in protocol.cids:
                if self._protocols.get(cid) is protocol:
                    del self._protocols[cid]
            protocol.cids.clear()
            break_cycles(protocol.quic)
        else:  # pragma: no cover - every protocol we create is a Proto
            super()._connection_terminated(protocol)


def _no_key_update(*_: object) -> None:
    """A finished connection's TLS takes no more keys (in place of a method that closes a cycle)."""


def break_cycles(quic: QuicConnection) -> None:
    """Cut the reference cycles inside a terminated qh3 connection, so reference counting frees
    it (and the Rust state its TLS holds) at once instead of a later garbage collection: the
    connection -> its TLS bridge -> the connection's ``_set_version``, and the bridge -> its TLS
    context -> the bridge's ``_on_alpn`` / ``_on_traffic_secret``. Nothing calls them once the
    connection is out of the routing table. Under churn of light clients, with the node's
    garbage-collector setting (``gc_young_threshold``) these cycles held the gateway's RSS up to
    ~60 MB above its level between collections (#14)."""
    bridge: Any = getattr(quic, "_tls", None)
    if bridge is None:
        return
    if hasattr(bridge, "_version_change_handler"):
        bridge._version_change_handler = None  # checked for None by qh3
    tls: Any = getattr(bridge, "tls", None)
    if tls is not None:
        tls.alpn_cb = None  # checked for None by qh3
        tls.update_traffic_key_cb = _no_key_update


def connection_binding(quic: QuicConnection) -> bytes:
    """What names this connection alike at both ends, for a proof in the ``Hello``
    (:data:`quicmesh.core.handshake.EARLY_LABEL`): the listener's and the dialer's initial source
    connection ids and the original destination id, each length-prefixed. qh3 checks each end's
    against the peer's transport parameters, which TLS authenticates, and the listener draws its
    own from ``os.urandom`` per connection. Empty when qh3 does not hold them (the handshake then
    takes the ``Challenge``'s round trip)."""
    bridge: Any = getattr(quic, "_tls", None)
    local = getattr(bridge, "local_initial_source_connection_id", None)
    remote = getattr(bridge, "remote_initial_source_connection_id", None)
    odcid = getattr(bridge, "original_destination_connection_id", None)
    if not (isinstance(local, bytes) and isinstance(remote, bytes) and isinstance(odcid, bytes)
            and local and remote and odcid):
        return b""
    listener, dialer = (remote, local) if quic.configuration.is_client else (local, remote)
    return b"".join(len(p).to_bytes(1, "big") + p for p in (listener, dialer, odcid))


async def open_endpoint(factory: Callable[[], Endpoint], sock: socket.socket, *, batched: bool) -> Endpoint:
    """Serve ``sock`` (bound) with the endpoint ``factory`` makes: through qh3's batching
    transport (``batched``: recvmmsg, UDP GRO and GSO) or asyncio's own (one datagram a call)."""
    loop = asyncio.get_running_loop()
    if batched:
        sock.setblocking(False)
        _, endpoint = await create_optimized_datagram_transport(loop, factory, sock)
    else:
        _, endpoint = await loop.create_datagram_endpoint(factory, sock=sock)
    assert isinstance(endpoint, Endpoint)
    return endpoint
