"""QUIC transport (qh3): authenticated, realm-checked, admission-controlled connections.

Theory of operation
-------------------
One UDP socket per transport (see :mod:`._quic_adapter`) carries every QUIC connection, inbound
and outbound; qh3's core is driven by datagrams and by its own timer (``call_at`` on
``get_timer()``), never by polling. Each connection carries quicmesh frames (``Codec`` framing)
on one bidirectional stream opened by the dialer.

Authentication (both peers prove their node id, an Ed25519 public key):

1. TLS 1.3: the listener presents ``make_certificate(keypair)``. Right after the handshake the
   dialer reads the peer certificate (qh3 ``get_peercert()``); a key that is not Ed25519 gives
   :class:`~quicmesh.errors.AuthenticationFailed`, another id than ``expected`` gives
   :class:`~quicmesh.errors.PeerIdMismatch`. (qh3 servers cannot request client certificates.)
2. Dialer -> ``Hello(version, realm, node_id, expected)``. The listener checks version, realm
   (``Refuse("realm")`` + close, :class:`~quicmesh.errors.RealmMismatch` at the dialer) and that
   ``expected`` is itself, then replies ``Challenge(nonce)`` with 32 fresh random bytes.
3. Dialer -> ``Proof(signature)``: Ed25519 over the transcript
   ``lp(b"quicmesh/auth/v1") + lp(nonce) + lp(dialer id) + lp(listener id) + lp(realm)`` where
   ``lp`` is a 4-byte big-endian length prefix. The nonce makes a proof single-use (a replay on a
   new connection meets a new nonce), the listener id stops a malicious listener from relaying a
   challenge from a third node, the label separates this signature from any other use of the key.
4. The listener verifies against the id from ``Hello`` (``Refuse("auth")`` otherwise), applies
   admission and the duplicate rule, then replies ``Welcome``. Before that it processes no other
   frame: anything else closes the connection with code ``protocol``.

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

Duplicates: at most one connection per peer pair. When a second one authenticates, the one
dialed by the smaller node id survives (two connections dialed by the same side: the newer one),
unless the peer shows another *instance* (8 random bytes per transport start, in ``Hello`` and
``Welcome``): then it restarted, the old connection is stale, and the new one wins at once.
The loser is closed with code ``duplicate`` and ``dial()`` on both sides
returns the survivor. In a simultaneous dial the smaller node, as listener, holds the larger
node's verified attempt until its own dial is done, then refuses it (``duplicate``), so the loser
never reaches either node (without it, the larger node's ``dial()`` could return a connection
that is closed a moment later).

Counters: ``refused_total`` counts, per reason, the attempts the listener ended before admission
(``max_connections``, ``max_incoming_handshakes``, ``realm``, ``auth``, ``peer_id``, ``version``,
``duplicate``, ``handshake_timeout``, ``tls`` for a failed TLS handshake, ``shutdown``) and also
``protocol``: connections closed for a malformed frame, before or after admission.

Close codes travel as the QUIC application error code and as the reason phrase ``"code: text"``.
A refused attempt leaves no state (ours or qh3's): refusals at the first packet drop the qh3
connection right after the close is sent; a close received from the peer ends the connection at
once instead of after qh3's draining period. Under a flood the listener's socket buffers are 4 MiB
(the default ~208 KiB overflowed at a few hundred concurrent dials, and each loss costs a PTO).

Send path: ``send`` encodes into the connection's queue and schedules one flush per event-loop
iteration; the flush writes everything queued in one stream write and one transmit. Unsent bytes
(our queue plus what qh3 has not transmitted yet, ``get_send_buffer_size``) are capped at
``send_buffer_bytes``: beyond it ``send`` returns ``False`` and counts ``dropped_frames_total``.
Receive path: one :class:`~quicmesh.core.wire.FrameDecoder` per connection; a decode error closes
that connection with code ``protocol``. ``on_connection_lost`` fires exactly once per published
connection, and every per-connection structure is released at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
from typing import Any

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..config import TransportConfig
from ..core.messages import Challenge, Hello, Ping, Pong, Proof, Refuse, Welcome
from ..core.wire import Codec, FrameDecoder, Message
from ..errors import (
    AdmissionRefused,
    AuthenticationFailed,
    ConnectionLost,
    DecodeError,
    HandshakeTimeout,
    IdentityError,
    PeerIdMismatch,
    RealmMismatch,
    TransportError,
)
from ..identity import KeyPair, NodeId, node_id_from_certificate
from . import _quic_adapter as qa
from .transport import Connection, Transport, TransportEvents, TransportStats

__all__ = ["AUTH_LABEL", "CLOSE_CODES", "PROTOCOL_VERSION", "QuicConnection", "QuicTransport", "auth_transcript"]

log = logging.getLogger("quicmesh.quic")

PROTOCOL_VERSION = 1
"""The quicmesh handshake version carried in ``Hello``."""

AUTH_LABEL = b"quicmesh/auth/v1"
"""Protocol label that starts every signed handshake transcript."""

CLOSE_CODES: dict[str, int] = {
    "normal": 0,
    "shutdown": 1,
    "duplicate": 2,
    "evicted": 3,
    "protocol": 4,
    "realm": 5,
    "auth": 6,
    "peer_id": 7,
    "version": 8,
    "timeout": 9,
    "max_connections": 10,
    "max_incoming_handshakes": 11,
    "error": 12,
    "max_clients": 13,
    "slow_consumer": 14,
    "client_only": 15,
}
"""Close code -> QUIC application error code (the reason phrase carries the code text too)."""

ADMISSION_REASONS = ("max_connections", "max_incoming_handshakes", "max_clients")
_NONCE_LEN = 32
_REFUSED_MEMORY = 4096
_CONTROL_TYPES: frozenset[type[Message]] = frozenset({Ping, Pong, Refuse, Hello, Challenge, Proof, Welcome})
_SOCKET_BUFFER = 4 * 1024 * 1024


def auth_transcript(nonce: bytes, dialer: NodeId, listener: NodeId, realm: str) -> bytes:
    """The bytes the dialer signs: label, nonce, dialer id, listener id, realm, each length-prefixed."""
    parts = (AUTH_LABEL, nonce, dialer.raw, listener.raw, realm.encode("utf-8"))
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


class _St(enum.Enum):
    TLS = "tls"  # QUIC/TLS handshake running
    AWAIT_HELLO = "await_hello"  # listener
    AWAIT_CHALLENGE = "await_challenge"  # dialer
    AWAIT_PROOF = "await_proof"  # listener
    AWAIT_WELCOME = "await_welcome"  # dialer
    OPEN = "open"
    CLOSED = "closed"


class _Duplicate(Exception):
    """Internal: the dialed connection lost the duplicate tie-break."""

    def __init__(self, peer: NodeId) -> None:
        super().__init__(f"duplicate connection to {peer.short()}")
        self.peer = peer


def _code_of(phrase: str) -> str:
    return phrase.split(":", 1)[0].strip()


def _refusal_error(code: str, text: str) -> Exception:
    """The exception a dialer raises for a refusal ``code`` sent by the listener."""
    if code in ADMISSION_REASONS:
        return AdmissionRefused(code)
    if code == "realm":
        return RealmMismatch(f"listener refused: {text}")
    if code in ("auth", "peer_id"):
        return AuthenticationFailed(f"listener refused the identity proof: {text}")
    if code == "timeout":
        return HandshakeTimeout(f"listener timed the handshake out: {text}")
    if code == "version":
        return TransportError(f"listener speaks another handshake version: {text}")
    return ConnectionLost(f"connection closed during the handshake: {text}")


class QuicConnection(Connection):
    """One QUIC connection to a peer (published to the node only once authenticated)."""

    def __init__(self, transport: QuicTransport, proto: qa.Proto, *, outbound: bool, remote_address: str) -> None:
        self._t = transport
        self._proto = proto
        self._loop = transport._loop
        self.outbound = outbound
        self.remote_address = remote_address
        self._peer: NodeId | None = None
        self._expected: NodeId | None = None
        self._peer_instance = b""
        self._drained: asyncio.Future[None] | None = None
        self._closed_evt = asyncio.Event()
        self._state = _St.TLS
        self._sid: int | None = None
        self._decoder: FrameDecoder = transport._codec.decoder()
        self._queue: list[bytes] = []  # bounded: send() caps queued + qh3-unsent bytes at send_buffer_bytes
        self._queued = 0
        self._backlog = 0
        self._flush_handle: asyncio.Handle | None = None
        self._hs_timer: asyncio.TimerHandle | None = self._loop.call_later(
            transport._cfg.handshake_timeout, self._handshake_timeout
        )
        self._ka_timer: asyncio.TimerHandle | None = None
        self._ready: asyncio.Future[QuicConnection] | None = self._loop.create_future() if outbound else None
        self._nonce: bytes | None = None
        self._sent_at = 0.0
        self._last_rx = self._loop.time()
        self._ping_seq = 0
        self._ping_sent: tuple[int, float] | None = None
        self._ping_waiter: asyncio.Future[float] | None = None
        self._rtt: float | None = None
        self._published = False
        self._refusal: tuple[str, str] | None = None
        self.role = "node"
        """The peer's role: ``"node"`` (a mesh peer) or ``"client"`` (a light client, from ``Hello``)."""
        self.close_code: str | None = None
        """The close code (``normal``, ``duplicate``, ``evicted``, ``protocol``...) once closed."""
        self.pongs_received = 0
        """Keepalive/ping replies received (for tests and metrics)."""
        proto.sink = self

    # -- public API ----------------------------------------------------------------------

    @property
    def peer(self) -> NodeId | None:
        """The peer's node id once known (``peer_id`` is set once it is proved)."""
        return self._peer

    @property
    def pending_bytes(self) -> int:
        """Bytes queued here plus bytes qh3 holds that were never transmitted."""
        if self._state is _St.CLOSED:
            return 0
        return self._queued + self._quic_backlog()

    @property
    def closed(self) -> bool:
        return self._state is _St.CLOSED

    @property
    def rtt(self) -> float | None:
        """Smoothed RTT (seconds) from the handshake exchange and keepalive ping/pong."""
        return self._rtt

    def send(self, message: Message) -> bool:
        """Queue ``message``; ``False`` when the connection is closed or its send buffer is full.

        Raises :class:`~quicmesh.errors.FrameTooLarge` for a message over ``max_frame_size``.
        """
        if self._state is not _St.OPEN:
            self._t._stats.dropped_frames_total += 1
            return False
        frame = self._t._codec.frame(message)
        return self._enqueue(frame)

    async def ping(self) -> float:
        """Send a ping and return the measured round-trip time (seconds)."""
        if self._state is not _St.OPEN:
            raise ConnectionLost("connection is closed")
        if self._ping_waiter is None or self._ping_waiter.done():
            self._ping_waiter = self._loop.create_future()
            self._send_ping()
        return await asyncio.shield(self._ping_waiter)

    async def close(self, code: str = "normal", reason: str = "") -> None:
        """Close (telling the peer ``code``/``reason``) and wait until QUIC finished closing."""
        self._finish(code, None, reason=reason, send=True)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Return once the connection has closed (for any reason) and QUIC has terminated it.

        An open connection is waited on for as long as it stays open. Once it is closing, QUIC's
        own close is awaited for at most ``handshake_timeout``, after which it is abandoned.
        """
        await self._closed_evt.wait()
        proto = self._proto
        if proto.terminated:
            return
        try:
            await asyncio.wait_for(proto.wait_closed(), self._t._cfg.handshake_timeout)
        except TimeoutError:
            proto.abandon()

    def __repr__(self) -> str:
        peer = self._peer.short() if self._peer else "?"
        return f"<QuicConnection {'out' if self.outbound else 'in'} {peer} {self.remote_address} {self._state.value}>"

    # -- qh3 events ----------------------------------------------------------------------

    def quic_event(self, event: qa.QuicEvent) -> None:
        try:
            if isinstance(event, qa.StreamDataReceived):
                self._on_stream_data(event.stream_id, event.data)
            elif isinstance(event, qa.ConnectionTerminated):
                self._on_terminated(event)
            elif isinstance(event, qa.HandshakeCompleted):
                if self.outbound and self._state is _St.TLS:
                    self._dialer_tls_done()
                elif not self.outbound and self._state is _St.TLS:
                    self._state = _St.AWAIT_HELLO
        except Exception as exc:  # a bug here must cost one connection, never the transport
            log.exception("error handling a QUIC event on %r", self)
            self._finish("error", TransportError(f"internal error: {exc}"), send=True)

    def quic_failed(self, exc: BaseException) -> None:
        self._finish("error", TransportError(f"QUIC error: {type(exc).__name__}: {exc}"), send=False)

    # -- handshake -----------------------------------------------------------------------

    def _dialer_tls_done(self) -> None:
        cert = self._proto.quic.get_peercert()
        if cert is None:
            self._finish("auth", AuthenticationFailed("listener presented no certificate"), send=True)
            return
        try:
            peer = node_id_from_certificate(cert.public_bytes())
        except (AuthenticationFailed, IdentityError, ValueError) as exc:
            err = exc if isinstance(exc, AuthenticationFailed) else AuthenticationFailed(str(exc))
            self._finish("auth", err, send=True)
            return
        if self._expected is not None and peer != self._expected:
            self._finish("peer_id", PeerIdMismatch(str(self._expected), str(peer)), send=True)
            return
        if peer == self._t.node_id:
            self._finish("peer_id", TransportError("dialed our own node id"), send=True)
            return
        self._peer = peer
        quic = self._proto.quic
        self._sid = quic.get_next_available_stream_id()
        hello = Hello(version=PROTOCOL_VERSION, realm=self._t._realm, node_id=self._t.node_id.raw, expected=peer.raw,
                      instance=self._t._instance, role=self._t._role)
        self._state = _St.AWAIT_CHALLENGE
        self._sent_at = self._loop.time()
        self._write_now(self._t._codec.frame(hello))

    def _on_stream_data(self, sid: int, data: bytes) -> None:
        if self._state is _St.CLOSED:
            return
        if self._sid is None and not self.outbound and sid % 4 == 0:
            self._sid = sid
            if self._state is _St.TLS:  # 1-RTT data proves the TLS handshake is done
                self._state = _St.AWAIT_HELLO
        if sid != self._sid:
            self._finish("protocol", DecodeError(f"data on unexpected stream {sid}"), send=True)
            return
        self._last_rx = self._loop.time()
        try:
            messages = self._decoder.feed(data)
        except DecodeError as exc:
            self._t._stats_bump("protocol")
            if self._state is not _St.OPEN and self._sid is not None:
                self._write_now(self._t._codec.frame(Refuse(code="protocol", reason=str(exc)[:200])))
            self._finish("protocol", exc, send=True)
            return
        for m in messages:
            if self._state is _St.OPEN:
                self._on_open_message(m)
            elif self._state is _St.CLOSED:
                return
            else:
                self._on_handshake_message(m)

    def _on_handshake_message(self, m: Message) -> None:
        st = self._state
        if isinstance(m, Refuse):
            self._refusal = (m.code, m.reason)
            self._finish(m.code, _refusal_error(m.code, f"{m.code}: {m.reason}"), send=False, reason=m.reason)
            return
        if st is _St.AWAIT_HELLO and isinstance(m, Hello):
            self._listener_hello(m)
        elif st is _St.AWAIT_CHALLENGE and isinstance(m, Challenge):
            self._dialer_challenge(m)
        elif st is _St.AWAIT_PROOF and isinstance(m, Proof):
            self._listener_proof(m)
        elif st is _St.AWAIT_WELCOME and isinstance(m, Welcome):
            if self._peer is None or m.node_id != self._peer.raw:
                self._finish("auth", AuthenticationFailed("Welcome names another node"), send=True)
                return
            self._peer_instance = m.instance
            self._t._dialer_welcomed(self)
        else:
            self._refuse("protocol", f"unexpected {type(m).__name__} during handshake ({st.value})")

    def _listener_hello(self, m: Hello) -> None:
        t = self._t
        if m.version != PROTOCOL_VERSION:
            self._refuse("version", f"handshake version {m.version} not supported")
            return
        if m.realm != t._realm:
            self._refuse("realm", f"this node is in realm {t._realm!r}")
            return
        try:
            peer = NodeId(m.node_id)
        except IdentityError:
            self._refuse("protocol", "malformed node id")
            return
        if m.expected is not None and m.expected != t.node_id.raw:
            self._refuse("peer_id", "this node has another id than expected")
            return
        if peer == t.node_id:
            self._refuse("peer_id", "a node cannot connect to itself")
            return
        if m.role == "client":
            # Client admission at the Hello, before any per-client state exists (checked again
            # after the proof, since slots may fill while this handshake runs).
            if len(t._clients) >= t.max_clients:
                self._refuse("max_clients", f"{t.max_clients} clients held")
                return
            self.role = "client"
        elif m.role != "node":
            self._refuse("protocol", f"unknown role {m.role[:32]!r}")
            return
        self._peer = peer
        self._peer_instance = m.instance
        self._nonce = os.urandom(_NONCE_LEN)
        self._state = _St.AWAIT_PROOF
        self._sent_at = self._loop.time()
        self._write_now(t._codec.frame(Challenge(nonce=self._nonce)))

    def _dialer_challenge(self, m: Challenge) -> None:
        if len(m.nonce) != _NONCE_LEN or self._peer is None:
            self._refuse("protocol", "bad challenge")
            return
        self._sample_rtt(self._loop.time() - self._sent_at)
        transcript = auth_transcript(m.nonce, self._t.node_id, self._peer, self._t._realm)
        self._state = _St.AWAIT_WELCOME
        self._write_now(self._t._codec.frame(Proof(signature=self._t._proof_signature(transcript))))

    def _listener_proof(self, m: Proof) -> None:
        t = self._t
        assert self._peer is not None and self._nonce is not None
        transcript = auth_transcript(self._nonce, self._peer, t.node_id, t._realm)
        self._nonce = None  # single use
        try:
            self._peer.verify(m.signature, transcript)
        except IdentityError:
            t._stats.auth_failures_total += 1
            self._refuse("auth", "identity proof does not verify")
            return
        self._sample_rtt(self._loop.time() - self._sent_at)
        t._listener_authenticated(self)

    def _refuse(self, code: str, reason: str) -> None:
        """Send ``Refuse`` then close; the dialer surfaces it, we keep nothing."""
        if self._sid is not None and self._state is not _St.CLOSED:
            self._write_now(self._t._codec.frame(Refuse(code=code, reason=reason)))
        if not self.outbound:
            self._t._stats_bump(code)
        err = _refusal_error(code, f"{code}: {reason}") if self.outbound else None
        self._finish(code, err, reason=reason, send=True)

    def _handshake_timeout(self) -> None:
        self._hs_timer = None
        if self._state in (_St.OPEN, _St.CLOSED):
            return
        if not self.outbound:
            self._t._stats_bump("handshake_timeout")
        self._finish("timeout", HandshakeTimeout(f"no handshake within {self._t._cfg.handshake_timeout} s"), send=True)

    # -- open connection -----------------------------------------------------------------

    def _open(self) -> None:
        """Authenticated and admitted: start keepalive; the transport publishes."""
        self._state = _St.OPEN
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None
        self.peer_id = self._peer  # type: ignore[assignment]
        self._ka_timer = self._loop.call_later(self._t._cfg.keepalive_interval, self._keepalive)

    def _on_open_message(self, m: Message) -> None:
        if type(m) not in _CONTROL_TYPES:  # fast path: application messages
            self._t._deliver(self, m)
        elif isinstance(m, Ping):
            self._enqueue(self._t._codec.frame(Pong(seq=m.seq)))
        elif isinstance(m, Pong):
            sent = self._ping_sent
            if sent is not None and sent[0] == m.seq:
                self._ping_sent = None
                sample = self._loop.time() - sent[1]
                self._sample_rtt(sample)
                self.pongs_received += 1
                w = self._ping_waiter
                if w is not None and not w.done():
                    w.set_result(sample)
        elif isinstance(m, Refuse):
            self._finish(m.code, ConnectionLost(f"peer closed: {m.code}: {m.reason}"), send=False, reason=m.reason)
        elif isinstance(m, Hello | Challenge | Proof | Welcome):
            self._t._stats_bump("protocol")
            self._finish("protocol", DecodeError(f"{type(m).__name__} after the handshake"), send=True)
        else:
            self._t._deliver(self, m)

    def _keepalive(self) -> None:
        self._ka_timer = None
        if self._state is not _St.OPEN:
            return
        interval = self._t._cfg.keepalive_interval
        if self._loop.time() - self._last_rx >= interval * 0.5:
            self._send_ping()
        self._ka_timer = self._loop.call_later(interval, self._keepalive)

    def _send_ping(self) -> None:
        self._ping_seq += 1
        self._ping_sent = (self._ping_seq, self._loop.time())
        self._enqueue(self._t._codec.frame(Ping(seq=self._ping_seq)))

    def _sample_rtt(self, sample: float) -> None:
        self._rtt = sample if self._rtt is None else 0.875 * self._rtt + 0.125 * sample

    # -- send path -----------------------------------------------------------------------

    async def drain(self, until: int | None = None) -> None:
        low = self._t._cfg.send_buffer_bytes // 4 if until is None else until
        while self._state is not _St.CLOSED and self.pending_bytes > low:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)

    def transmitted(self) -> None:
        """Called by the adapter after each transmit: wake drain() waiters below low water."""
        waiter = self._drained
        if waiter is not None and (
            self._state is _St.CLOSED or self.pending_bytes <= self._t._cfg.send_buffer_bytes // 4
        ):
            self._drained = None
            if not waiter.done():
                waiter.set_result(None)

    def _quic_backlog(self) -> int:
        if self._sid is None or self._proto.terminated:
            return 0
        try:
            return int(self._proto.quic.get_send_buffer_size(self._sid))
        except Exception:
            return 0

    def _enqueue(self, frame: bytes) -> bool:
        n = len(frame)
        cap = self._t._cfg.send_buffer_bytes
        if self._queued + self._backlog + n > cap:
            self._backlog = self._quic_backlog()
            if self._queued + self._backlog + n > cap:
                self._t._stats.dropped_frames_total += 1
                return False
        self._queue.append(frame)
        self._queued += n
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_handle = None
        if self._state is not _St.OPEN or not self._queue:
            return
        data = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
        self._queue.clear()
        self._queued = 0
        self._write_now(data)
        if self._peer is not None and self.role == "node":
            self._t._pool.get(self._peer)  # mark used for the LRU pool
        self._backlog = self._quic_backlog()

    def _write_now(self, data: bytes) -> None:
        assert self._sid is not None
        try:
            self._proto.quic.send_stream_data(self._sid, data)
        except Exception as exc:
            self._finish("error", TransportError(f"stream write failed: {exc}"), send=False)
            return
        self._proto.transmit()

    def _send_raw(self, data: bytes) -> None:
        """Write raw bytes on the stream, bypassing the codec (tests: garbage input)."""
        self._write_now(data)

    # -- teardown ------------------------------------------------------------------------

    def _on_terminated(self, event: qa.ConnectionTerminated) -> None:
        if self._state is _St.CLOSED:
            return
        phrase = event.reason_phrase or ""
        code = self._refusal[0] if self._refusal else _code_of(phrase)
        if not self.outbound and self._state is _St.TLS:
            self._t._stats_bump("tls")  # TLS failed (no common algorithm, ALPN...) or the dialer left
        if self._state is not _St.OPEN and self.outbound:
            if code in CLOSE_CODES and code not in ("normal", "error"):
                err: Exception = _refusal_error(code, phrase)
            elif self._state is _St.TLS:
                err = TransportError(f"QUIC handshake failed (error {event.error_code}): {phrase}")
            else:
                err = ConnectionLost(f"closed during the handshake (error {event.error_code}): {phrase}")
        else:
            err = ConnectionLost(f"connection closed by peer or QUIC (error {event.error_code}): {phrase}")
        self._finish(code or "lost", err, send=False, reason=phrase)

    def _finish(self, code: str, error: Exception | None, *, send: bool, reason: str = "") -> None:
        """Close once: release every per-connection structure, tell the owner, tell the peer."""
        if self._state is _St.CLOSED:
            return
        was = self._state
        self._state = _St.CLOSED
        self._closed_evt.set()
        self.close_code = code
        for h in (self._hs_timer, self._ka_timer, self._flush_handle):
            if h is not None:
                h.cancel()
        self._hs_timer = self._ka_timer = self._flush_handle = None
        self._queue.clear()
        self._queued = 0
        self._decoder = self._t._codec.decoder()  # drop any partial frame
        w = self._ping_waiter
        self._ping_waiter = None
        if w is not None and not w.done():
            w.set_exception(ConnectionLost(f"connection closed: {code}"))
        self.transmitted()  # wake drain() waiters: nothing more will be sent
        if send:
            text = f"{code}: {reason}" if reason else code
            self._proto.close_with(CLOSE_CODES.get(code, CLOSE_CODES["error"]), text)
            if was is _St.TLS:
                # no handshake: nothing to drain for (qh3 would wait 3 PTO at the initial 333 ms RTT)
                self._proto.abandon()
        self._t._released(self, was, code, error)
        r = self._ready
        if r is not None and not r.done():
            if code == "duplicate" and self._peer is not None:
                r.set_exception(_Duplicate(self._peer))
            else:
                r.set_exception(error or ConnectionLost(f"closed: {code}"))


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
    ) -> None:
        if role not in ("node", "client"):
            raise ValueError(f"role must be 'node' or 'client', got {role!r}")
        if codec.max_frame_size > config.max_frame_size:
            codec = Codec(codec.types, max_frame_size=config.max_frame_size)
        self._keypair = keypair
        self._realm = realm
        self._instance = os.urandom(8)
        self._role = role
        self.max_clients = 0
        """Light clients held at once; 0 (the default) refuses every client (``max_clients``).
        Set by :meth:`enable_clients`."""
        self._clients: LruMap[NodeId, QuicConnection] = LruMap(
            "transport.clients", 1, Overflow.REJECT, registry=registry
        )
        self._cfg = config
        self._codec = codec
        self._listen = listen
        self._registry = registry
        try:
            self._loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        except RuntimeError:  # constructed outside the loop: start() picks the running loop
            self._loop = asyncio.get_event_loop_policy().get_event_loop()
        self._events: TransportEvents | None = None
        self._endpoint: qa.Endpoint | None = None
        self._address = ""
        self._stopping = False
        self._pool: LruMap[NodeId, QuicConnection] = LruMap(
            "transport.connections", config.max_connections, on_evict=self._evicted, registry=registry
        )
        self._handshaking: set[QuicConnection] = set()  # bounded: max_incoming_handshakes + dials in flight
        self._incoming_hs = 0
        self._dials: dict[tuple[str, NodeId | None], asyncio.Future[QuicConnection]] = {}  # bounded: dials in flight
        self._waiters: dict[NodeId, list[asyncio.Future[QuicConnection]]] = {}  # bounded: dials in flight
        self._parked: dict[NodeId, QuicConnection] = {}  # bounded: one per outbound dial in flight
        self._protos: set[qa.Proto] = set()  # bounded: held + handshaking + closing ones (draining lasts 3 PTO)
        self._refused_cids: LruMap[bytes, str] = LruMap(
            "transport.refused_attempts", _REFUSED_MEMORY, registry=registry
        )  # a refused attempt's later datagrams are refused again without being counted again
        self._idle = asyncio.Event()
        self._idle.set()
        self._stats = TransportStats()
        self._client_cfg = qa.client_configuration(config)

    # -- Transport API -------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        """This transport's node id."""
        return self._keypair.node_id

    @property
    def address(self) -> str:
        """The bound ``HOST:PORT`` once started."""
        return self._address

    async def start(self, events: TransportEvents) -> str:
        """Bind the UDP socket and start accepting; return ``HOST:PORT``."""
        if self._endpoint is not None:
            return self._address
        self._loop = asyncio.get_running_loop()
        self._events = events
        host, port = _split(self._listen)
        server_cfg = qa.server_configuration(self._keypair, self._cfg)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # A burst of Initials (~1.3 kB each, two per ClientHello) overflows the default ~208 KiB
            # receive buffer at a few hundred concurrent dials; every drop costs a 1 s PTO.
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
            sock.bind((host, port))
            _, endpoint = await self._loop.create_datagram_endpoint(
                lambda: qa.Endpoint(configuration=server_cfg, create_protocol=self._incoming, sock=sock), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        assert isinstance(endpoint, qa.Endpoint)
        self._endpoint = endpoint
        name = endpoint.transport.get_extra_info("sockname") if endpoint.transport else (host, port)
        self._address = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
        return self._address

    async def dial(self, address: str, expected: NodeId | None = None) -> Connection:
        """Connect to ``address`` (see :meth:`Transport.dial` for the errors raised)."""
        if self._endpoint is None or self._stopping:
            raise TransportError("transport is not running")
        if expected is not None:
            existing = self.get(expected)
            if existing is not None:
                return existing
        else:
            for c in self._pool.values():
                if c.outbound and c.remote_address == address and not c.closed:
                    return c
        key = (address, expected)
        pending = self._dials.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[QuicConnection] = self._loop.create_future()
        self._dials[key] = fut
        try:
            conn = await self._dial(address, expected)
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
            del self._dials[key]

    def get(self, peer: NodeId) -> Connection | None:
        """The open connection to ``peer``, if any."""
        c = self._pool.peek(peer)
        return c if c is not None and not c.closed else None

    def connections(self) -> list[Connection]:
        """Every open connection to a mesh peer (light clients are listed by :meth:`clients`)."""
        return [c for c in self._pool.values() if not c.closed]

    def enable_clients(self, max_clients: int) -> None:
        """Accept up to ``max_clients`` light clients (``Hello.role == "client"``) besides the
        ``max_connections`` mesh peers. A client over the limit is refused at its ``Hello``
        (:class:`~quicmesh.errors.AdmissionRefused` ``("max_clients")`` on its side). Clients are
        keyed by node id: a client that reconnects replaces its previous connection."""
        if max_clients < 0:
            raise ValueError("max_clients must be >= 0")
        if len(self._clients):
            raise RuntimeError("enable_clients() must be called before clients connect")
        self._clients.close()
        self._clients = LruMap("transport.clients", max(1, max_clients), Overflow.REJECT, registry=self._registry)
        self.max_clients = max_clients

    def clients(self) -> list[QuicConnection]:
        """Every open light-client connection."""
        return [c for c in self._clients.values() if not c.closed]

    def get_client(self, client: NodeId) -> QuicConnection | None:
        """The open connection of light client ``client``, if any."""
        c = self._clients.peek(client)
        return c if c is not None and not c.closed else None

    def stats(self) -> TransportStats:
        """A snapshot of the counters (``handshakes_in_progress`` counts incoming handshakes)."""
        s = self._stats
        return TransportStats(
            connections=len(self._pool),
            handshakes_in_progress=self._incoming_hs,
            accepted_total=s.accepted_total,
            dialed_total=s.dialed_total,
            refused_total=dict(s.refused_total),
            evicted_total=s.evicted_total,
            dropped_frames_total=s.dropped_frames_total,
            auth_failures_total=s.auth_failures_total,
        )

    def quic_state(self) -> dict[str, int]:
        """Sizes of every per-connection structure, ours and qh3's (for tests and /health)."""
        return {
            "connections": len(self._pool),
            "clients": len(self._clients),
            "handshakes": len(self._handshaking),
            "incoming_handshakes": self._incoming_hs,
            "dials": len(self._dials),
            "waiters": len(self._waiters),
            "parked": len(self._parked),
            "quic_connections": len(self._protos),
            "routes": self._endpoint.routes if self._endpoint is not None else 0,
        }

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Return once no QUIC connection state is left (closing ones finished draining)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self) -> None:
        """Close every connection (code ``shutdown``), wait briefly for the closes, unbind."""
        if self._stopping:
            return
        self._stopping = True
        self._parked.clear()
        for c in [*self._pool.values(), *self._clients.values(), *self._handshaking]:
            c._finish("shutdown", None if c._published else TransportError("transport stopped"), send=True)
        for waiters in self._waiters.values():
            for w in waiters:
                if not w.done():
                    w.set_exception(TransportError("transport stopped"))
        self._waiters.clear()
        with contextlib.suppress(TimeoutError):
            await self.wait_idle(min(2.0, self._cfg.handshake_timeout))
        for p in list(self._protos):
            p.abandon()
        ep, self._endpoint = self._endpoint, None
        if ep is not None and ep.transport is not None:
            ep.transport.close()
            await asyncio.sleep(0)  # asyncio closes the socket one loop turn later: free the port now
        self._pool.close()
        self._clients.close()
        self._refused_cids.close()

    # -- hooks (overridable in tests) ----------------------------------------------------

    def _proof_signature(self, transcript: bytes) -> bytes:
        """The dialer's signature over the auth transcript."""
        return self._keypair.sign(transcript)

    # -- internals: creation -------------------------------------------------------------

    def _track(self, proto: qa.Proto) -> None:
        self._protos.add(proto)
        self._idle.clear()
        proto.on_terminated = self._untrack

    def _untrack(self, proto: qa.Proto) -> None:
        self._protos.discard(proto)
        if not self._protos:
            self._idle.set()

    def _incoming(self, quic: qa.QhConnection, stream_handler: Any = None) -> qa.Proto:
        """Factory qh3 calls at the first packet of a new connection: admission happens here."""
        proto = qa.Proto(quic)
        self._track(proto)
        reason: str | None = None
        if self._stopping:
            reason = "shutdown"
        elif self._role == "client":
            reason = "client_only"  # a light client dials; it accepts no connection
        elif len(self._pool) >= self._cfg.max_connections:
            reason = "max_connections"
        elif self._incoming_hs >= self._cfg.max_incoming_handshakes:
            reason = "max_incoming_handshakes"
        if reason is not None:
            dcid = quic.original_destination_connection_id
            if self._refused_cids.peek(dcid) is None:  # not a later datagram of a refused attempt
                self._stats_bump(reason)
            # the dialer may address its next datagrams to either id
            self._refused_cids.set(dcid, reason)
            self._refused_cids.set(quic.host_cid, reason)
            proto.refuse_reason = reason
            return proto
        conn = self.connection_class(self, proto, outbound=False, remote_address="?")
        self._handshaking.add(conn)
        self._incoming_hs += 1
        return proto

    async def _dial(self, address: str, expected: NodeId | None) -> QuicConnection:
        host, port = _split(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        infos = await self._loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        addr: tuple[str, int] = (str(infos[0][4][0]), int(infos[0][4][1]))
        ep = self._endpoint
        if ep is None or self._stopping:
            raise TransportError("transport is not running")
        proto = qa.Proto(qa.new_client_connection(self._client_cfg))
        self._track(proto)
        conn = self.connection_class(self, proto, outbound=True, remote_address=f"{addr[0]}:{addr[1]}")
        conn._expected = expected
        self._handshaking.add(conn)
        ep.add_outbound(proto)
        proto.connect(addr)
        assert conn._ready is not None
        try:
            return await conn._ready
        except _Duplicate as dup:
            return await self._await_survivor(dup.peer)
        except asyncio.CancelledError:
            conn._finish("normal", TransportError("dial cancelled"), send=True)
            raise

    async def _await_survivor(self, peer: NodeId) -> QuicConnection:
        existing = self._pool.peek(peer)
        if existing is not None and not existing.closed:
            return existing
        fut: asyncio.Future[QuicConnection] = self._loop.create_future()
        self._waiters.setdefault(peer, []).append(fut)
        try:
            return await asyncio.wait_for(fut, self._cfg.handshake_timeout)
        except TimeoutError:
            raise ConnectionLost(f"lost the duplicate tie-break and no connection to {peer.short()} followed") from None
        finally:
            lst = self._waiters.get(peer)
            if lst is not None:
                if fut in lst:
                    lst.remove(fut)
                if not lst:
                    del self._waiters[peer]

    # -- internals: authentication outcome -----------------------------------------------

    def _dialer_id(self, c: QuicConnection) -> NodeId:
        assert c._peer is not None
        return self.node_id if c.outbound else c._peer

    def _survivor(self, existing: QuicConnection, new: QuicConnection) -> QuicConnection:
        if existing._peer_instance != new._peer_instance and new._peer_instance:
            # The peer restarted (a new process proved the same id): the old connection is
            # stale even though it has not timed out yet, so the new one wins.
            return new
        a, b = self._dialer_id(existing), self._dialer_id(new)
        if a != b:
            return existing if a < b else new
        return new

    def _listener_authenticated(self, conn: QuicConnection) -> None:
        peer = conn._peer
        assert peer is not None
        if self._stopping:
            conn._refuse("shutdown", "node stopping")
            return
        if conn.role == "client":
            old = self._clients.peek(peer)
            if old is not None and not old.closed:
                old._finish("duplicate", None, reason="superseded", send=True)  # the client reconnected
            if len(self._clients) >= self.max_clients:
                conn._refuse("max_clients", f"{self.max_clients} clients held")
                return
            conn._write_now(self._codec.frame(Welcome(node_id=self.node_id.raw, instance=self._instance)))
            if not conn.closed:
                self._publish(conn)
            return
        existing = self._pool.peek(peer)
        if existing is not None and not existing.closed:
            if self._survivor(existing, conn) is existing:
                conn._refuse("duplicate", "a connection to this peer already exists")
                return
            existing._finish("duplicate", None, reason="superseded", send=True)
        elif self.node_id < peer and any(c.outbound and (c._peer or c._expected) == peer for c in self._handshaking):
            # Simultaneous dial: our own dial to this peer is under way and would win the
            # tie-break. Welcoming this one now would let the peer's dial() return a connection
            # that is closed a moment later; decide once ours is done (this handshake's timer
            # still bounds the wait).
            self._parked[peer] = conn
            return
        if len(self._pool) >= self._cfg.max_connections:
            conn._refuse("max_connections", f"{self._cfg.max_connections} connections held")
            return
        conn._write_now(self._codec.frame(Welcome(node_id=self.node_id.raw, instance=self._instance)))
        if conn.closed:
            return
        self._publish(conn)

    def _dialer_welcomed(self, conn: QuicConnection) -> None:
        peer = conn._peer
        assert peer is not None and conn._ready is not None
        existing = self._pool.peek(peer)
        if existing is not None and not existing.closed:
            if self._survivor(existing, conn) is existing:
                conn._ready.set_result(existing)
                conn._finish("duplicate", None, reason="superseded", send=True)
                return
            existing._finish("duplicate", None, reason="superseded", send=True)
        self._publish(conn)
        if not conn.closed and not conn._ready.done():
            conn._ready.set_result(conn)

    def _resume_parked(self, peer: NodeId) -> None:
        """Our dial to ``peer`` finished (either way): decide on its parked inbound attempt."""
        parked = self._parked.pop(peer, None)
        if parked is not None and not parked.closed:
            self._listener_authenticated(parked)

    def _publish(self, conn: QuicConnection) -> None:
        peer = conn._peer
        assert peer is not None
        self._handshaking.discard(conn)
        if not conn.outbound:
            self._incoming_hs -= 1
            self._stats.accepted_total += 1
        else:
            self._stats.dialed_total += 1
        addr: Any = getattr(conn._proto.quic, "_remote_addr", None)
        if not conn.outbound and addr:
            conn.remote_address = f"{addr[0]}:{addr[1]}"
        conn._open()
        conn._published = True
        if conn.role == "client":
            self._clients.set(peer, conn)  # room checked by the caller
            if self._events is not None:
                try:
                    self._events.on_connection(conn)
                except Exception:
                    log.exception("on_connection raised")
            return
        self._pool.set(peer, conn)  # an outbound dial into a full pool evicts (and closes) the LRU one
        waiters = self._waiters.pop(peer, None)
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

    def _deliver(self, conn: QuicConnection, message: Message) -> None:
        if self._events is not None:
            try:
                self._events.on_message(conn, message)
            except Exception:
                log.exception("on_message raised")

    def _evicted(self, peer: NodeId, conn: QuicConnection) -> None:
        self._stats.evicted_total += 1
        conn._finish("evicted", None, reason="connection pool full", send=True)

    def _released(self, conn: QuicConnection, was: _St, code: str, error: Exception | None) -> None:
        """``conn`` closed: drop it from every table; tell the node once if it was published."""
        peer = conn._peer
        if conn in self._handshaking:
            self._handshaking.discard(conn)
            if not conn.outbound:
                self._incoming_hs -= 1
                if peer is not None and self._parked.get(peer) is conn:
                    del self._parked[peer]
            else:
                target = peer or conn._expected
                if target is not None and target in self._parked:
                    self._resume_parked(target)
        if peer is not None and self._pool.peek(peer) is conn:
            self._pool.pop(peer)
        if peer is not None and self._clients.peek(peer) is conn:
            self._clients.pop(peer)
        if conn._published and self._events is not None:
            try:
                self._events.on_connection_lost(conn, error)
            except Exception:
                log.exception("on_connection_lost raised")

    def _stats_bump(self, reason: str) -> None:
        r = self._stats.refused_total
        r[reason] = r.get(reason, 0) + 1


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TransportError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)
