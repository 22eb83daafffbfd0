"""An in-process transport with the same contract as the QUIC one, for tests and examples.

Messages still go through the codec (encode, frame, decode), so size limits and decode errors
behave as on the wire; delivery is scheduled on the event loop, one flush per loop iteration per
connection, like the QUIC transport's batching.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..config import TransportConfig
from ..core.wire import Codec, Message
from ..errors import AdmissionRefused, ConnectionLost, DecodeError, PeerIdMismatch, RealmMismatch, TransportError
from ..identity import KeyPair, NodeId
from .transport import Connection, Transport, TransportEvents, TransportStats

__all__ = ["MemoryConnection", "MemoryNetwork", "MemoryTransport"]


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

    def __init__(self, owner: MemoryTransport, peer_id: NodeId, remote_address: str, outbound: bool) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.remote_address = remote_address
        self.outbound = outbound
        self.other: MemoryConnection | None = None
        self._queue: list[bytes] = []  # bounded: capped in bytes by send_buffer_bytes in send()
        self._pending = 0
        self._flush_scheduled = False
        self._closed = False
        self._done = asyncio.Event()

    @property
    def pending_bytes(self) -> int:
        return self._pending

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def rtt(self) -> float | None:
        return 0.0

    def send(self, message: Message) -> bool:
        if self._closed:
            return False
        frame = self.owner.codec.frame(message)
        if self._pending + len(frame) > self.owner.config.send_buffer_bytes:
            self.owner._stats.dropped_frames_total += 1
            return False
        self._queue.append(frame)
        self._pending += len(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        frames, self._queue, self._pending = self._queue, [], 0
        other = self.other
        if self._closed or other is None or other._closed:
            return
        decoder = other.owner.codec.decoder()
        for frame in frames:
            try:
                messages = decoder.feed(frame)
            except DecodeError as exc:
                other.owner._lose(other, exc)
                self.owner._lose(self, ConnectionLost(f"peer closed: protocol error {exc}"))
                return
            for m in messages:
                if other._closed:
                    return
                other.owner._events_on_message(other, m)

    async def close(self, code: str = "normal", reason: str = "") -> None:
        if self._closed:
            return
        self.owner._lose(self, None)
        if self.other is not None and not self.other._closed:
            self.other.owner._lose(self.other, ConnectionLost(f"closed by peer: {code} {reason}".strip()))

    async def wait_closed(self) -> None:
        await self._done.wait()


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
    ) -> None:
        self.keypair = keypair
        self.realm = realm
        self.config = config
        self.codec = codec
        self.network = network
        self._listen = listen
        self.address = ""
        self._events: TransportEvents | None = None
        self._conns: LruMap[NodeId, MemoryConnection] = LruMap(
            "transport.connections", config.max_connections, Overflow.EVICT_OLDEST,
            on_evict=self._evicted, registry=registry,
        )
        self._stats = TransportStats()
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
        existing = self._conns.peek(remote.node_id)
        if existing is not None and not existing.closed:
            return existing
        if remote.realm != self.realm:
            remote._stats.refused_total["realm"] = remote._stats.refused_total.get("realm", 0) + 1
            raise RealmMismatch(f"peer at {address} is in another realm")
        if len(remote._conns) >= remote.config.max_connections:
            remote._stats.refused_total["max_connections"] = remote._stats.refused_total.get("max_connections", 0) + 1
            raise AdmissionRefused("max_connections")
        mine = MemoryConnection(self, remote.node_id, address, outbound=True)
        theirs = MemoryConnection(remote, self.node_id, self.address, outbound=False)
        mine.other, theirs.other = theirs, mine
        self._conns.set(remote.node_id, mine)
        remote._conns.set(self.node_id, theirs)
        self._stats.dialed_total += 1
        remote._stats.accepted_total += 1
        assert remote._events is not None
        remote._events.on_connection(theirs)
        self._events.on_connection(mine)
        return mine

    def get(self, peer: NodeId) -> Connection | None:
        conn = self._conns.peek(peer)
        return conn if conn is not None and not conn.closed else None

    def connections(self) -> list[Connection]:
        return [c for c in self._conns.values() if not c.closed]

    def stats(self) -> TransportStats:
        s = self._stats
        s.connections = len(self._conns)
        return dataclasses.replace(s, refused_total=dict(s.refused_total))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for conn in list(self._conns.values()):
            await conn.close("shutdown")
        if self.address:
            self.network.unbind(self.address)

    async def crash(self) -> None:
        """Vanish without a goodbye (tests): peers see their connection lost."""
        self._stopped = True
        for conn in list(self._conns.values()):
            conn._closed = True
            conn._done.set()
            if conn.other is not None and not conn.other._closed:
                conn.other.owner._lose(conn.other, ConnectionLost("peer crashed"))
        self._conns.clear()
        if self.address:
            self.network.unbind(self.address)

    # -- internals -------------------------------------------------------------------------------

    def _evicted(self, peer: NodeId, conn: MemoryConnection) -> None:
        self._stats.evicted_total += 1
        conn._closed = True
        conn._done.set()
        if conn.other is not None and not conn.other._closed:
            conn.other.owner._lose(conn.other, ConnectionLost("evicted by peer"))
        if self._events is not None:
            self._events.on_connection_lost(conn, ConnectionLost("evicted"))

    def _events_on_message(self, conn: MemoryConnection, message: Message) -> None:
        if self._events is not None:
            self._events.on_message(conn, message)

    def _lose(self, conn: MemoryConnection, error: Exception | None) -> None:
        if conn._closed:
            return
        conn._closed = True
        conn._done.set()
        if self._conns.peek(conn.peer_id) is conn:
            self._conns.pop(conn.peer_id)
        if self._events is not None:
            self._events.on_connection_lost(conn, error)
