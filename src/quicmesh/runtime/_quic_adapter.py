"""The only module that touches qh3: configurations, the per-connection protocol, the endpoint.

Theory of operation
-------------------
One UDP socket per transport carries every connection, inbound and outbound: :class:`Endpoint`
is qh3's ``QuicServer`` (which routes datagrams to connections by destination connection id) with
outbound connections registered in the same routing table, so a dialer's packets leave from the
address it listens on. Each QUIC connection is driven by a :class:`Proto` (qh3's
``QuicConnectionProtocol``): datagrams and qh3's own ``call_at`` timer feed the sans-IO core, and
events go to a :class:`Sink` (the quicmesh connection) instead of asyncio stream readers.

Address validation: :class:`Endpoint` answers the first Initial of a new connection with a QUIC
Retry (RFC 9000 section 8.1) while its ``retry_wanted()`` says so (the transport turns it on
when handshakes pile up), and always validates a Retry token an Initial carries. Only a dialer
that receives at its claimed source address can come back with the token, so a spoofed-source
flood creates no connection state at all. Tokens (:class:`RetryTokens`) are HMAC-SHA256 over the
source address, both connection ids and an issue time, valid for ``RETRY_TOKEN_TTL`` seconds.

Relayed paths (#13): a datagram sent to a *virtual address* (host :data:`VIRTUAL_HOST`, a
per-path port; see :mod:`.relay_paths`) goes to the endpoint's :class:`VirtualRouter` instead of
the socket, and :meth:`Endpoint.ingest` takes in datagrams that arrived through a relay as if
they came from such an address. qh3 (its Rust core parses addresses) sees ordinary IPv6
addresses from the discard-only prefix ``100::/64`` (RFC 6666), which no real peer can use.

Datagram sizes (#14): connections between loopback addresses use datagrams of
``transport.max_datagram_size`` at both ends from the first packet (:func:`local_configuration`;
the endpoint picks it for a loopback source, the transport for a loopback target), a dialer
advertises what it accepts (:class:`_Dialer`), and other paths keep qh3's usual sizes (see the
section comment below for why qh3's own search above 1,472 bytes is not used).

Hardening against qh3 2.1.0 (measured): every entry point into qh3 (datagram, timer, transmit) is
wrapped, so an exception raised by the core -- e.g. a failed handshake -- closes that one
connection instead of escaping into the event loop; a connection whose core cannot even close is
abandoned (routing entries, timer and state dropped at once).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import ipaddress
import logging
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from qh3._hazmat import Buffer
from qh3._hazmat import Certificate as _X509Certificate
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.quic import events as qevents
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.packet import QuicErrorCode
from qh3.quic.tls_bridge import QuicTlsBridge
from qh3.tls import ExtensionType, SignatureAlgorithm, load_pem_private_key

from ..config import TransportConfig
from ..identity import KeyPair, make_certificate
from ._quic_retry import RetryTokens
from ._quic_timers import QuicTimers
from .relay_wire import VIRTUAL_HOST, VirtualRouter, _Wire

__all__ = [
    "RELAYED_DATAGRAM_SIZE",
    "VIRTUAL_HOST",
    "ConnectionTerminated",
    "HandshakeCompleted",
    "Proto",
    "QhConnection",
    "QuicEvent",
    "RetryTokens",
    "Sink",
    "StreamDataReceived",
    "VirtualRouter",
    "client_configuration",
    "datagram_size",
    "is_local",
    "local_configuration",
    "new_client_connection",
    "refusing_configuration",
    "relayed",
    "server_configuration",
]

log = logging.getLogger("quicmesh.quic")


class _DropPeerCloseWarnings(logging.Filter):
    """qh3 2.1.0 logs a WARNING for every close received from a peer ("Native peer close"):
    an ordinary event for a mesh (the transport reports it through ``on_connection_lost``), and
    one log line per churned connection for a daemon. Only that message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Native peer close"))


