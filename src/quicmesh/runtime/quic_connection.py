"""One QUIC connection (qh3): frames on one stream, the handshake machine, keepalive, send path.

Theory of operation
-------------------
A :class:`QuicConnection` is created by :class:`~quicmesh.runtime.quic_transport.QuicTransport`
for every attempt, inbound or outbound, and reports to it only through the narrow
:class:`ConnectionHost` interface (admission, publication, release, delivery); the transport
drives it only through its public methods (:meth:`QuicConnection.admit`,
:meth:`~QuicConnection.decline`, :meth:`~QuicConnection.abort`, :meth:`~QuicConnection.open`).

Until it is established the connection feeds every decoded frame, TLS completion and its
handshake timer to a sans-IO :class:`~quicmesh.core.handshake.Handshake` and executes the
outputs (send a frame, ask the host for admission, close, sample the RTT). Once established,
frames take the fast path: application messages go straight to the host's ``deliver``; pings,
pongs and ``Refuse`` are handled here; a handshake message closes with code ``protocol``.

Send path: ``send`` encodes into the connection's queue and schedules one flush per event-loop
iteration; the flush writes everything queued in one stream write and one transmit. Unsent bytes
(our queue plus what qh3 has not transmitted yet) are capped at ``send_buffer_bytes``: beyond it
``send`` returns ``False`` and counts ``dropped_frames_total``. Receive path: one
:class:`~quicmesh.core.wire.FrameDecoder`; a decode error closes with code ``protocol``. Before
the handshake completes at most ``max_preauth_buffer`` bytes of partial frame are held (beyond:
``protocol``). The owner may pause the read side (:meth:`QuicConnection.pause_reading`, when the
peer holds its share of the node's inbox): received stream data then waits undecoded, at most
``max_paused_bytes`` (beyond: ``slow_consumer``), and messages decoded from a chunk that arrived
before the pause wait in order; :meth:`~QuicConnection.resume_reading` delivers them and goes on.
Teardown happens once (:meth:`QuicConnection.abort`): timers cancelled, queues dropped, the host
told (which removes it from every table and tells the node if it was published).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import Protocol

from ..config import TransportConfig
from ..core import handshake as hs
from ..core.messages import Challenge, Hello, Ping, Pong, Proof, Refuse, Welcome
from ..core.wire import Codec, FrameDecoder, Message
from ..errors import AuthenticationFailed, ConnectionLost, DecodeError, IdentityError, TransportError
from ..identity import NodeId, node_id_from_certificate
from . import _quic_adapter as qa
from ._quic_endpoint import connection_binding
from .quic_send import SendPath, WriteThrough
from .transport import Connection, TransportStats

__all__ = ["ConnectionHost", "Duplicate", "QuicConnection"]

log = logging.getLogger("quicmesh.quic")

_CONTROL_TYPES = hs.CONTROL_TYPES


class Duplicate(Exception):
    """A dialed connection lost the duplicate tie-break: ``dial()`` returns the survivor."""

    def __init__(self, peer: NodeId) -> None:
        super().__init__(f"duplicate connection to {peer.short()}")
        self.peer = peer


_HOLD_AT = 1 << 20
"""#14: bytes a paused connection holds before it stops reading datagrams (``Proto.hold``)."""


