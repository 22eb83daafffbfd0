"""An in-process transport with the same contract as the QUIC one, for tests and examples.

Messages still go through the codec (encode, frame, decode), so size limits and decode errors
behave as on the wire; delivery is scheduled on the event loop, one flush per loop iteration per
connection, like the QUIC transport's batching. A receiver that pauses reading
(:meth:`MemoryConnection.pause_reading`) leaves the sender's frames in the sender's queue, where
they count against its ``send_buffer_bytes`` (back-pressure, as a stalled QUIC stream would).

Admission is the QUIC transport's: the same :class:`~quicmesh.runtime.admission.AdmissionTable`
decides at the "first packet" (``max_connections``, ``max_incoming_handshakes``), at the "Hello"
(light clients, ``max_clients``) and after the "proof" (capacity and the duplicate rule), and
holds the peers and the clients. A dial completes within one call (no handshake round trips), and
the refusals a dialer sees are the QUIC ones (:func:`~quicmesh.core.handshake.refusal_error`).
A transport created with ``role="client"`` dials as a light client and accepts nothing.
In authority mode (``trust``) each side checks the other's certificate as the QUIC handshake
does (:func:`check_certificates`): a refusal raises :class:`~quicmesh.errors.NotAdmitted`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import time

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..config import TransportConfig
from ..core.handshake import refusal_error
from ..core.permissions import EVERYTHING, Permissions
from ..core.trust import Certificate, Trust
from ..core.wire import Codec, Message
from ..errors import ConnectionLost, DecodeError, NotAdmitted, PeerIdMismatch, RealmMismatch, TransportError
from ..identity import KeyPair, NodeId
from .admission import AdmissionTable
from .transport import Connection, Transport, TransportEvents, TransportStats

__all__ = ["MemoryConnection", "MemoryNetwork", "MemoryTransport", "check_certificates"]


def _check_one(checker: Trust | None, cert: bytes | None, subject: NodeId, kind: str,
               wall: float) -> tuple[Certificate | None, Permissions]:
    if checker is None or checker.open:
        return None, EVERYTHING
    c = checker.learn(cert, wall, subject=subject, kind="client" if kind == "client" else "node")
    assert c is not None
    return c, c.permissions


def check_certificates(dialer: MemoryTransport, listener: MemoryTransport) -> tuple[
        tuple[Certificate | None, Permissions], tuple[Certificate | None, Permissions]]:
    """Authority mode: the listener checks the dialer's certificate, then the dialer the
    listener's; returns (what the listener learned, what the dialer learned). Raises
    :class:`~quicmesh.errors.NotAdmitted` (the listener's reasons bare, the dialer's prefixed
    ``listener:``), :class:`~quicmesh.errors.RealmMismatch` for open realms that differ."""
    wall = time.time()
    d_trust, l_trust = dialer.trust, listener.trust
    if d_trust and l_trust and not d_trust.open and l_trust.revocations is not None and l_trust.realm == d_trust.realm:
        d_version = d_trust.revocations.version if d_trust.revocations else 0
        if l_trust.revocations.version > d_version:  # the dialer catches up, as in the QUIC handshake
            d_trust.apply_revocations(l_trust.revocations)
    if l_trust is None or l_trust.open:
        if dialer.realm != listener.realm:
            raise RealmMismatch("listener refused: realm: realm mismatch")
    elif dialer.realm != listener.realm and not (d_trust and d_trust.own_certificate):
        raise NotAdmitted("no certificate")
    theirs = _check_one(l_trust, d_trust.own_certificate if d_trust else None, dialer.node_id, dialer.role, wall)
    try:
        mine = _check_one(d_trust, l_trust.own_certificate if l_trust else None, listener.node_id, "node", wall)
    except NotAdmitted as exc:
        raise NotAdmitted(f"listener: {exc.reason}") from None
    return theirs, mine


class MemoryNetwork:
    """The shared medium: maps addresses to listening :class:`MemoryTransport` objects."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._listeners: LruMap[str, MemoryTransport] = LruMap("memory.listeners", capacity, Overflow.REJECT)
        self._ports = itertools.count(1)

    def bind(self, transport: MemoryTransport, address: str) -> str:
        host, _, port = address.rpartition(":")
        if port in ("", "0"):
            address = f"{host or 'mem'}:{next(self._ports)}"
        if address in self._listeners:
            raise TransportError(f"address {address} in use")
        self._listeners.set(address, transport)
        return address

    def unbind(self, address: str) -> None:
        self._listeners.pop(address)

    def lookup(self, address: str) -> MemoryTransport | None:
        return self._listeners.peek(address)