_qh3_log = logging.getLogger("quic")
if not any(isinstance(f, _DropPeerCloseWarnings) for f in _qh3_log.filters):
    _qh3_log.addFilter(_DropPeerCloseWarnings())

QuicEvent = qevents.QuicEvent
QhConnection = QuicConnection
ConnectionTerminated = qevents.ConnectionTerminated
HandshakeCompleted = qevents.HandshakeCompleted
StreamDataReceived = qevents.StreamDataReceived
CONNECTION_REFUSED = int(QuicErrorCode.CONNECTION_REFUSED)
INTERNAL_ERROR = int(QuicErrorCode.INTERNAL_ERROR)

# qh3 2.1.0 leaves EdDSA out of its default client list; without it a handshake with an Ed25519
# listener fails. RSA/ECDSA stay in so that a listener with another key completes TLS and is then
# refused by our own check with a clear AuthenticationFailed instead of a TLS alert.
_CLIENT_SIGALGS = [
    SignatureAlgorithm.ED25519,
    SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
    SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
    SignatureAlgorithm.ECDSA_SECP384R1_SHA384,
    SignatureAlgorithm.RSA_PSS_RSAE_SHA384,
    SignatureAlgorithm.RSA_PSS_RSAE_SHA512,
]


def server_configuration(keypair: KeyPair, config: TransportConfig) -> QuicConfiguration:
    """Listener side: the node's self-signed Ed25519 certificate, ALPN, idle timeout."""
    cert = make_certificate(keypair)
    qc = QuicConfiguration(is_client=False, alpn_protocols=[config.alpn], idle_timeout=config.idle_timeout)
    qc.certificate = _X509Certificate(cert.public_bytes(serialization.Encoding.DER))
    qc.private_key = load_pem_private_key(keypair.private_pem())
    return qc


def refusing_configuration(config: TransportConfig) -> QuicConfiguration:
    """Listener side of an endpoint that admits no connection (a light client's: every attempt
    is refused at its first packet, ``client_only``). qh3 still needs a certificate to take an
    attempt's first flight, so one throwaway identity per process serves every such endpoint: a
    light client's connect no longer builds and signs a certificate of its own (~0.2 ms, #14),
    and an unsolicited attempt no longer learns the client's node id."""
    return _refusing(config.alpn, config.idle_timeout)


@functools.lru_cache(maxsize=8)  # one per (ALPN, idle timeout) the process's clients use
def _refusing(alpn: str, idle_timeout: float) -> QuicConfiguration:
    return server_configuration(KeyPair.generate(), TransportConfig(alpn=alpn, idle_timeout=idle_timeout))


def client_configuration(config: TransportConfig) -> QuicConfiguration:
    """Dialer side: no CA check (the certificate's key *is* the identity, checked by quicmesh)."""
    qc = QuicConfiguration(
        is_client=True,
        alpn_protocols=[config.alpn],
        idle_timeout=config.idle_timeout,
        verify_mode=ssl.CERT_NONE,
    )
    qc.signature_algorithms = list(_CLIENT_SIGALGS)
    return qc


# -- datagram sizes (#14) --------------------------------------------------------------------------
# qh3 2.1 sizes datagrams so: a dialer starts at 1,200-1,472 bytes and probes up to its
# ``max_datagram_size`` (at least 1,472); a listener never probes and sends at min(its
# ``max_datagram_size``, the dialer's advertised ``max_udp_payload_size``), which qh3's dialer
# fixes at 1,472. Its search above 1,472 cannot be trusted: measured on a path of MTU 9000, it
# took 65,527 bytes after one 1,836-byte probe and the connection stalled. So larger datagrams
# are used only where the path's MTU is known without probing: between nodes on this host (the
# loopback interface's MTU is the whole path's) and on relayed paths (no MTU); both ends are set
# to the size and a dialer advertises it.

_MAX_UDP_PAYLOAD_ID = 0x03
"""The transport parameter ``max_udp_payload_size`` (RFC 9000 section 18.2)."""