class ConnectionHost(Protocol):
    """What a :class:`QuicConnection` needs from its transport (and nothing else)."""

    config: TransportConfig
    codec: Codec
    local: hs.Local
    counters: TransportStats
    through: WriteThrough
    """The transport's write-through scope (#14), shared by its connections."""

    def sign_proof(self, transcript: bytes) -> bytes:
        """The dialer's signature over the auth transcript."""

    def nonce(self, n: int) -> bytes:
        """``n`` fresh random bytes for a challenge."""

    def admission(self, conn: QuicConnection, need: hs.NeedAdmission) -> None:
        """Decide on an inbound attempt; answer with ``conn.admit()`` or ``conn.decline()``."""

    def established(self, conn: QuicConnection) -> None:
        """``conn`` completed its handshake: apply the duplicate rule and publish it."""

    def released(self, conn: QuicConnection, error: Exception | None) -> None:
        """``conn`` closed: forget it; tell the node if it was published."""

    def deliver(self, conn: QuicConnection, message: Message) -> None:
        """An application message arrived on a published connection."""

    def touch(self, peer: NodeId) -> object:
        """Mark the peer's connection used (LRU pool)."""

    def count_refusal(self, reason: str) -> None:
        """Count an attempt ended before admission."""

    def path_of(self, conn: QuicConnection, proto: qa.Proto) -> str:
        """#13: ``direct`` or ``relayed:<relay id>`` for ``conn`` now."""

    def keeps(self, conn: QuicConnection) -> bool:
        """#13: whether ``conn`` must stay open although idle (relay reservations and paths)."""

    def alive(self, conn: QuicConnection) -> None:
        """Datagrams of ``conn``'s peer arrived (see :meth:`QuicConnection.alive`)."""


def _code_of(phrase: str) -> str:
    return phrase.split(":", 1)[0].strip()


