"""The light client: publish, subscribe, call and advertise through one gateway node.

A :class:`Client` does not join the mesh. It holds one QUIC connection (``Hello.role ==
"client"``) to a gateway node, which subscribes, publishes, calls and advertises on its behalf
(see :mod:`quicmesh.runtime.gateway`)::

    async with await quicmesh.Client.connect("10.0.0.5:7400", realm="demo") as client:
        await client.publish("sensors.t1", b"21.5")
        async with await client.subscribe("sensors.>") as sub:
            async for msg in sub:
                ...
        reply = await client.call("echo", b"hi")

It authenticates with its own Ed25519 key (a fresh one when none is given) and checks the gateway's
node id when ``gateway_id`` is given (else the first one seen is pinned for reconnects); in an
authority realm it shows its ``token`` (key and certificate) and checks the gateway's certificate.
Keepalive pings hold the connection; when it is lost the client reconnects with capped, jittered
exponential backoff (not once refused as ``NotAdmitted``: it closes) and restores its subscriptions
and advertisements. Calls in flight then fail with :class:`~quicmesh.errors.ConnectionLost`, as
does publishing while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
from pathlib import Path
from types import TracebackType
from typing import Any

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..bounded.aio import BoundedQueue
from ..config import TransportConfig
from ..config.schema import check_busy_poll_us
from ..core.gateway_messages import (
    GAdvertise,
    GError,
    GInvoke,
    GMessage,
    GOk,
    GPublish,
    GReply,
    GSubscribe,
    GUnsubscribe,
)
from ..core.messages import ALL_MESSAGES
from ..core.topics import check_group, check_topic, parse_pattern
from ..core.wire import Codec
from ..core.wire import Message as WireMessage
from ..errors import (
    ConnectionLost,
    InvalidTopic,
    MessageTooLarge,
    NodeClosed,
    NotAdmitted,
    Overloaded,
    QuicmeshError,
    TransportError,
)
from ..identity import KeyPair, NodeId
from .busy_poll import BusyPoll
from .client_errors import gateway_error
from .client_rpc import MAX_INVOCATIONS, ClientRpc, Handler
from .client_subscription import ClientSubscription, _Sub
from .credentials import Credential, client_trust
from .message import Message
from .transport import Connection

__all__ = ["Client", "ClientSubscription", "Handler"]

log = logging.getLogger("quicmesh.client")

_DEFAULT_TRANSPORT = TransportConfig(keepalive_interval=5.0, idle_timeout=30.0, max_datagram_size=1280)
"""A light client's transport. #14: QUIC's usual datagram sizes even to a gateway on this host: a
connection's first window is two datagrams when they are large (RFC 9002: min(10, max(14,720 B,
2)) datagrams) and qh3 paces packets by it, which measured +1.2 ms per round trip on a fresh
connection (a light-client cycle 12 -> 16 ms); a light client moves a few hundred bytes."""

CLOSE_WRITE_OUT = 1.0
"""Seconds :meth:`Client.close` waits at most for bytes QUIC held back (pacing, congestion window)
to go on the wire before the close, which would discard them; usually none are held."""


@functools.lru_cache(maxsize=4)
def _codec(max_frame_size: int) -> Codec:
    """The wire codec, built once per frame size (building one inspects every message type:
    ~50 ms, the most of what ``connect`` cost)."""
    return Codec(ALL_MESSAGES, max_frame_size=max_frame_size)


class Client(ClientRpc):
    """A light client of a gateway node. Create it with :meth:`Client.connect`."""

    def __init__(
        self,
        address: str,
        *,
        realm: str = "default",
        key: KeyPair | str | Path | None = None,
        gateway_id: NodeId | str | None = None,
        transport: TransportConfig | None = None,
        call_timeout: float = 10.0,
        queue_size: int = 1024,
        reconnect: bool = True,
        reconnect_max_delay: float = 5.0,
        reconnect_min_delay: float = 0.05,
        max_message_size: int = 1024 * 1024 - 4096,
        token: str | Path | Credential | None = None, realm_file: str | Path | None = None,
        busy_poll_us: int = 0,
    ) -> None:
        self._busy_poll_us = check_busy_poll_us(busy_poll_us)
        self.busy_poll: BusyPoll | None = None
        """#14: the loop's busy poller while connected with ``busy_poll_us`` > 0 (as a node's)."""
        trust, token_key = client_trust(token, realm_file)
        if isinstance(key, str | Path):
            key = KeyPair.load_or_generate(key)
        self.keypair = token_key or key or KeyPair.generate()
        self.id: NodeId = self.keypair.node_id
        self.address = address
        self.realm = trust.realm.name if trust is not None else realm
        self._expected: NodeId | None = NodeId.parse(gateway_id) if isinstance(gateway_id, str) else gateway_id
        self._cfg = transport or _DEFAULT_TRANSPORT
        self.call_timeout = call_timeout
        self._queue_size, self._max_message = queue_size, max_message_size
        self._reconnect, self._reconnect_min, self._reconnect_max = reconnect, reconnect_min_delay, reconnect_max_delay
        self.registry = ContainerRegistry(f"client-{self.id.short()}")
        from .quic import QuicTransport

        host = address.rpartition(":")[0].strip("[]")
        loopback = host.startswith("127.") or host == "localhost"
        listen = "[::]:0" if ":" in host else ("127.0.0.1:0" if loopback else "0.0.0.0:0")
        self._transport = QuicTransport(
            self.keypair, realm, self._cfg, _codec(self._cfg.max_frame_size),
            listen=listen, registry=self.registry, role="client", trust=trust,
        )
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids, self._sub_ids = itertools.count(1), itertools.count(1)
        # request id -> future: subscribe/advertise acks and calls in flight, each ends by a timeout
        self._requests: dict[int, asyncio.Future[Any]] = {}  # bounded: requests in flight, each with a timeout
        self._subs: dict[int, _Sub] = {}  # bounded: the gateway caps subscriptions per client
        self._handlers: dict[str, Handler] = {}  # bounded: the gateway caps advertisements per client
        # invocations the gateway forwarded, running here (the gateway caps them per client too)
        self._invocations: LruMap[asyncio.Task[None], None] = LruMap(
            "client.invocations", MAX_INVOCATIONS, Overflow.REJECT, registry=self.registry
        )
        self._reconnect_task: asyncio.Task[None] | None = None
        self._connected, self._closed = asyncio.Event(), False
        self._rng = random.Random()
        self.reconnects = 0
        """Successful reconnections since :meth:`connect`."""
        self.errors_total = 0
        """Asynchronous errors reported by the gateway (a failed publish, a failed restore)."""
        self.last_error: QuicmeshError | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        realm: str = "default",
        key: KeyPair | str | Path | None = None,
        gateway_id: NodeId | str | None = None,
        **options: Any,
    ) -> Client:
        """Connect to the gateway node at ``HOST:PORT`` and return the client.

        ``key``: a :class:`~quicmesh.identity.KeyPair` or a key file (created when missing);
        ``None`` generates one. ``gateway_id``: the gateway's node id, checked during the
        handshake. ``options``: ``token`` (a light-client token file: authority mode), ``realm_file``,
        ``transport`` (:class:`~quicmesh.config.TransportConfig`), ``call_timeout``, ``queue_size``,
        ``reconnect``, ``reconnect_min_delay`` and ``reconnect_max_delay`` (the redial backoff
        doubles from the first to the second, jitter 0.5-1.5x), ``busy_poll_us`` (the event loop
        polls that long after each transmit instead of sleeping: lower latency for CPU; 0, off,
        by default; see :mod:`quicmesh.runtime.busy_poll`).

        Raises :class:`~quicmesh.errors.AdmissionRefused` (``max_clients``; ``NotAdmitted``: no token),
        :class:`~quicmesh.errors.PeerIdMismatch`, :class:`~quicmesh.errors.RealmMismatch`,
        :class:`~quicmesh.errors.HandshakeTimeout` or another ``TransportError``.
        """
        client = cls(address, realm=realm, key=key, gateway_id=gateway_id, **options)
        client._loop = asyncio.get_running_loop()
        await client._transport.start(client)
        if client._busy_poll_us:  # kicked by every transmit of its connection (quic_send)
            client.busy_poll = client._transport.through.busy = BusyPoll(client._loop, client._busy_poll_us / 1e6)
        try:
            await client._dial()
        except BaseException:
            if client.busy_poll is not None:
                client.busy_poll.close()
            await client._transport.stop()
            raise
        return client

    async def _dial(self) -> None:
        conn = await self._transport.dial(self.address, self._expected)
        self._expected = conn.peer_id  # pin the gateway's id for reconnects
        self._conn = conn
        self._connected.set()

    @property
    def gateway_id(self) -> NodeId | None:
        """The gateway's node id (known after the first connection)."""
        return self._expected

    @property
    def connected(self) -> bool:
        """Whether the connection to the gateway is up now."""
        return self._conn is not None and not self._conn.closed

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected (after a reconnect, once subscriptions were re-sent)."""
        async with asyncio.timeout(timeout):
            while not self.connected:
                if self._closed:
                    raise NodeClosed("client is closed")
                await self._connected.wait()

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until everything sent so far was handed to the network (at most ``timeout``
        seconds, default ``call_timeout``). :meth:`close` does not wait for it unless asked
        (``close(drain=True)``); ``publish(..., confirm=True)`` waits for the gateway itself."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        flush = getattr(conn, "flush_now", None)
        if flush is not None:
            flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.drain(until=0), self.call_timeout if timeout is None else timeout)

    async def close(self, *, drain: bool = False) -> None:
        """Close the connection and every subscription; idempotent. What was sent is written out
        and the close is sent, and ``close`` returns: it waits for no acknowledgement (with
        ``drain=True``, first for :meth:`drain`)."""
        if self._closed:
            return
        if drain:
            await self.drain()
        conn = self._conn
        flush = getattr(conn, "flush_now", None) if conn is not None and not conn.closed else None
        if flush is not None and conn is not None:
            flush()  # what was published in this loop iteration leaves before the close
            if conn.pending_bytes > 0:
                # QUIC held some of it back (pacing, congestion window): a close now would
                # discard it, so wait until it is on the wire (not for its acknowledgement)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.drain(until=0), CLOSE_WRITE_OUT)
        self._closed = True
        if self.busy_poll is not None:
            self.busy_poll.close()
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._fail_requests(NodeClosed("client closed"))
        for t in list(self._invocations.keys()):
            t.cancel()
        for sub in list(self._subs.values()):
            sub.queue.close_queue(NodeClosed("client closed"))
        self._subs.clear()
        self._handlers.clear()
        self._connected.set()
        await self._transport.stop(linger=False)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- TransportEvents -------------------------------------------------------------------------

    def on_connection(self, conn: Connection) -> None:
        """Transport callback (the client dials; it accepts nothing)."""

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        """Transport callback: fail what was in flight and start reconnecting."""
        if conn is not self._conn:
            return
        self._conn = None
        self._connected.clear()
        self._fail_requests(ConnectionLost(f"connection to the gateway lost: {error or 'closed'}"))
        for t in list(self._invocations.keys()):
            t.cancel()
        if self._closed or not self._reconnect:
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.ensure_future(self._reconnect_loop())

    def on_message(self, conn: Connection, message: WireMessage) -> None:
        """Transport callback: a message from the gateway."""
        if isinstance(message, GMessage):
            sub = self._subs.get(message.sid)
            if sub is not None:
                try:
                    sender = NodeId(message.publisher)
                except QuicmeshError:
                    return
                sub.queue.put_nowait(Message(message.topic, message.payload, sender, message.seq))
        elif isinstance(message, GReply | GOk):
            fut = self._requests.pop(message.id, None)
            if fut is not None and not fut.done():
                fut.set_result(message.payload if isinstance(message, GReply) else None)
        elif isinstance(message, GError):
            err = gateway_error(message)
            fut = self._requests.pop(message.id, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)
            else:
                self.errors_total += 1
                self.last_error = err
                log.warning("gateway reported: %s", err)
        elif isinstance(message, GInvoke):
            self._invoke(conn, message)

    # -- reconnect -------------------------------------------------------------------------------

    async def _reconnect_loop(self) -> None:
        delay = self._reconnect_min
        while not self._closed:
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            try:
                await self._dial()
            except (TransportError, OSError) as exc:  # refused, unreachable, not resolvable: retry
                log.debug("reconnect to %s failed: %s", self.address, exc)
                if isinstance(exc, NotAdmitted):  # revoked or expired: retrying cannot help
                    self.last_error, self._reconnect_task = exc, None
                    await self.close()
                    return
                delay = min(delay * 2, self._reconnect_max)
                continue
            self.reconnects += 1
            self._restore()
            return

    def _restore(self) -> None:
        """Send the subscriptions and advertisements again on a new connection."""
        for sid, sub in self._subs.items():
            self._send_nowait(GSubscribe(self._track(), sid, sub.pattern, sub.group))
        for name in self._handlers:
            self._send_nowait(GAdvertise(self._track(), name))

    def _track(self) -> int:
        """A request id whose answer is only checked for errors (reported in ``last_error``)."""
        req = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(self._async_result)
        self._requests[req] = fut
        asyncio.get_running_loop().call_later(self.call_timeout, self._expire, req)
        return req

    def _async_result(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            exc = fut.exception()
            if isinstance(exc, QuicmeshError) and not isinstance(exc, ConnectionLost | NodeClosed):
                self.errors_total += 1
                self.last_error = exc

    def _expire(self, req: int) -> None:
        fut = self._requests.pop(req, None)
        if fut is not None and not fut.done():
            fut.cancel()

    # -- sending ---------------------------------------------------------------------------------

    def _send_nowait(self, message: WireMessage) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            raise ConnectionLost("not connected to the gateway (reconnecting)" if not self._closed else "client closed")
        if not conn.send(message):
            raise Overloaded("the client's send buffer is full")

    async def _request(self, message: WireMessage, req: int, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._requests[req] = fut
        try:
            self._send_nowait(message)
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._requests.pop(req, None)

    def _fail_requests(self, exc: QuicmeshError) -> None:
        requests = list(self._requests.values())
        self._requests.clear()
        for fut in requests:
            if not fut.done():
                fut.set_exception(exc)

    def _next_id(self) -> int:
        return next(self._ids)

    def _check_open(self) -> None:
        if self._closed:
            raise NodeClosed("client is closed")

    # -- pub/sub ---------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, confirm: bool = False) -> None:
        """Send ``payload`` to every subscriber of ``topic`` in the mesh, through the gateway.

        Raises :class:`~quicmesh.errors.ConnectionLost` while disconnected,
        :class:`~quicmesh.errors.MessageTooLarge`, :class:`~quicmesh.errors.InvalidTopic` for a bad
        topic. With ``confirm`` it waits until the gateway published (raising what the gateway's
        node raised); without, errors found by the gateway land in :attr:`last_error`.
        """
        self._check_open()
        try:
            check_topic(topic)
        except ValueError as exc:
            raise InvalidTopic(str(exc)) from None
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError("payload must be bytes")
        if len(payload) > self._max_message:
            raise MessageTooLarge(len(payload), self._max_message)
        conn = self._conn
        half = self._cfg.send_buffer_bytes // 2
        if conn is not None and conn.pending_bound > half and conn.pending_bytes > half:
            with contextlib.suppress(TimeoutError):  # backpressure: let the connection drain
                await asyncio.wait_for(conn.drain(), self.call_timeout)
        if confirm:
            await self._request(GPublish(req := next(self._ids), topic, bytes(payload)), req, self.call_timeout)
        else:
            self._send_nowait(GPublish(0, topic, bytes(payload)))

    async def subscribe(self, pattern: str, *, queue_size: int | None = None,
                        group: str | None = None) -> ClientSubscription:
        """Subscribe to ``pattern`` (``*`` one segment, ``>`` the rest; ``group``: as a member of that
        work-queue group, which takes each message once mesh-wide); returns an async iterator. Raises
        :class:`~quicmesh.errors.LimitExceeded` past the gateway's ``max_client_subscriptions``,
        ``InvalidTopic`` for a bad pattern or group, ``ConnectionLost`` while disconnected."""
        self._check_open()
        try:
            parse_pattern(pattern)
            check_group("-" if group is None else group)
        except ValueError as exc:
            raise InvalidTopic(str(exc)) from None
        sid = next(self._sub_ids)
        queue: BoundedQueue[Message] = BoundedQueue("client.subscription_queue", queue_size or self._queue_size,
                                                    Overflow.EVICT_OLDEST, registry=self.registry)
        self._subs[sid] = _Sub(pattern, queue, group or "")
        try:
            await self._request(GSubscribe(req := next(self._ids), sid, pattern, group or ""), req, self.call_timeout)
        except BaseException:
            self._subs.pop(sid, None)
            queue.close()
            raise
        return ClientSubscription(self, sid, pattern, queue)

    def _release_from_gc(self, sid: int) -> None:
        """A subscription handle was garbage-collected: release it from the loop, not from
        inside the collector (which may run in the middle of any other code)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._release_sub, sid)

    def _release_sub(self, sid: int) -> None:
        sub = self._subs.pop(sid, None)
        if sub is None:
            return
        sub.queue.close()
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.send(GUnsubscribe(sid))

    # -- observability ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The client's own state: connection, subscriptions, requests in flight."""
        conn = self._conn
        return {
            "node_id": str(self.id),
            "gateway": self.address,
            "gateway_id": str(self._expected) if self._expected else None,
            "connected": self.connected,
            "rtt": conn.rtt if conn is not None else None,
            "subscriptions": len(self._subs),
            "advertisements": len(self._handlers),
            "requests": len(self._requests),
            "invocations": len(self._invocations),
            "reconnects": self.reconnects,
            "errors_total": self.errors_total,
        }

    def __repr__(self) -> str:
        return f"<Client {self.id.short()} -> {self.address} connected={self.connected}>"