def _with_max_udp_payload(params: bytes, size: int) -> bytes:
    """Encoded transport parameters ``params`` with ``max_udp_payload_size`` set to ``size``."""
    src, out = Buffer(data=params), Buffer(capacity=len(params) + 16)
    while not src.eof():
        pid = src.pull_uint_var()
        value = src.pull_bytes(src.pull_uint_var())
        if pid != _MAX_UDP_PAYLOAD_ID:
            out.push_uint_var(pid)
            out.push_uint_var(len(value))
            out.push_bytes(value)
    val = Buffer(capacity=8)
    val.push_uint_var(size)
    out.push_uint_var(_MAX_UDP_PAYLOAD_ID)
    out.push_uint_var(len(val.data))
    out.push_bytes(val.data)
    return out.data


_QH3_ADVERTISED = 1472
"""The ``max_udp_payload_size`` qh3's dialer advertises whatever it is configured to accept."""


class _Dialer(QuicConnection):
    """qh3's client connection that advertises its ``max_datagram_size``, when larger than
    qh3's own 1,472, as the largest UDP payload it accepts, so that the listener may send it."""

    def _create_tls(self, remote_source_cid: bytes | None) -> QuicTlsBridge:
        bridge = super()._create_tls(remote_source_cid)
        size = self._configuration.max_datagram_size
        if size <= _QH3_ADVERTISED:
            return bridge
        serialize = bridge.serialize_transport_parameters

        def advertise() -> bytes:
            return _with_max_udp_payload(serialize(), size)

        bridge.serialize_transport_parameters = advertise  # type: ignore[method-assign]  # read again on a version change
        bridge.tls.handshake_extensions = [
            (kind, advertise() if kind == ExtensionType.QUIC_TRANSPORT_PARAMETERS else data)
            for kind, data in bridge.tls.handshake_extensions]
        return bridge


_MTU_FRESH = 1.0
"""Seconds a read of the loopback MTU is reused (a light client's connect read it twice, four
system calls each; an ``ip link set lo mtu`` shows within this)."""
_mtu_read: tuple[float, int | None] | None = None


def _loopback_mtu() -> int | None:
    """The kernel's path MTU towards 127.0.0.1 (``IP_MTU`` of a connected UDP socket: the
    loopback interface's MTU, 65,536 unless set otherwise); ``None`` where unknown (not Linux).
    Read again once the last read is ``_MTU_FRESH`` seconds old."""
    global _mtu_read
    now = time.monotonic()
    if _mtu_read is None or not 0 <= now - _mtu_read[0] < _MTU_FRESH:
        _mtu_read = (now, _read_loopback_mtu())
    return _mtu_read[1]


def _read_loopback_mtu() -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    option = getattr(socket, "IP_MTU", 14)  # <linux/in.h>; Python's socket module lacks the name
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("127.0.0.1", 9))  # no packet is sent
            return int(s.getsockopt(socket.IPPROTO_IP, option))
    except OSError:
        return None


def local_configuration(configuration: QuicConfiguration, limit: int) -> QuicConfiguration:
    """A copy of ``configuration`` (a dialer's or a listener's) for connections between nodes on
    this host: datagrams of ``limit`` bytes or what the loopback interface's MTU allows, if less,
    without probing (unchanged where that MTU is unknown, or ``limit`` is no larger)."""
    qc = copy.copy(configuration)
    mtu = _loopback_mtu()
    if mtu is not None:  # less 48 bytes of IPv6 and UDP headers; at most IPv4's largest payload
        size = min(limit, mtu - 48, 65507)
        if size > configuration.max_datagram_size:
            qc.max_datagram_size = size
            qc.probe_datagram_size = False
    return qc