class MemoryConnection(Connection):
    """One side of an in-memory connection pair."""

    def __init__(
        self, owner: MemoryTransport, peer_id: NodeId, remote_address: str, outbound: bool, *,
        role: str = "node", peer_instance: bytes = b"",
    ) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.remote_address = remote_address
        self.outbound = outbound
        self.role = role
        self.peer_instance = peer_instance
        """The peer transport's instance (random per start), for the duplicate rule."""
        self.other: MemoryConnection | None = None
        self._queue: list[bytes] = []  # bounded: capped in bytes by send_buffer_bytes in send()
        self._pending = 0
        self._flush_scheduled = False
        self._closed = False
        self._done = asyncio.Event()
        self._drained: asyncio.Future[None] | None = None
        """What :meth:`drain` waiters wait on: resolved by a flush that brings the queue to low
        water, or by the close."""
        self.paused = False
        """The owner paused reading: the peer's frames wait in the peer's send queue."""

    @property
    def target(self) -> NodeId | None:
        """The peer's id (known from the start in memory)."""
        return self.peer_id

    @property
    def pending_bytes(self) -> int:
        return self._pending

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def rtt(self) -> float | None:
        return 0.0

    @property
    def stale(self) -> bool:
        """Never: an in-memory pair is closed, not silenced (see ``QuicConnection.stale``)."""
        return False

    @property
    def in_tls(self) -> bool:
        """Never: an in-memory pair has no TLS handshake."""
        return False

    def send(self, message: Message) -> bool:
        if self._closed:
            return False
        frame = self.owner.codec.frame(message)
        if self._pending + len(frame) > self.owner.config.send_buffer_bytes:
            self.owner.table.stats.dropped_frames_total += 1
            return False
        self._queue.append(frame)
        self._pending += len(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    async def drain(self, until: int | None = None) -> None:
        """Wait until the queued bytes fall to ``until`` (default: a quarter of the send buffer)
        or the connection closes, as the QUIC transport's ``drain``: a publisher that outruns a
        paused or slower receiver waits here instead of having frames dropped."""
        low = self.owner.config.send_buffer_bytes // 4 if until is None else until
        while not self._closed and self._pending > low:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def _wake_drained(self) -> None:
        waiter = self._drained
        if waiter is not None and (self._closed or self._pending <= self.owner.config.send_buffer_bytes // 4):
            self._drained = None
            if not waiter.done():
                waiter.set_result(None)

    def pause_reading(self) -> None:
        """Stop receiving: the peer's frames stay in its send queue (see the module docstring)."""
        self.paused = True

    def resume_reading(self) -> None:
        """Receive again: the frames that waited are delivered next loop iteration."""
        if not self.paused:
            return
        self.paused = False
        sender = self.other
        if sender is not None and sender._queue and not sender._flush_scheduled and not sender._closed:
            sender._flush_scheduled = True
            asyncio.get_running_loop().call_soon(sender._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        other = self.other
        if self._closed or other is None or other._closed:
            self._queue, self._pending = [], 0
            self._wake_drained()
            return
        frames = self._queue
        decoder = other.owner.codec.decoder()
        done = 0
        try:
            for frame in frames:
                if other.paused:
                    return  # the rest waits in our queue until the receiver resumes
                done += 1
                self._pending -= len(frame)
                try:
                    messages = decoder.feed(frame)
                except DecodeError as exc:
                    other.owner.table.count_refusal("protocol")
                    other.owner.lose(other, exc, "protocol")
                    self.owner.lose(self, ConnectionLost(f"peer closed: protocol error {exc}"), "protocol")
                    return
                for m in messages:
                    if other._closed:
                        return
                    other.owner.deliver(other, m)
        finally:
            del frames[:done]
            if self._closed:
                self._queue, self._pending = [], 0
            if self._drained is not None:
                self._wake_drained()

    async def close(self, code: str = "normal", reason: str = "") -> None:
        if self._closed:
            return
        self.owner.lose(self, None, code)
        if self.other is not None and not self.other._closed:
            self.other.owner.lose(self.other, ConnectionLost(f"closed by peer: {code} {reason}".strip()), code)

    async def wait_closed(self) -> None:
        await self._done.wait()

    def mark_closed(self, code: str) -> bool:
        """Record the close (``code``) once; ``False`` when it was closed already."""
        if self._closed:
            return False
        self._closed = True
        self.close_code = code
        self._done.set()
        self._wake_drained()
        return True


class MemoryTransport(Transport):
    """In-process :class:`Transport`; peers must share a :class:`MemoryNetwork`."""

    def __init__(
        self,
        keypair: KeyPair,
        realm: str,
        config: TransportConfig,
        codec: Codec,
        *,
        network: MemoryNetwork,
        listen: str = "mem:0",
        registry: ContainerRegistry | None = None,
        role: str = "node",
        trust: Trust | None = None,
    ) -> None:
        if role not in ("node", "client"):
            raise ValueError(f"role must be 'node' or 'client', got {role!r}")
        self.keypair = keypair
        self.trust = trust
        """Authority mode: this end's certificate and the realm's authority."""
        self.realm = trust.wire_id if trust is not None else realm
        self.config = config
        self.codec = codec
        self.network = network
        self.role = role
        self.instance = os.urandom(8)
        """Random per transport start: a peer that shows a new instance has restarted."""
        self._listen = listen
        self.address = ""
        self._events: TransportEvents | None = None
        self.table: AdmissionTable[MemoryConnection] = AdmissionTable(
            keypair.node_id, config, on_evict=self._evicted, registry=registry
        )
        """Every connection, and the admission rules (shared with the QUIC transport)."""
        self._stopped = False

    @property
    def node_id(self) -> NodeId:
        return self.keypair.node_id

    async def start(self, events: TransportEvents) -> str:
        self._events = events
        self.address = self.network.bind(self, self._listen)
        return self.address

    async def dial(self, address: str, expected: NodeId | None = None) -> Connection:
        if self._stopped or self._events is None:
            raise TransportError("transport is not running")
        remote = self.network.lookup(address)
        if remote is None or remote._stopped:
            raise TransportError(f"nothing listens at {address}")
        if expected is not None and remote.node_id != expected:
            raise PeerIdMismatch(str(expected), str(remote.node_id))
        if remote.node_id == self.node_id:
            raise TransportError("refusing to connect to self")
        existing = self.table.get(remote.node_id)
        if existing is not None:
            return existing
        theirs_table = remote.table
        refusal = "client_only" if remote.role == "client" else theirs_table.refusal_at_first_packet()
        if refusal is not None:
            theirs_table.count_refusal(refusal)
            raise refusal_error(refusal, refusal)
        try:
            (theirs_cert, theirs_perms), (mine_cert, mine_perms) = check_certificates(self, remote)
        except (RealmMismatch, NotAdmitted) as exc:
            theirs_table.count_refusal("realm" if isinstance(exc, RealmMismatch) else "not_admitted")
            raise
        mine = MemoryConnection(self, remote.node_id, address, outbound=True, peer_instance=remote.instance)
        theirs = MemoryConnection(remote, self.node_id, self.address, outbound=False, role=self.role,
                                  peer_instance=self.instance)
        mine.certificate, mine.permissions = mine_cert, mine_perms
        theirs.certificate, theirs.permissions = theirs_cert, theirs_perms
        mine.other, theirs.other = theirs, mine
        for stage in ("hello", "proof"):
            d = theirs_table.decide(theirs, stage, self.node_id, self.role)
            if d.verdict == "refuse":
                theirs_table.count_refusal(d.code)
                if d.survivor is not None and d.survivor.other is not None and not d.survivor.other.closed:
                    return d.survivor.other
                raise refusal_error(d.code, f"{d.code}: {d.reason}")
            if d.supersede is not None:
                await d.supersede.close("duplicate", "superseded")
        mine_d = self.table.decide_dialed(mine, remote.node_id)
        if mine_d.verdict == "refuse" and mine_d.survivor is not None:
            return mine_d.survivor
        if mine_d.supersede is not None:
            await mine_d.supersede.close("duplicate", "superseded")
        self.table.publish(mine, remote.node_id, "node")
        theirs_table.publish(theirs, self.node_id, self.role)
        self.table.stats.dialed_total += 1
        theirs_table.stats.accepted_total += 1
        assert remote._events is not None
        remote._events.on_connection(theirs)
        self._events.on_connection(mine)
        return mine

    def get(self, peer: NodeId) -> Connection | None:
        return self.table.get(peer)

    def connections(self) -> list[Connection]:
        return [c for c in self.table.peers.values() if not c.closed]

    def enable_clients(self, max_clients: int) -> None:
        """Accept up to ``max_clients`` light clients (transports made with ``role="client"``)."""
        self.table.enable_clients(max_clients)

    def clients(self) -> list[Connection]:
        return [c for c in self.table.clients.values() if not c.closed]

    def get_client(self, client: NodeId) -> Connection | None:
        return self.table.get_client(client)

    def stats(self) -> TransportStats:
        s = self.table.stats
        return dataclasses.replace(s, connections=len(self.table.peers), refused_total=dict(s.refused_total))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.table.closing = True
        for conn in [*self.table.peers.values(), *self.table.clients.values()]:
            await conn.close("shutdown")
        if self.address:
            self.network.unbind(self.address)

    async def crash(self) -> None:
        """Vanish without a goodbye (tests): peers see their connection lost."""
        self._stopped = True
        self.table.closing = True
        for conn in [*self.table.peers.values(), *self.table.clients.values()]:
            conn.mark_closed("lost")
            if conn.other is not None and not conn.other.closed:
                conn.other.owner.lose(conn.other, ConnectionLost("peer crashed"), "lost")
        self.table.peers.clear()
        self.table.clients.clear()
        if self.address:
            self.network.unbind(self.address)

    # -- internals (called by connections) -------------------------------------------------------

    def deliver(self, conn: MemoryConnection, message: Message) -> None:
        """A message arrived on ``conn``."""
        if self._events is not None:
            self._events.on_message(conn, message)

    def lose(self, conn: MemoryConnection, error: Exception | None, code: str) -> None:
        """``conn`` closed (``code``): forget it, tell the owner."""
        if not conn.mark_closed(code):
            return
        self.table.release(conn, conn.peer_id)
        if self._events is not None:
            self._events.on_connection_lost(conn, error)

    def _evicted(self, peer: NodeId, conn: MemoryConnection) -> None:
        self.table.stats.evicted_total += 1
        conn.mark_closed("evicted")
        if conn.other is not None and not conn.other.closed:
            conn.other.owner.lose(conn.other, ConnectionLost("evicted by peer"), "evicted")
        if self._events is not None:
            self._events.on_connection_lost(conn, ConnectionLost("evicted"))
