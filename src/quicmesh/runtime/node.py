"""The asyncio node: drives the sans-IO core machines over a transport.

Theory of operation
-------------------
The node is a thin driver of one :class:`~quicmesh.core.node.NodeCore` (every protocol state
machine, composed and routed there) over one transport. Every input (a connection coming up or
going down, a message, a user call, the timer) is handed to the core together with ``now`` (the
loop's monotonic clock); the core returns outputs (:mod:`quicmesh.core.events`), which
:meth:`Node._run` carries out at once: ``Send`` queues a frame on the peer's connection (the
transport coalesces the frames of one loop iteration into one write), ``Deliver`` puts the message
(``DeliverBatch``: a received gossip batch, with one ``put_many``) into every matching
subscription's bounded queue, ``CallResolved`` completes the awaiting caller's future, ``Invoke``
starts a handler task, ``Dial``/``Disconnect`` open and close connections, ``StateChanged`` wakes
:meth:`Node.wait_until` waiters. Which machine a message goes to, and which connections stay open
because something uses them, is decided in the core, not here. Messages are processed in arrival
order, a lost connection's loss after the messages it delivered before closing. At the end of
every loop iteration that had input the node re-arms a single ``loop.call_at`` timer for the
earliest ``next_deadline()`` of all machines (nothing polls) and flushes the mesh's open gossip
batches, so the messages published in one iteration leave together, one batch per topic.
``publish`` takes the message at the call and returns an already-completed future; when a
connection it sent to holds more than half its send buffer, the next ``publish`` returns a wait
for it to drain (at most ``transport.send_stall_timeout``).

Nothing user code does can stall the node: subscription queues never block the producer (a slow
reader loses its oldest messages, counted), a subscription whose handle is garbage-collected is
released by a finalizer, a cancelled caller removes its pending entry at once, and handler
concurrency is capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from ..bounded import BoundedDeque, ContainerRegistry, LruMap, Overflow
from ..bounded.aio import BoundedQueue, QueueClosed
from ..config import NodeConfig
from ..core.effects import DELIVERY_OVERHEAD, Deliver, DeliverBatch, Dial, DialAddress, Disconnect, Send
from ..core.events import StateChanged
from ..core.messages import ALL_MESSAGES
from ..core.node import NodeCore
from ..core.rpc import CallResolved, Invoke
from ..core.topics import Pattern, check_topic, parse_pattern
from ..core.wire import Codec
from ..core.wire import Message as WireMessage
from ..errors import (
    CallTimeout,
    InvalidTopic,
    LimitExceeded,
    MessageTooLarge,
    NodeClosed,
    NoProvider,
    RemoteError,
    TransportError,
)
from ..identity import KeyPair, NodeId
from .gateway import Gateway
from .handles import QueueHandle
from .logs import Log, LogService, LogWatch, ReplicatedMap
from .memory import MemoryNetwork, MemoryTransport
from .transport import Connection, Transport

if TYPE_CHECKING:
    from ..observability import Observability

__all__ = ["Handler", "Message", "Node", "Subscription"]

log = logging.getLogger("quicmesh.node")

_INBOX_CHUNK = 256
"""Inbound messages processed per event-loop iteration before readers get a turn."""
_GRACEFUL_CODES = frozenset({"shutdown", "normal", "idle", "duplicate"})
_RECONCILE_INTERVAL = 5.0
"""Seconds between two reconciliations of per-peer RPC state with the live connections."""


def _delivery_size(eff: Deliver | DeliverBatch) -> int:
    """Bytes a waiting delivery holds, for the delivery queue's byte bound."""
    return eff.size if isinstance(eff, DeliverBatch) else len(eff.payload) + DELIVERY_OVERHEAD


_INBOX_CAPACITY = 65_536
"""Inbound messages waiting for processing; beyond it new ones are dropped and counted."""
_STOP_DRAIN = 1.0
"""Seconds ``stop()`` waits for the connections to transmit what was sent before it."""
_ROUTE_CACHE = 1024
"""Topics whose matching subscription queues are remembered (the cache is cleared when full)."""

Handler = Callable[[bytes], Awaitable[bytes]]
"""A procedure: ``async def handler(payload: bytes) -> bytes``."""


class Message(msgspec.Struct, frozen=True, gc=False):
    """A topic message delivered to a subscription (immutable; compares by value)."""

    topic: str
    payload: bytes
    sender: NodeId
    seq: int


class Subscription(QueueHandle[Message]):
    """An async iterator of :class:`Message` for one topic pattern.

    Close it with ``await sub.close()`` or use it as an async context manager. A subscription
    whose handle is garbage-collected without ``close()`` is released all the same. Its queue is
    bounded (``pubsub.subscriber_queue_size``); when the reader falls behind, the oldest messages
    are dropped and counted in :attr:`dropped`.
    """

    def __init__(self, node: Node, sub_id: int, pattern: str, queue: BoundedQueue[Message]) -> None:
        super().__init__(queue, node._release_from_gc, sub_id)
        self._node = node
        self._id = sub_id
        self.pattern = pattern

    @property
    def topic(self) -> str:
        """The pattern this subscription matches (alias of :attr:`pattern`)."""
        return self.pattern

    def _release(self) -> None:
        self._node._release(self._id)

    def _describe(self) -> str:
        return self.pattern

    async def __anext__(self) -> Message:
        # a message already waiting is returned without the generic path's awaits (a reader
        # keeping up with a busy topic spends most of its time here)
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return await super().__anext__()
        except QueueClosed:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} pending={self.pending} closed={self._closed}>"