@functools.lru_cache(maxsize=256)  # bounded: 256 host strings (parsing one costs ~5 µs)
def is_local(host: str) -> bool:
    """Whether ``host`` (a numeric address) is a loopback address of this host (IPv4-mapped
    IPv6 included), whose path is the loopback interface."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def datagram_size(quic: QuicConnection) -> int | None:
    """The largest UDP payload ``quic`` sends now (bytes; after PMTU discovery); ``None`` before."""
    core = getattr(quic, "_core", None)
    if core is None:
        return None
    try:
        return int(core.active_path[5])
    except Exception:  # a closed core, or another qh3 release
        return None


class Sink(Protocol):
    """What a :class:`Proto` reports to (the quicmesh connection)."""

    def quic_event(self, event: qevents.QuicEvent) -> None: ...

    def quic_failed(self, exc: BaseException) -> None: ...

    def transmitted(self) -> None:
        """Packets were just handed to the socket: the send backlog may have shrunk."""

    def alive(self) -> None:
        """Datagrams from the peer were processed (at most every ``ALIVE_INTERVAL``)."""


RELAYED_DATAGRAM_SIZE = 16384
"""qh3's ``max_datagram_size`` on relayed paths: a virtual path has no MTU (its datagrams travel
in a stream), and 16 KiB packets cost a tenth of the per-packet work of 1,280-byte ones at
both ends and at the relay."""


def relayed(configuration: QuicConfiguration) -> QuicConfiguration:
    """A copy of ``configuration`` for connections on relayed paths (larger datagrams)."""
    qc = copy.copy(configuration)
    qc.max_datagram_size = RELAYED_DATAGRAM_SIZE
    qc.probe_datagram_size = False
    return qc

ALIVE_INTERVAL = 0.25
"""Seconds between two :meth:`Sink.alive` reports of one connection: its peer's datagrams show
that it is alive even while its messages wait behind bulk data on the stream (the failure
detector's probes and answers travel on that stream too)."""

HELD_DATAGRAMS = 1024
"""#14 (fastpath): datagrams a held connection keeps for later (:meth:`Proto.hold`); beyond
them they are shed, and QUIC retransmits what they carried."""
RECEIVE_CHUNK = 16
"""#14: datagrams of one batched read handed to QUIC at once (one transmit after each chunk); a
hold waits at most this many datagrams (~24 KB) to take effect."""


def _ignore_cid(cid: bytes) -> None:
    pass


def _nothing() -> None:
    pass


def _no_packet_log(event: str, data: bytes) -> None:
    """Stands in for qh3's per-packet qlog pass on a connection with no qlog."""


class Proto(QuicTimers, QuicConnectionProtocol):
    """qh3 protocol for one connection, with every call into qh3 guarded."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler=None)
        if getattr(quic, "_quic_logger", None) is None:
            # qh3 2.1 walks every sent datagram's packets for its qlog, parsing each header and
            # copying each packet out, before it looks whether a logger is set at all
            # (QuicConnection._log_packets): ~3.5 % of a 1 KiB publisher's time (py-spy)
            vars(quic)["_log_packets"] = _no_packet_log
        self.sink: Sink | None = None
        self.refuse_reason: str | None = None
        """Set before the first datagram: close with CONNECTION_REFUSED right after it, drop at once."""
        self.on_terminated: Callable[[Proto], None] | None = None
        self._failing = False
        self._gone = False
        self._local_close = False
        self.cids: set[bytes] = set()  # bounded: the ids routed to this connection (<= active_connection_id_limit + 2)
        # #14 (fastpath): reading held (the owner's consumer is behind; see hold())
        self.holding = False
        self.datagrams_shed = 0
        """Datagrams dropped while held past ``HELD_DATAGRAMS`` (QUIC retransmits their data)."""
        self.holds = 0
        """Times :meth:`hold` stopped the reading."""
        self._held: deque[tuple[bytes | str, Any]] | None = None  # bounded: HELD_DATAGRAMS; made on a first hold
        self._alive_at = -ALIVE_INTERVAL
        self.ack_delay = 0.0
        """#14: seconds a lone received datagram's answer (its ACK) waits for something else to
        carry it (``transport.ack_delay``; set when the connection opens, 0 during handshakes)."""
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_owed: float | None = None
        self._evented = False

    @property
    def quic(self) -> QuicConnection:
        """The sans-IO qh3 connection."""
        return self._quic

    def peer_address(self) -> str | None:
        """``HOST:PORT`` of the peer as qh3 last saw it, when known."""
        addr: Any = getattr(self._quic, "_remote_addr", None)
        if not addr:
            return None
        if addr[0] == VIRTUAL_HOST:
            wire = self._transport
            router = wire.router if isinstance(wire, _Wire) else None
            return router.virtual_name(addr) if router is not None else None
        return f"{addr[0]}:{addr[1]}"

    @property
    def relayed(self) -> bool:
        """#13: whether qh3 sends to a virtual (relayed) address now."""
        addr: Any = getattr(self._quic, "_remote_addr", None)
        return bool(addr) and bool(addr[0] == VIRTUAL_HOST)

    @property
    def terminated(self) -> bool:
        """``True`` once qh3 reported termination or the connection was abandoned."""
        return self._gone

    def hold(self) -> None:
        """#14 (fastpath): stop handing datagrams to qh3 (its flow control would keep granting
        the peer credit): they wait, up to ``HELD_DATAGRAMS``, then are shed. Unacknowledged,
        the peer's congestion window fills and its sends wait: back-pressure without loss."""
        if not self.holding:
            self.holds += 1
        self.holding = True

    def release(self) -> None:
        """Undo :meth:`hold`: the datagrams that waited are processed (until held again)."""
        self.holding = False
        held = self._held  # None until a first hold
        while held and not self.holding and not self._gone:
            data, addr = held.popleft()
            self._receive(data, addr)
        if held and not self.holding:
            held.clear()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.holding and not self._gone:
            held = self._held = self._held if self._held is not None else deque()  # bounded: HELD_DATAGRAMS
            if len(held) < HELD_DATAGRAMS:
                held.append((data, addr))
            else:
                self.datagrams_shed += 1
            return
        self._receive(data, addr)

    def _receive(self, data: bytes | str, addr: Any) -> None:
        if self._gone:
            return
        try:
            if self.ack_delay:
                # #14: not answered at once: the ACK this datagram earns leaves with the next
                # packet once due, or alone when the timer fires (_quic_timers: the ACK wait)
                now, sent, self._evented = self._loop_time(), self._sends, False
                if data[0] & 0x80:  # type: ignore[operator]  # a long header (a handshake's)
                    self._quic.receive_datagram(data, addr, now=now)  # type: ignore[arg-type]
                else:  # a 1-RTT packet: qh3's batch entry, without its per-datagram handshake-time checks
                    self._quic.receive_many_datagrams([data], addr, now=now)  # type: ignore[list-item]
                self._process_events()
                if not self._gone and self._sends == sent:  # else the send meanwhile took the ACK or timed it
                    self._wait_for_ack(now, self._evented)
            else:
                super().datagram_received(data, addr)
            self._received()
        except Exception as exc:
            self._fail(exc)

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        """#14: a run of datagrams for this connection (one batched socket read): handed to QUIC
        ``RECEIVE_CHUNK`` at a time, each chunk answered by one transmit (one ACK, one GSO send)
        instead of one per datagram. A :meth:`hold` takes effect between chunks."""
        i, n = 0, len(data)
        while i < n and not self._gone:
            if self.holding:
                for d in data[i:]:
                    self.datagram_received(d, addr)  # waits (or is shed) like a single datagram
                return
            chunk = data if n <= RECEIVE_CHUNK else data[i:i + RECEIVE_CHUNK]
            i += len(chunk)
            try:
                super().datagrams_received(chunk, addr)
                self._received()
            except Exception as exc:
                self._fail(exc)

    def _received(self) -> None:
        """After datagrams went into QUIC: a refusal, a close by the peer, the liveness note."""
        if self.refuse_reason is not None:
            reason, self.refuse_reason = self.refuse_reason, None
            self._local_close = True
            self._quic.close(error_code=CONNECTION_REFUSED, reason_phrase=reason)
            self.transmit()
            # Keep nothing for a refused attempt (not even qh3's draining state): if the
            # close is lost, the dialer's retransmitted Initial is simply refused again.
            self.abandon()
            return
        # qh3 reports a close by the peer (or a TLS failure) only after its draining period
        # (3 PTO, ~1 s before an RTT sample). A draining endpoint sends nothing, so end the
        # connection now: the owner learns at once and no state waits out the period.
        ce = getattr(self._quic, "_close_event", None)
        if ce is not None and not self._local_close and not self._gone:
            self.abandon(ce)
            return
        now = self._loop_time()
        if now - self._alive_at >= ALIVE_INTERVAL:
            self._alive_at = now
            sink = self.sink
            if sink is not None:
                sink.alive()

    @property
    def heard_at(self) -> float:
        """Loop time of the last datagram received (to within ``ALIVE_INTERVAL``; negative:
        none yet). Datagrams held by :meth:`hold` count once read."""
        return self._alive_at

    def transmit(self) -> None:
        if self._ack_owed is not None:  # what it waited to send goes now
            self._acked()
        if self._gone or self._transport is None or self._transport.is_closing():
            self._cancel_timers()
            return
        try:
            self._send_now()
        except Exception as exc:
            self._fail(exc)
            return
        sink = self.sink
        if sink is not None:
            sink.transmitted()

    def quic_event_received(self, event: qevents.QuicEvent) -> None:
        self._evented = True
        sink = self.sink
        if sink is not None:
            sink.quic_event(event)
        if isinstance(event, ConnectionTerminated):
            self._terminated()

    def close_with(self, error_code: int, reason: str) -> None:
        """Close with an application error code and reason phrase, then transmit."""
        if self._gone:
            return
        self._local_close = True
        try:
            self._quic.close(error_code=error_code, frame_type=None, reason_phrase=reason[:200])
        except Exception as exc:
            self._fail(exc)
            return
        self.transmit()

    def abandon(self, event: qevents.ConnectionTerminated | None = None) -> None:
        """Drop the connection without waiting for qh3's draining period."""
        if self._gone:
            return
        if event is None:
            event = ConnectionTerminated(error_code=INTERNAL_ERROR, frame_type=None, reason_phrase="abandoned")
        sink = self.sink
        if sink is not None:
            try:
                sink.quic_event(event)
            except Exception:  # pragma: no cover - the sink guards itself
                log.exception("sink failed while abandoning")
        self._connection_terminated_handler()
        # events still queued in qh3's current loop must not re-register routes
        self._connection_id_issued_handler = _ignore_cid
        self._connection_id_retired_handler = _ignore_cid
        self._connection_terminated_handler = _nothing
        self._closed.set()
        waiter = self._connected_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        self._connected_waiter = None
        self._terminated()

    # -- internals -------------------------------------------------------------------------

    def _terminated(self) -> None:
        if self._gone:
            return
        self._gone = True
        self._cancel_timers()
        self.sink = None
        cb, self.on_terminated = self.on_terminated, None
        if cb is not None:
            cb(self)

    def _cancel_timers(self) -> None:
        self._acked()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        if self._transmit_task is not None:
            self._transmit_task.cancel()
            self._transmit_task = None

    def _fail(self, exc: BaseException) -> None:
        log.warning("qh3 raised %s: %s; closing the connection", type(exc).__name__, exc)
        if self._failing:
            self.abandon()
            return
        self._failing = True
        self._local_close = True
        sink = self.sink
        if sink is not None:
            sink.quic_failed(exc)
        try:
            self._quic.close(error_code=INTERNAL_ERROR, reason_phrase="internal error")
            super().transmit()
        except Exception:
            self.abandon()
            return
        finally:
            self._failing = False


def new_client_connection(configuration: QuicConfiguration) -> QuicConnection:
    """A fresh client-side qh3 connection."""
    return _Dialer(configuration=configuration)