class QuicConnection(SendPath, Connection):
    """One QUIC connection to a peer (published to the node only once authenticated)."""

    def __init__(
        self, host: ConnectionHost, proto: qa.Proto, *, outbound: bool, remote_address: str,
        expected: NodeId | None = None,
    ) -> None:
        self._host = host
        self._proto = proto
        self._loop = asyncio.get_running_loop()
        self._cfg = host.config
        self._codec = host.codec
        self._stats = host.counters
        self._deliver = host.deliver
        self._touch = host.touch
        self.outbound = outbound
        self.remote_address = remote_address
        now = self._loop.time()
        self._hs = hs.Handshake(
            host.local, dialer=outbound, now=now, timeout=self._cfg.handshake_timeout,
            sign=host.sign_proof, nonce=host.nonce, expected=expected,
        )
        self._hs.remote = remote_address if outbound else ""  # #13: told to the peer in the Hello
        self._expected = expected
        self._open = False
        self._closed = False
        self._drained: asyncio.Future[None] | None = None
        self._closed_evt: asyncio.Event | None = None  # #14: made when waited on, to spare memory
        self._sid: int | None = None
        self._decoder: FrameDecoder = self._codec.decoder()
        self._paused = False
        self._held = bytearray()  # bounded: max_paused_bytes, checked in _on_stream_data
        self._undelivered: deque[Message] | None = None  # bounded: the messages of one received chunk
        self._queue: list[bytes] = []  # bounded: send() caps queued + qh3-unsent bytes at send_buffer_bytes
        self._queued = 0
        self._backlog = 0
        self._flush_handle: asyncio.Handle | None = None
        self._through = host.through
        self._hs_timer: asyncio.TimerHandle | None = self._loop.call_later(self._cfg.handshake_timeout, self._on_timer)
        self._ka_timer: asyncio.TimerHandle | None = None
        self.ready: asyncio.Future[QuicConnection] | None = self._loop.create_future() if outbound else None
        """Outbound: resolves with the connection ``dial()`` returns (this one or the survivor)."""
        self._last_rx = now
        self._ping_seq = 0
        self._ping_sent: tuple[int, float] | None = None
        self._ping_waiter: asyncio.Future[float] | None = None
        self._rtt: float | None = None
        self.published = False
        """Whether the node was told about this connection (``on_connection``)."""
        self.role = "node"
        """The peer's role: ``"node"`` (a mesh peer) or ``"client"`` (a light client, from ``Hello``)."""
        self.close_code: str | None = None
        """The close code (``normal``, ``duplicate``, ``evicted``, ``protocol``...) once closed."""
        self.attachment: object | None = None
        """The owner's per-connection state (the gateway keeps a client's session here)."""
        self.pongs_received = 0
        """Keepalive/ping replies received (for tests and metrics)."""
        proto.sink = self

    # -- public API ----------------------------------------------------------------------

    @property
    def peer(self) -> NodeId | None:
        """The peer's node id once known (``peer_id`` is set once it is proved)."""
        return self._hs.peer

    @property
    def observed(self) -> str:
        """#13: the address the peer reported seeing this node at (unchecked; ``""``: none)."""
        return self._hs.observed

    @property
    def path(self) -> str:
        """#13: ``direct``, or ``relayed:<relay id>`` while the packets go through a relay."""
        return self._host.path_of(self, self._proto)

    @property
    def peer_instance(self) -> bytes:
        """The peer's instance (random per process start), once shown."""
        return self._hs.peer_instance

    @property
    def stale(self) -> bool:
        """Whether no datagram arrived for longer than a live connection stays silent: twice
        ``transport.keepalive_interval`` (each end pings an idle connection every interval), so
        its path is probably dead (a relay gone, a NAT mapping expired) though not timed out
        yet. A connection whose reading is held (its consumer behind) is not stale."""
        proto = self._proto
        if proto.holding:
            return False
        return self._loop.time() - proto.heard_at > 2 * self._cfg.keepalive_interval + qa.ALIVE_INTERVAL

    @property
    def target(self) -> NodeId | None:
        """The peer id this attempt is to: known, else expected."""
        return self._hs.peer or self._expected

    @property
    def pending_bytes(self) -> int:
        """Bytes queued here plus bytes qh3 holds that were never transmitted."""
        if self._closed:
            return 0
        return self._queued + self._quic_backlog()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_tls(self) -> bool:
        """Whether the QUIC/TLS handshake is still running."""
        return self._hs.phase is hs.Phase.TLS

    @property
    def rtt(self) -> float | None:
        """Smoothed RTT (seconds) from the handshake exchange and keepalive ping/pong."""
        return self._rtt

    @property
    def datagram_size(self) -> int | None:
        """#14: the largest UDP payload (bytes) qh3 sends on this connection now."""
        return None if self._closed else qa.datagram_size(self._proto.quic)

    def send(self, message: Message) -> bool:
        """Queue ``message``; ``False`` when the connection is closed or its send buffer is full.

        Raises :class:`~quicmesh.errors.FrameTooLarge` for a message over ``max_frame_size``.
        """
        if not self._open:
            self._stats.dropped_frames_total += 1
            return False
        return self._enqueue(self._codec.frame(message))

    def pause_reading(self) -> None:
        """Stop delivering messages (see the module docstring)."""
        self._paused = True

    def resume_reading(self) -> None:
        """Deliver what waited while paused, then go on as usual."""
        if not self._paused:
            return
        self._paused = False
        if self._closed:
            return
        self._deliver_open()
        if self._held and not self._paused and not self._closed:
            data = bytes(self._held)
            self._held.clear()
            self._feed(data)
        if self._proto.holding and not self._paused and not self._closed:  # #14 (fastpath)
            self._proto.release()

    async def ping(self) -> float:
        """Send a ping and return the measured round-trip time (seconds)."""
        if not self._open:
            raise ConnectionLost("connection is closed")
        if self._ping_waiter is None or self._ping_waiter.done():
            self._ping_waiter = self._loop.create_future()
            self._send_ping()
        return await asyncio.shield(self._ping_waiter)

    async def close(self, code: str = "normal", reason: str = "") -> None:
        """Close (telling the peer ``code``/``reason``) and wait until QUIC finished closing. An
        ``idle`` close of a connection that carries relayed paths or a relay reservation is
        ignored (#13: the overlays do not see what the relay uses it for)."""
        if code == "idle" and self._host.keeps(self):
            return
        self.abort(code, None, reason=reason, send=True)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Return once the connection has closed (for any reason) and QUIC has terminated it.

        An open connection is waited on for as long as it stays open. Once it is closing, QUIC's
        own close is awaited for at most ``handshake_timeout``, after which it is abandoned.
        """
        evt = self._closed_evt
        if evt is None:
            evt = self._closed_evt = asyncio.Event()
            if self._closed:
                evt.set()
        await evt.wait()
        proto = self._proto
        if proto.terminated:
            return
        try:
            await asyncio.wait_for(proto.wait_closed(), self._cfg.handshake_timeout)
        except TimeoutError:
            proto.abandon()

    def __repr__(self) -> str:
        peer = self.peer.short() if self.peer else "?"
        state = "closed" if self._closed else "open" if self._open else self._hs.phase.value
        return f"<QuicConnection {'out' if self.outbound else 'in'} {peer} {self.remote_address} {state}>"

    # -- driven by the transport ---------------------------------------------------------

    def admit(self) -> None:
        """The host's answer to an admission request: go on."""
        self._run(self._hs.handle(hs.Admit(), self._loop.time()))

    def decline(self, code: str, reason: str) -> None:
        """The host's answer to an admission request: refuse with ``code``."""
        self._run(self._hs.handle(hs.Decline(code, reason), self._loop.time()))

    def open(self) -> None:
        """Published: start the keepalive; application frames flow from now on."""
        self._open = True
        self.published = True
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None
        self.peer_id = self._hs.peer  # type: ignore[assignment]
        addr = self._proto.peer_address()
        if not self.outbound and addr:
            self.remote_address = addr
        self._ka_timer = self._loop.call_later(self._cfg.keepalive_interval, self._keepalive)
        self._proto.ack_delay = self._cfg.ack_delay  # #14: ACKs ride on replies from now on

    # -- qh3 events ----------------------------------------------------------------------

    def quic_event(self, event: qa.QuicEvent) -> None:
        try:
            if isinstance(event, qa.StreamDataReceived):
                self._on_stream_data(event.stream_id, event.data)
            elif isinstance(event, qa.ConnectionTerminated):
                self._on_terminated(event)
            elif isinstance(event, qa.HandshakeCompleted):
                if self._hs.phase is hs.Phase.TLS:
                    self._tls_done()
        except Exception as exc:  # a bug here must cost one connection, never the transport
            log.exception("error handling a QUIC event on %r", self)
            self.abort("error", TransportError(f"internal error: {exc}"), send=True)

    def alive(self) -> None:
        """The peer's datagrams were processed: tell the owner it is alive (an open node
        connection only), even when its messages still wait behind others."""
        if self._open and not self._closed and self.role == "node":
            self._host.alive(self)

    def quic_failed(self, exc: BaseException) -> None:
        self.abort("error", TransportError(f"QUIC error: {type(exc).__name__}: {exc}"), send=False)

    # -- handshake -----------------------------------------------------------------------

    def _tls_done(self) -> None:
        binding = self._binding()
        if not self.outbound:
            self._hs.remote = self._proto.peer_address() or ""  # #13: the dialer's mapping, in the Challenge
            self._run(self._hs.handle(hs.TlsDone(binding=binding), self._loop.time()))
            return
        cert = self._proto.quic.get_peercert()
        peer: NodeId | None = None
        problem = "listener presented no certificate"
        if cert is not None:
            try:
                peer = node_id_from_certificate(cert.public_bytes())
            except (AuthenticationFailed, IdentityError, ValueError) as exc:
                problem = str(exc)
        if peer is not None:
            self._sid = self._proto.quic.get_next_available_stream_id()
        self._run(self._hs.handle(hs.TlsDone(peer, problem, binding), self._loop.time()))

    def _binding(self) -> bytes:
        """#14: what names this connection at both ends, for the dialer's proof in its ``Hello``
        (empty: the listener's ``Challenge`` round trip; a test's dialer of the older kind)."""
        return connection_binding(self._proto.quic)

    def _on_handshake_message(self, m: Message) -> None:
        """A frame before the connection is established: to the handshake machine."""
        self._run(self._hs.handle(hs.Received(m), self._loop.time()))

    def _on_timer(self) -> None:
        self._hs_timer = None
        if self._closed or self._open:
            return
        now = self._loop.time()
        self._run(self._hs.handle(hs.TimerFired(), now))
        deadline = self._hs.next_deadline()
        if not self._closed and not self._open and deadline is not None:  # fired a hair early
            self._hs_timer = self._loop.call_later(max(0.0, deadline - now), self._on_timer)

    def _run(self, outputs: list[hs.Output]) -> None:
        """Execute the handshake machine's outputs, in order."""
        for out in outputs:
            if self._closed:
                return
            if isinstance(out, hs.Send):
                if self._sid is not None:
                    self._write_now(self._codec.frame(out.message))
            elif isinstance(out, hs.NeedAdmission):
                if out.role == "client":
                    self.role = "client"
                self._host.admission(self, out)
            elif isinstance(out, hs.RttSample):
                self._sample_rtt(out.seconds)
            elif isinstance(out, hs.Established):
                self._stats.handshakes_early_total += self._hs.early
                self.certificate = self._hs.peer_certificate
                self.permissions = self._hs.peer_permissions or self.permissions
                self._host.established(self)
            elif isinstance(out, hs.Close):
                if out.counted is not None:
                    self._host.count_refusal(out.counted)
                    if out.counted == "auth":
                        self._stats.auth_failures_total += 1
                self.abort(out.code, out.error, reason=out.reason, send=out.send)

    def _on_stream_data(self, sid: int, data: bytes) -> None:
        if self._closed:
            return
        if self._sid is None and not self.outbound and sid % 4 == 0:
            self._sid = sid
            if self._hs.phase is hs.Phase.TLS:  # 1-RTT data proves the TLS handshake is done
                self._tls_done()
        if sid != self._sid:
            self.abort("protocol", DecodeError(f"data on unexpected stream {sid}"), send=True)
            return
        self._last_rx = self._loop.time()
        if self._paused and self._open:
            self._held += data
            if len(self._held) > _HOLD_AT and not self._proto.holding:  # #14 (fastpath)
                self._proto.hold()
            if len(self._held) > self._cfg.max_paused_bytes:
                self.abort("slow_consumer", TransportError(
                    f"peer sent over {self._cfg.max_paused_bytes} bytes while paused"), send=True)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Decode ``data`` and hand the messages on (the handshake, or the owner)."""
        try:
            messages = self._decoder.feed(data)
        except DecodeError as exc:
            self._refuse_protocol(exc)
            return
        if not self._open and self._decoder.buffered > self._cfg.max_preauth_buffer:
            self._refuse_protocol(DecodeError(
                f"{self._decoder.buffered} bytes of partial frame before authentication "
                f"(at most {self._cfg.max_preauth_buffer})"))
            return
        with self._reply_scope(messages):
            for i, m in enumerate(messages):
                if self._closed:
                    return
                if self._open:
                    if self._paused:
                        self._waiting().extend(messages[i:])
                        return
                    self._on_open_message(m)
                else:
                    self._on_handshake_message(m)
                    if self._open and i + 1 < len(messages):  # established: the rest are application messages
                        self._waiting().extend(messages[i + 1:])
                        self._deliver_open()
                        return

    def _waiting(self) -> deque[Message]:
        """The messages received but not yet handed on (made on first use: #14, as _closed_evt)."""
        if self._undelivered is None:
            self._undelivered = deque()  # bounded: the messages of one received chunk
        return self._undelivered

    def _deliver_open(self) -> None:
        """Deliver the messages that waited (paused, or behind the handshake), until paused again."""
        pending = self._undelivered
        while pending and not self._paused and not self._closed:
            self._on_open_message(pending.popleft())

    def _refuse_protocol(self, exc: DecodeError) -> None:
        self._host.count_refusal("protocol")
        if not self._open:
            self._write_now(self._codec.frame(Refuse(code="protocol", reason=str(exc)[:200])))
        self.abort("protocol", exc, send=True)

    # -- open connection -----------------------------------------------------------------

    def _on_open_message(self, m: Message) -> None:
        if type(m) not in _CONTROL_TYPES:  # fast path: application messages
            self._deliver(self, m)
        elif isinstance(m, Ping):
            self._enqueue(self._codec.frame(Pong(seq=m.seq)))
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
            self.abort(m.code, ConnectionLost(f"peer closed: {m.code}: {m.reason}"), send=False, reason=m.reason)
        elif isinstance(m, Hello | Challenge | Proof | Welcome):
            self._host.count_refusal("protocol")
            self.abort("protocol", DecodeError(f"{type(m).__name__} after the handshake"), send=True)
        else:
            self._deliver(self, m)

    def _keepalive(self) -> None:
        self._ka_timer = None
        if not self._open:
            return
        interval = self._cfg.keepalive_interval
        if self._loop.time() - self._last_rx >= interval * 0.5:
            self._send_ping()
        self._ka_timer = self._loop.call_later(interval, self._keepalive)

    def _send_ping(self) -> None:
        self._ping_seq += 1
        self._ping_sent = (self._ping_seq, self._loop.time())
        self._enqueue(self._codec.frame(Ping(seq=self._ping_seq)))

    def _sample_rtt(self, sample: float) -> None:
        self._rtt = sample if self._rtt is None else 0.875 * self._rtt + 0.125 * sample

    # -- send path -----------------------------------------------------------------------

    # -- teardown ------------------------------------------------------------------------

    def _on_terminated(self, event: qa.ConnectionTerminated) -> None:
        if self._closed:
            return
        phrase = event.reason_phrase or ""
        code = _code_of(phrase)
        in_tls = self._hs.phase is hs.Phase.TLS
        if not self.outbound and in_tls:
            self._host.count_refusal("tls")  # TLS failed (no common algorithm, ALPN...) or the dialer left
        if not self._open and self.outbound:
            if code in hs.CLOSE_CODES and code not in ("normal", "error"):
                err: Exception = hs.refusal_error(code, phrase)
            elif in_tls:
                err = TransportError(f"QUIC handshake failed (error {event.error_code}): {phrase}")
            else:
                err = ConnectionLost(f"closed during the handshake (error {event.error_code}): {phrase}")
        else:
            err = ConnectionLost(f"connection closed by peer or QUIC (error {event.error_code}): {phrase}")
        self.abort(code or "lost", err, send=False, reason=phrase)

    def abort(self, code: str, error: Exception | None, *, send: bool, reason: str = "") -> None:
        """Close once: release every per-connection structure, tell the host, tell the peer."""
        if self._closed:
            return
        if self._writing_early:  # a write failed inside send(): close at the next iteration
            self._open = False  # nothing more is queued or written meanwhile
            self._loop.call_soon(functools.partial(self.abort, code, error, send=send, reason=reason))
            return
        in_tls = self._hs.ended_in is hs.Phase.TLS if self._hs.closed else self._hs.phase is hs.Phase.TLS
        self._hs.abort()
        self._closed = True
        self._open = False
        if self._closed_evt is not None:
            self._closed_evt.set()
        self.close_code = code
        for h in (self._hs_timer, self._ka_timer, self._flush_handle):
            if h is not None:
                h.cancel()
        self._hs_timer = self._ka_timer = self._flush_handle = None
        self._queue.clear()
        self._queued = 0
        self._decoder = self._codec.decoder()  # drop any partial frame
        self._held.clear()
        self._undelivered = None
        w = self._ping_waiter
        self._ping_waiter = None
        if w is not None and not w.done():
            w.set_exception(ConnectionLost(f"connection closed: {code}"))
        self.transmitted()  # wake drain() waiters: nothing more will be sent
        if send:
            text = f"{code}: {reason}" if reason else code
            self._proto.close_with(hs.CLOSE_CODES.get(code, hs.CLOSE_CODES["error"]), text)
            if in_tls:
                # no handshake: nothing to drain for (qh3 would wait 3 PTO at the initial 333 ms RTT)
                self._proto.abandon()
        self._host.released(self, error)
        r = self.ready
        if r is not None and not r.done():
            peer = self.target  # a dial ended unanswered (``redundant``) knows only its expected peer
            if code == "duplicate" and peer is not None:
                r.set_exception(Duplicate(peer))
            else:
                r.set_exception(error or ConnectionLost(f"closed: {code}"))