@dataclass(slots=True)
class _SubState:
    pattern: str
    queue: BoundedQueue[Message]


class Node:
    """A quicmesh node. Start it with :meth:`Node.start`; stop it with :meth:`stop` (or use
    ``async with await Node.start(...) as node``)."""

    def __init__(
        self,
        config: NodeConfig,
        keypair: KeyPair,
        *,
        network: MemoryNetwork | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.keypair = keypair
        self.id: NodeId = keypair.node_id
        self.registry = ContainerRegistry(f"node-{self.id.short()}")
        self.codec = Codec(ALL_MESSAGES, max_frame_size=config.transport.max_frame_size)
        self._rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self.transport: Transport
        if network is not None:
            self.transport = MemoryTransport(
                keypair, config.realm, config.transport, self.codec, network=network,
                listen=config.listen, registry=self.registry,
            )
        else:
            from .quic import QuicTransport

            self.transport = QuicTransport(
                keypair, config.realm, config.transport, self.codec, listen=config.listen, registry=self.registry
            )
        self.logs = LogService(
            keypair, config, registry=self.registry, rng=self._rng, run=self._run, rearm=self._rearm
        )
        self.core = NodeCore(
            keypair, config, self._rng, self.registry, version_base=time.time_ns() // 1000,
            logs=_LogMachine(self.logs),
        )
        """Every protocol state machine of this node, composed (see :mod:`quicmesh.core.node`)."""
        self.mesh = self.core.mesh
        """The overlay: address book, realm membership, topic swarms and their broadcast."""
        self.services = self.core.services
        """The realm's service advertisements (signed leases), as seen by this node."""
        self.rpc = self.core.rpc
        self.caller = self.core.caller
        self._subs: LruMap[int, _SubState] = LruMap(
            "node.subscriptions", config.pubsub.max_subscriptions, Overflow.REJECT, registry=self.registry
        )
        self._by_pattern: dict[str, tuple[Pattern, dict[int, _SubState]]] = {}  # bounded: one per local pattern
        self._routes: dict[str, list[BoundedQueue[Message]]] = {}  # bounded: cleared at _ROUTE_CACHE topics
        """Topic -> the subscription queues its messages go to; cleared whenever a subscription
        opens or closes (matching every pattern per message was a tenth of the receive path)."""
        self._handlers: dict[str, Handler] = {}  # bounded: one per advertised name, capped by rpc.max_services
        self._running: dict[tuple[NodeId, int], asyncio.Task[None]] = {}  # bounded: rpc.max_concurrent_handlers
        self._background: set[asyncio.Task[Any]] = set()  # bounded: dials in flight, capped by the mesh
        self._sub_ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None]
        """A completed future: what ``publish`` returns when there is nothing to wait for."""
        self._started = False
        self._stopped = False
        self.address = ""
        self.dropped_sends = 0
        self._changed = asyncio.Event()
        self._next_reconcile = 0.0
        self._inbox: BoundedDeque[tuple[Connection, WireMessage]] = BoundedDeque(
            "node.inbox", _INBOX_CAPACITY, Overflow.DROP_NEWEST, registry=self.registry
        )
        self._inbox_scheduled = False
        self._inbox_in = 0
        """Messages ever appended to the inbox (positions for :attr:`_lost_later`)."""
        self._inbox_out = 0
        """Messages ever taken from the inbox."""
        self._lost_later: dict[Connection, tuple[int, Exception | None]] = {}  # bounded: one per closed connection
        """Closed connections whose messages still wait in the inbox -> (the inbox position of
        their last message, the error): the loss is handled after those messages, in order."""
        self._rearm_scheduled = False
        self._congested: dict[NodeId, Connection] = {}  # bounded: one per open connection
        self.inbox_dropped = 0
        self._outbox: BoundedDeque[Deliver | DeliverBatch] = BoundedDeque(
            "node.delivery_queue", config.gossip.reorder_buffer_total + _INBOX_CHUNK, Overflow.DROP_NEWEST,
            capacity_bytes=config.gossip.payload_cache_bytes, sizeof=_delivery_size, registry=self.registry,
        )
        """Deliveries (single messages and whole gossip batches) waiting for their turn: sized to
        absorb a full reorder-buffer release, and bounded in bytes like the payload cache."""
        self._outbox_scheduled = False
        self.outbox_dropped = 0
        self.observability: Observability | None = None
        self.gateway = Gateway(self, config.gateway)
        """Serves light clients (:class:`quicmesh.Client`) connecting to this node."""
        self.http_address: str | None = None
        """``HOST:PORT`` of the /metrics and /health endpoint, when ``config.http`` is set."""

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        config: NodeConfig | None = None,
        *,
        keypair: KeyPair | None = None,
        network: MemoryNetwork | None = None,
        rng: random.Random | None = None,
    ) -> Node:
        """Create a node, start listening and begin joining the bootstrap peers.

        ``keypair`` defaults to the key file of ``config.key_path`` or ``config.data_dir``
        (created when missing) or a fresh in-memory key. ``network`` selects the in-memory
        transport (tests); the default is QUIC.
        """
        config = config or NodeConfig()
        if keypair is None:
            keypair = _load_keypair(config)
        node = cls(config, keypair, network=network, rng=rng)
        await node._start()
        return node

    async def _start(self) -> None:
        from ..observability import Observability

        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._done.set_result(None)
        self.address = await self.transport.start(self)
        self.core.set_addresses((self.address,))
        self.services.wall_offset = time.time() - self._loop.time()
        await self.logs.start()
        self._started = True
        self.observability = Observability(
            self, self.config.observability, http=self.config.http, traffic_counter=self._traffic
        )
        try:
            self.http_address = await self.observability.start()
        except BaseException:
            await self.transport.stop()
            raise
        now = self._now()
        self._run(self.core.join([(None, (addr,)) for addr in self.config.bootstrap], now))
        self._rearm()
        log.info("node %s listening on %s (realm %s)", self.id.short(), self.address, self.config.realm)

    async def stop(self) -> None:
        """Leave the mesh: fail pending calls, end subscriptions, close every connection."""
        if self._stopped:
            return
        if self._started:
            # withdraw our advertisements while the connections are still up
            self._run(self.core.shutdown(self._now()))  # open batches, withdrawals included
            await asyncio.sleep(0)  # let the queued withdrawals reach the network
            # a QUIC close discards stream data not yet transmitted: let what was published or
            # withdrawn last leave first (bounded, so a dead peer cannot hold the stop)
            conns = self.transport.connections()
            if conns:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*(c.drain(until=0) for c in conns)), _STOP_DRAIN)
        self._stopped = True
        self._lost_later.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._notify()
        if self.observability is not None:
            await self.observability.stop()
        await self.gateway.stop()
        for task in list(self._background) + list(self._running.values()):
            task.cancel()
        for task in list(self._background) + list(self._running.values()):
            with contextlib.suppress(BaseException):
                await task
        for token in self.caller.tokens():
            if isinstance(token, asyncio.Future) and not token.done():
                token.set_exception(NodeClosed("node stopped"))
        for state in list(self._subs.values()):
            state.queue.close_queue(NodeClosed("node stopped"))
        await self.transport.stop()
        await self.logs.stop()

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _check_open(self) -> None:
        if self._stopped or not self._started:
            raise NodeClosed("node is not running")

    # -- connections -----------------------------------------------------------------------------

    async def connect(self, address: str, expected: NodeId | None = None) -> NodeId:
        """Connect directly to the node at ``address``; returns its proven node id. The peer
        joins this node's realm overlay if it has room (a mesh normally needs only bootstrap)."""
        self._check_open()
        conn = await self.transport.dial(address, expected)
        self._run(self.core.peer_connected(conn.peer_id, (address,), True, self._now()))
        self._rearm()
        return conn.peer_id

    def add_peer(self, node_id: NodeId, addresses: Iterable[str]) -> None:
        """Tell the address book where ``node_id`` can be reached (replacing what it knew)."""
        self.core.add_peer(node_id, tuple(addresses), self._now())

    def remove_peer(self, node_id: NodeId) -> None:
        """Forget ``node_id``: address book entry, views, and the connection if only the mesh
        used it."""
        self._run(self.core.remove_peer(node_id, self._now()))
        self._rearm()

    def peers(self) -> list[NodeId]:
        """Node ids of the directly connected peers."""
        return [c.peer_id for c in self.transport.connections()]

    # TransportEvents -----------------------------------------------------------------------------

    def on_connection(self, conn: Connection) -> None:
        if getattr(conn, "role", "node") == "client":
            self.gateway.on_connection(conn)
            return
        addresses = (conn.remote_address,) if conn.outbound else ()
        self._run(self.core.peer_connected(conn.peer_id, addresses, conn.outbound, self._now()))
        self._rearm()

    def on_message(self, conn: Connection, message: WireMessage) -> None:
        if getattr(conn, "role", "node") == "client":
            self.gateway.on_message(conn, message)
            return
        # Inbound messages are processed in chunks of _INBOX_CHUNK per loop iteration, so that a
        # burst (QUIC releases reassembled stream data at once after a loss) cannot fill a
        # subscription queue before its reader task gets to run.
        if not self._inbox.append((conn, message)):
            self.inbox_dropped += 1
            return
        self._inbox_in += 1
        if not self._inbox_scheduled and self._loop is not None:
            self._inbox_scheduled = True
            self._loop.call_soon(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        inbox = self._inbox
        n = min(len(inbox), _INBOX_CHUNK)
        for _ in range(n):
            conn, message = inbox.popleft()
            # a message received before its connection closed is processed (the peer sent it
            # and we received it: a publish right before a peer stops is delivered); the loss
            # itself is handled once the connection's messages are through (_lost_later)
            self._process(conn, message)
        self._inbox_out += n
        while self._lost_later:
            conn = next(iter(self._lost_later))
            mark, error = self._lost_later[conn]
            if mark > self._inbox_out:
                break
            del self._lost_later[conn]
            self._connection_lost(conn, error)
        if inbox and not self._stopped and self._loop is not None:
            self._inbox_scheduled = True
            self._loop.call_soon(self._drain_inbox)

    def _drain_outbox(self) -> None:
        # Deliveries go to subscription queues _INBOX_CHUNK at a time per loop iteration: the
        # ordering layer may release thousands at once when a gap fills, and readers must get a
        # turn before their bounded queues overflow.
        self._outbox_scheduled = False
        outbox = self._outbox
        budget = _INBOX_CHUNK  # messages, a batch counting each of its messages
        while outbox and budget > 0:
            eff = outbox.popleft()
            if isinstance(eff, DeliverBatch):
                self._deliver_batch(eff)
                budget -= len(eff.payloads)
            else:
                self._deliver(eff)
                budget -= 1
        if outbox and not self._stopped and self._loop is not None:
            self._outbox_scheduled = True
            self._loop.call_soon(self._drain_outbox)

    def _process(self, conn: Connection, message: WireMessage) -> None:
        self._run(self.core.message(conn.peer_id, message, self._now()))
        self._rearm()

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        if getattr(conn, "role", "node") == "client":
            self.gateway.on_connection_lost(conn, error)
            return
        if self._inbox and not self._stopped:
            # messages it delivered may still wait in the inbox: they go first
            self._lost_later[conn] = (self._inbox_in, error)
            return
        self._connection_lost(conn, error)

    def _connection_lost(self, conn: Connection, error: Exception | None) -> None:
        peer = conn.peer_id
        if self.transport.get(peer) is not None:
            return  # a newer connection to the same peer replaced this one
        now = self._now()
        # an orderly close (the peer stopped, or one side found the link idle or duplicate) is a
        # departure, not a failure: the mesh does not keep re-dialling it as a lost neighbour
        graceful = error is None or getattr(conn, "close_code", None) in _GRACEFUL_CODES
        for key in [k for k in self._running if k[0] == peer]:
            self._running[key].cancel()
        self._run(self.core.peer_disconnected(peer, now, graceful=graceful))
        self._rearm()

    def _reconcile(self, now: float) -> None:
        """Every few seconds: per-peer RPC state for a peer with no live connection is released
        (a safety net: connection-lost events are the normal path)."""
        self._next_reconcile = now + _RECONCILE_INTERVAL
        self._run(self.core.reconcile(frozenset(c.peer_id for c in self.transport.connections()), now))

    def _notify(self) -> None:
        """Wake every :meth:`wait_until` waiter: the peer set or a peer's interests changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``predicate()`` holds; it is re-checked whenever a peer connects,
        disconnects, or announces its subscriptions or services. Raises ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._check_open()
                await self._changed.wait()

    async def wait_for_provider(self, name: str, timeout: float | None = None) -> None:
        """Return once this node's registry lists a live provider of procedure ``name``, asking
        the realm neighbours (a registry lookup, repeated every second) until one is known.
        Raises ``TimeoutError`` after ``timeout`` seconds."""
        self._check_open()
        assert self._loop is not None
        end = None if timeout is None else self._loop.time() + timeout
        # An explicit deadline loop: on Python 3.11, asyncio.wait_for inside asyncio.timeout can
        # swallow the outer cancellation when both expire together.
        while not self.services.providers(name, self._now()):
            self._check_open()
            now = self._loop.time()
            if end is not None and now >= end:
                raise TimeoutError(f"no provider of {name!r} known after {timeout:.3f}s")
            self._run(self.core.lookup(name, self._now()))
            self._rearm()
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({changed}, timeout=1.0 if end is None else min(1.0, max(end - now, 0.0)))
            finally:
                changed.cancel()

    async def wait_for_subscriber(self, topic: str, timeout: float | None = None) -> None:
        """Return once this node is linked into ``topic``'s swarm (the nodes that subscribe to,
        or relay, that topic), joining it as a publisher if needed: a publish made then reaches
        the swarm's subscribers. Raises ``TimeoutError``."""
        self._check_open()
        self._check_topic(topic)
        self._run(self.core.join_topic(topic, self._now()))
        self._rearm()
        await self.wait_until(lambda: self.mesh.swarm_neighbours(topic) > 0, timeout)

    # -- effects and the timer -------------------------------------------------------------------

    def _run(self, effects: Iterable[object]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                conn = self.transport.get(eff.peer)
                if conn is None or not conn.send(eff.message):
                    self.dropped_sends += 1
            elif isinstance(eff, Deliver | DeliverBatch):
                if not self._outbox.append(eff):
                    self.outbox_dropped += 1
                elif not self._outbox_scheduled and self._loop is not None:
                    self._outbox_scheduled = True
                    self._loop.call_soon(self._drain_outbox)
            elif isinstance(eff, StateChanged):
                self._notify()
            elif isinstance(eff, CallResolved):
                fut = eff.token
                if isinstance(fut, asyncio.Future) and not fut.done():
                    if eff.error is not None:
                        fut.set_exception(eff.error)
                    else:
                        fut.set_result(eff.result)
            elif isinstance(eff, Invoke):
                self._invoke(eff)
            elif isinstance(eff, Disconnect):
                conn = self.transport.get(eff.peer)
                if conn is not None:
                    self._spawn(conn.close(eff.reason))
            elif isinstance(eff, Dial):
                self._spawn(self._dial(eff.peer, eff.addresses))
            elif isinstance(eff, DialAddress):
                self._spawn(self._dial(None, eff.addresses))

    async def _dial(self, peer: NodeId | None, addresses: tuple[str, ...]) -> None:
        """Carry out a mesh Dial/DialAddress; report success or failure back to the mesh."""
        for addr in addresses:
            try:
                conn = await self.transport.dial(addr, peer)
            except TransportError as exc:
                log.debug("dial %s failed: %s", addr, exc)
                continue
            if not self._stopped:
                self._run(self.core.peer_connected(conn.peer_id, addresses, True, self._now()))
                self._rearm()
            return
        if self._stopped:
            return
        self._run(self.core.dial_failed(peer, addresses, self._now()))
        self._rearm()

    def _rearm(self) -> None:
        """Re-arm the one timer at the earliest deadline of every state machine, once per event
        loop iteration however many events the iteration handled (computing the earliest
        deadline walks every subsystem: per message it was a fifth of the receive path)."""
        if self._rearm_scheduled or self._stopped or self._loop is None:
            return
        self._rearm_scheduled = True
        self._loop.call_soon(self._rearm_now)

    def _rearm_now(self) -> None:
        self._rearm_scheduled = False
        if self._stopped or self._loop is None:
            return
        core = self.core
        if core.has_batches:
            # the end of a loop iteration: what was published in it leaves as one batch per topic
            effects = core.flush(self._now())
            self._run(effects)
            self._note_congestion(effects)
        deadline = core.next_deadline()
        if deadline is None or self._next_reconcile < deadline:
            deadline = self._next_reconcile
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        assert self._loop is not None
        now = self._loop.time()
        if now >= self._next_reconcile:
            self._reconcile(now)
        self._run(self.core.timer(now))
        self._rearm()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- pub/sub ---------------------------------------------------------------------------------

    async def subscribe(self, pattern: str, *, queue_size: int | None = None) -> Subscription:
        """Subscribe to ``pattern`` (``*`` one segment, ``>`` the rest); returns an async iterator.

        Raises :class:`~quicmesh.errors.LimitExceeded` past ``pubsub.max_subscriptions``.
        """
        self._check_open()
        self._check_reserved(pattern)
        try:
            parsed = parse_pattern(pattern)
        except ValueError as exc:
            raise InvalidTopic(str(exc)) from None
        cfg = self.config.pubsub
        if len(self._subs) >= cfg.max_subscriptions:
            raise LimitExceeded("pubsub.max_subscriptions", cfg.max_subscriptions)
        overflow = Overflow.EVICT_OLDEST if cfg.subscriber_overflow == "drop_oldest" else Overflow.DROP_NEWEST
        queue: BoundedQueue[Message] = BoundedQueue(
            "node.subscription_queue", queue_size or cfg.subscriber_queue_size, overflow, registry=self.registry
        )
        sub_id = next(self._sub_ids)
        try:
            effects = self.core.subscribe(pattern, self._now())
        except BaseException:
            queue.close()
            raise
        state = _SubState(pattern, queue)
        self._subs.set(sub_id, state)
        self._by_pattern.setdefault(pattern, (parsed, {}))[1][sub_id] = state
        self._routes.clear()
        self._run(effects)
        self._rearm()
        return Subscription(self, sub_id, pattern, queue)

    def _release(self, sub_id: int) -> None:
        state = self._subs.pop(sub_id)
        if state is None:
            return
        state.queue.close()
        self._routes.clear()
        entry = self._by_pattern.get(state.pattern)
        if entry is not None:
            entry[1].pop(sub_id, None)
            if not entry[1]:
                del self._by_pattern[state.pattern]
        if not self._stopped:
            self._run(self.core.unsubscribe(state.pattern, self._now()))
            self._rearm()

    def _release_from_gc(self, sub_id: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._release, sub_id)

    def _deliver(self, eff: Deliver) -> None:
        queues = self._routes.get(eff.topic)
        if queues is None:
            queues = self._route_topic(eff.topic)
        if queues:
            msg = Message(eff.topic, eff.payload, eff.publisher, eff.seq)
            for queue in queues:
                queue.put_nowait(msg)

    def _deliver_batch(self, eff: DeliverBatch) -> None:
        queues = self._routes.get(eff.topic)
        if queues is None:
            queues = self._route_topic(eff.topic)
        if queues:
            topic, publisher, seq = eff.topic, eff.publisher, eff.seq
            msgs = [Message(topic, payload, publisher, seq + i) for i, payload in enumerate(eff.payloads)]
            for queue in queues:
                queue.put_many(msgs)

    def _route_topic(self, topic: str) -> list[BoundedQueue[Message]]:
        """The queues of the subscriptions matching ``topic`` (cached until a subscription opens
        or closes)."""
        queues = [state.queue for parsed, group in self._by_pattern.values() if parsed.matches(topic)
                  for state in group.values()]
        if len(self._routes) >= _ROUTE_CACHE:
            self._routes.clear()
        self._routes[topic] = queues
        return queues

    def subscribed_patterns(self) -> frozenset[str]:
        """The patterns this node's open subscriptions use (pub/sub runs through ``self.mesh``)."""
        return frozenset(self._by_pattern)

    def topic_state(self, topic: str) -> int:
        """Entries this node holds for ``topic``'s swarm (0 once it left the swarm)."""
        from ..core.topics import swarm_of

        return self.mesh.topic_state(swarm_of(topic))

    def publish(self, topic: str, payload: bytes) -> Awaitable[None]:
        """Send ``payload`` to every subscriber of ``topic`` (none is fine): ``await
        node.publish(topic, payload)``.

        The message is taken when ``publish`` is called. Local subscriptions get it at once; the
        network copy leaves at the end of the current event-loop iteration, in one gossip batch
        with the other messages published to ``topic`` in that iteration
        (``gossip.batch_max_messages``), in publish order. The returned awaitable completes at
        once, or, while a connection is congested, once it drained (see the module docstring):
        that is how a fast publisher is slowed down. Raises
        :class:`~quicmesh.errors.MessageTooLarge` over ``pubsub.max_message_size`` and
        :class:`~quicmesh.errors.InvalidTopic` for a bad or reserved topic (at the call).
        """
        # This runs once per message of a burst, so it is kept short: no coroutine is made
        # unless there is something to wait for, and a message for the open batch of the same
        # topic needs no clock and no topic check (both were done when the batch opened).
        if self._stopped or not self._started:
            raise NodeClosed("node is not running")
        if type(payload) is not bytes:
            if not isinstance(payload, bytearray | memoryview):
                raise TypeError("payload must be bytes")
            payload = bytes(payload)
        if not self.core.append_to_batch(topic, payload):
            self._publish(topic, payload)
        if not self._rearm_scheduled:
            self._rearm()  # also flushes the open batch at the end of this loop iteration
        if self._congested:
            return self._backpressure()
        return self._done

    def _publish(self, topic: str, payload: bytes) -> None:
        """The general path of :meth:`publish`."""
        self._check_reserved(topic)
        try:
            effects = self.core.publish(topic, payload, self._now())
        except MessageTooLarge:
            raise
        except ValueError as exc:  # the topic (the mesh checks it once)
            raise InvalidTopic(str(exc)) from None
        if effects:
            self._run(effects)
            self._note_congestion(effects)

    @staticmethod
    def _check_reserved(name: str) -> None:
        if isinstance(name, str) and name.startswith("$"):
            raise InvalidTopic(f"topics starting with '$' are reserved for quicmesh: {name!r:.80}")

    @classmethod
    def _check_topic(cls, topic: str) -> None:
        cls._check_reserved(topic)
        try:
            check_topic(topic)
        except ValueError as exc:
            raise InvalidTopic(str(exc)) from None

    def _note_congestion(self, effects: Iterable[object]) -> None:
        """Remember the connections that ``effects`` sent to and that now hold more than half
        their send buffer: the next ``publish`` waits for them (:meth:`_backpressure`)."""
        high = self.config.transport.send_buffer_bytes // 2
        for eff in effects:
            if isinstance(eff, Send):
                conn = self.transport.get(eff.peer)
                if conn is not None and conn.pending_bytes > high:
                    self._congested[eff.peer] = conn

    async def _backpressure(self) -> None:
        """Wait (bounded by ``transport.send_stall_timeout`` per connection) until the congested
        connections drained below a quarter of their send buffer, so fast publishers slow down
        instead of losing."""
        while self._congested:
            _, conn = self._congested.popitem()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.drain(), self.config.transport.send_stall_timeout)

    # -- RPC -------------------------------------------------------------------------------------

    async def advertise(
        self, name: str, handler: Handler, *, ttl: float | None = None, metadata: bytes | None = None
    ) -> None:
        """Offer procedure ``name`` realm-wide; ``handler(payload) -> bytes`` runs for each call.

        A signed advertisement (this node's id and addresses, ``metadata``, a lease of ``ttl``
        seconds, default ``registry.lease_ttl``) reaches every node through the mesh and is
        refreshed every ``ttl / 3`` until :meth:`unadvertise` or :meth:`stop`. A handler raising
        :class:`~quicmesh.errors.RemoteError` passes its code and message to the caller; any
        other exception reaches the caller as ``RemoteError("handler_error", ...)`` without the
        traceback.
        """
        self._check_open()
        if not callable(handler):
            raise TypeError("handler must be an async callable")
        effects = self.core.advertise(name, self._now(), ttl=ttl, metadata=metadata)
        self._handlers[name] = handler
        self._run(effects)
        self._rearm()

    async def unadvertise(self, name: str) -> None:
        """Withdraw procedure ``name`` at once (a signed withdrawal reaches every node)."""
        self._handlers.pop(name, None)
        if self._started and not self._stopped:
            self._run(self.core.unadvertise(name, self._now()))
            self._rearm()
        else:
            self.rpc.unadvertise(name)

    async def call(self, name: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        """Call procedure ``name`` on a provider anywhere in the realm and return its reply.

        Providers come from the registry (asking neighbours when it has none yet); one is picked
        by ``rpc.provider_policy`` and dialled directly. On a lost connection, ``Overloaded``, an
        attempt's timeout or a ``RemoteError`` marked retryable, the next provider is tried, up to
        ``rpc.max_attempts``, all within one overall ``timeout``. Raises
        :class:`~quicmesh.errors.NoProvider`, :class:`~quicmesh.errors.CallTimeout`,
        :class:`~quicmesh.errors.RemoteError` or :class:`~quicmesh.errors.Overloaded`. Cancelling
        the awaiting task frees every entry of the call at once.
        """
        self._check_open()
        total = self.config.rpc.default_timeout if timeout is None else timeout
        local = self._handlers.get(name)
        if local is not None:  # this node provides it: no network, same error contract
            return await self._call_local(name, local, bytes(payload), total)
        deadline = self._now() + total
        if self.config.bootstrap and not self.mesh.realm.active and not self.services.providers(name, self._now()):
            # not joined yet: there is nobody to ask for providers; wait (within the deadline)
            with contextlib.suppress(TimeoutError):
                await self.wait_until(lambda: bool(self.mesh.realm.active), total)
        try:
            return await self._call_planned(name, bytes(payload), max(deadline - self._now(), 1e-3))
        except NoProvider as first:
            # The neighbours asked may have known nothing yet (a node that just joined has
            # just-joined neighbours): give the realm a little time to tell us, then try once more.
            budget = min(deadline - self._now(), self.config.registry.lookup_timeout)
            if budget <= 0:
                raise
            try:
                await self.wait_for_provider(name, budget)
            except TimeoutError:
                raise first from first.__cause__  # keeps its cause (what the last attempt met)
            return await self._call_planned(name, bytes(payload), max(deadline - self._now(), 1e-3))

    async def _call_planned(self, name: str, payload: bytes, timeout: float) -> bytes:
        assert self._loop is not None
        fut: asyncio.Future[bytes] = self._loop.create_future()
        call_id, outs = self.core.call(name, payload, timeout, self._now(), fut)
        self._run(outs)
        self._rearm()
        try:
            return await fut
        except asyncio.CancelledError:
            self.core.cancel_call(call_id)
            self._rearm()
            raise

    async def _call_local(self, name: str, handler: Handler, payload: bytes, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                out = await handler(payload)
        except TimeoutError:
            raise CallTimeout(f"{name}: no reply within {timeout:.3f}s") from None
        except RemoteError:
            raise
        except Exception as exc:
            raise RemoteError("handler_error", f"{type(exc).__name__}: {exc}"[:1000]) from None
        if not isinstance(out, bytes | bytearray | memoryview):
            raise RemoteError("bad_result", f"handler returned {type(out).__name__}, not bytes")
        return bytes(out)

    def _invoke(self, eff: Invoke) -> None:
        handler = self._handlers.get(eff.name)
        key = (eff.peer, eff.call_id)
        if handler is None:  # withdrawn while the request was on its way
            refusal = RemoteError("no_handler", eff.name, retryable=True)
            self._run(self.core.handler_done(eff.peer, eff.call_id, None, refusal, self._now()))
            return
        task = asyncio.ensure_future(self._run_handler(handler, eff))
        self._running[key] = task
        task.add_done_callback(functools.partial(self._handler_finished, key))

    def _handler_finished(self, key: tuple[NodeId, int], _task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)

    async def _run_handler(self, handler: Handler, eff: Invoke) -> None:
        result: bytes | None = None
        error: RemoteError | None = None
        try:
            async with asyncio.timeout(eff.timeout):
                out = await handler(eff.payload)
            if not isinstance(out, bytes | bytearray | memoryview):
                error = RemoteError("bad_result", f"handler returned {type(out).__name__}, not bytes")
            else:
                result = bytes(out)
        except RemoteError as exc:
            error = exc
        except TimeoutError:
            error = RemoteError("timeout", f"handler exceeded {eff.timeout:.3f}s")
        except asyncio.CancelledError:
            self.core.handler_done(eff.peer, eff.call_id, None, None, self._now())
            raise
        except Exception as exc:
            error = RemoteError("handler_error", f"{type(exc).__name__}: {exc}"[:1000])
        self._run(self.core.handler_done(eff.peer, eff.call_id, result, error, self._now()))

    # -- replicated logs -------------------------------------------------------------------------

    def log(self, name: str) -> Log:
        """This node's log ``name``: ``await node.log(name).append(payload)``.

        While the handle (or any watcher or map of the name) is open, the name is replicated with
        the connected peers interested in it. Raises :class:`~quicmesh.errors.LimitExceeded` past
        ``store.max_interests`` names.
        """
        self._check_open()
        return self.logs.open_log(name)

    def watch_log(self, name: str, *, queue_size: int | None = None, replay: bool = False) -> LogWatch:
        """An async iterator of every author's operations of log ``name`` stored here from now
        on (with ``replay``: first those already stored), each author's in order (bounded queue,
        drop-oldest; close it to release it)."""
        self._check_open()
        return self.logs.watch(name, queue_size=queue_size, replay=replay)

    async def kv(self, name: str) -> ReplicatedMap:
        """The last-writer-wins map ``name``, replicated over every node's log of that name."""
        self._check_open()
        return await self.logs.kv(name)

    # -- observability ---------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """The node id's text form (for metrics and /health)."""
        return str(self.id)

    @property
    def realm(self) -> str:
        return self.config.realm

    def _traffic(self) -> float:
        """Cumulative work done, for the leak sentinel's "traffic is steady" test."""
        m, r = self.mesh.counters, self.rpc.stats
        return float(m.get("published", 0) + m.get("delivered", 0) + r.calls_started + r.requests_received)

    @property
    def pending_calls(self) -> int:
        """Calls of this node not ended yet (0 once every call returned or was cancelled)."""
        return self.caller.pending

    def gauges(self) -> dict[str, float]:
        """Numbers for metrics: connections, subscriptions, topics, pending calls, ..."""
        ts = self.transport.stats()
        out: dict[str, float] = {
            "connections": float(ts.connections),
            "handshakes_in_progress": float(ts.handshakes_in_progress),
            "subscriptions": float(len(self._subs)),
            "topics": float(len(self.mesh.swarms)),
            "peers:active": float(len(self.mesh.realm.active)),
            "peers:passive": float(len(self.mesh.realm.passive)),
            "peers:known": float(len(self.mesh.book)),
            "pending_calls": float(self.caller.pending),
            "registry_entries": float(self.services.stats().get("entries", 0)),
            "running_handlers": float(self.rpc.running),
            "dropped_sends_total": float(self.dropped_sends),
            "inbox_dropped_total": float(self.inbox_dropped),
            "delivery_dropped_total": float(self.outbox_dropped),
        }
        for reason, n in ts.refused_total.items():
            out[f"handshakes_refused_total:{reason}"] = float(n)
        trimmer = self.observability.trimmer if self.observability is not None else None
        if trimmer is not None:
            out["malloc_trims_total"] = float(trimmer.trims)
            out["malloc_trim_released_bytes_total"] = float(trimmer.released_bytes)
        out.update(self.gateway.gauges())
        return out

    def health(self) -> dict[str, Any]:
        """Subsystem-grouped state for ``/health``."""
        ts = self.transport.stats()
        return {
            "node_id": str(self.id),
            "realm": self.config.realm,
            "address": self.address,
            "connections": {
                "open": ts.connections,
                "capacity": self.config.transport.max_connections,
                "handshakes_in_progress": ts.handshakes_in_progress,
                "refused_total": dict(ts.refused_total),
                "evicted_total": ts.evicted_total,
                "dropped_frames_total": ts.dropped_frames_total,
            },
            "streams": {"active": ts.connections},
            "pubsub": {
                "subscriptions": len(self._subs),
                "patterns": len(self._by_pattern),
                "published_total": self.mesh.counters.get("published", 0),
                "delivered_total": self.mesh.counters.get("delivered", 0),
            },
            "address_book": {"peers": len(self.mesh.book), "capacity": self.config.address_book.capacity},
            "membership": {
                "active": len(self.mesh.realm.active),
                "passive": len(self.mesh.realm.passive),
                "active_capacity": self.config.membership.active_view,
                "passive_capacity": self.config.membership.passive_view,
            },
            "gossip": self._gossip_health(),
            "rpc": {
                "pending": self.caller.pending,
                "pending_entries": self.caller.pending_entries(),
                "running_handlers": self.rpc.running,
                "services": len(self._handlers),
            },
            "registry": self.services.stats(),
            **self.logs.health(),
            "gateway": self.gateway.health(),
        }

    def _gossip_health(self) -> dict[str, Any]:
        st = self.mesh.stats()
        return {
            "topics": len(st["swarms"]),
            "swarms": st["swarms"],
            "seen_ids": st["seen_ids"],
            "payload_cache": st["payload_cache"],
            "payload_cache_bytes": st["payload_cache_bytes"],
            "pending": st["dial_queues"],
            "dialing": st["dialing"],
            "ordering": st["ordering"],
        }

    def ready(self) -> tuple[bool, str]:
        """Whether the node serves traffic, and why not: started, not stopping, and joined the
        realm overlay when it has bootstrap peers."""
        if self._stopped:
            return False, "stopped"
        if not self._started:
            return False, "starting"
        if self.config.bootstrap and not len(self.mesh.realm.active):
            return False, "not joined to the realm overlay yet"
        return True, "ok"


def _load_keypair(config: NodeConfig) -> KeyPair:
    if config.key_path:
        return KeyPair.load_or_generate(config.key_path)
    if config.data_dir:
        return KeyPair.load_or_generate(Path(config.data_dir) / "node.key")
    return KeyPair.generate()


class _LogMachine:
    """The node's :class:`LogService` as the core's log machine: the service carries out its
    own effects (it was given the node's ``run``), so nothing is returned here."""

    def __init__(self, service: LogService) -> None:
        self._service = service

    def peer_connected(self, peer: NodeId, now: float) -> list[object]:
        self._service.peer_connected(peer, now)
        return []

    def peer_disconnected(self, peer: NodeId, now: float) -> list[object]:
        self._service.peer_disconnected(peer, now)
        return []

    def handle_message(self, peer: NodeId, msg: WireMessage, now: float) -> list[object]:
        self._service.handle_message(peer, msg, now)
        return []

    def handle_timer(self, now: float) -> list[object]:
        self._service.handle_timer(now)
        return []

    def next_deadline(self) -> float | None:
        return self._service.next_deadline()

    def shares_with(self, peer: NodeId) -> bool:
        return self._service.shares_with(peer)
