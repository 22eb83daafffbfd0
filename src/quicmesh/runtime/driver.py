"""The node's driver: runs one :class:`~quicmesh.core.node.NodeCore` over a transport and an
asyncio loop.

Theory of operation
-------------------
:class:`NodeDriver` is where a message enters and where an output is executed; which machine
handles what is decided in the core. Every input (a connection coming up or going down, a
message, a user call, the timer) is handed to the core together with ``now`` (the loop's
monotonic clock); the core returns outputs (:mod:`quicmesh.core.events`), which :meth:`_run`
carries out at once: ``Send`` queues a frame on the peer's connection (the transport coalesces
the frames of one loop iteration into one write), ``Deliver`` puts the message (``DeliverBatch``:
a received gossip batch, with one ``put_many``) into every matching subscription's bounded
queue, ``CallResolved`` completes the awaiting caller's future, ``Invoke`` starts a handler task,
``Dial``/``Disconnect`` open and close connections, ``StateChanged`` wakes
:meth:`~quicmesh.runtime.node.Node.wait_until` waiters.

Inbound messages wait in a bounded inbox and are processed in arrival order,
``_INBOX_CHUNK`` per loop iteration (readers get a turn between chunks); while the inbox is
empty, the first ``_INBOX_CHUNK`` messages of an iteration are processed at once (a request
costs no extra loop turn). A lost connection's
loss is handled after the messages it delivered before closing. Each peer holds at most its fair
share of the inbox, and an exception raised while handling one message (a peer's or a light
client's) costs that message only, counted, the inbox accounting exact (see
:mod:`quicmesh.runtime.inbox`). A frame that cannot be encoded (a forwarded message grown past
``max_frame_size``) is dropped and counted (``send_errors``), never raised. Deliveries to subscriptions
go through the paced delivery queue (:mod:`quicmesh.runtime.delivery`): while it is full the
inbox is not drained and its guard pauses the peers' connections (back-pressure, never a drop).
At the end of every loop iteration that had
input the driver flushes the core's open gossip batches (what was published in one iteration
leaves together, one batch per topic) and re-arms a single ``loop.call_at`` timer for
``NodeCore.next_deadline()`` (nothing polls). Every few seconds the live connections are
reconciled with the core's per-peer state (a safety net).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..bounded import BoundedDeque, BoundedDict, BoundedSet, ContainerRegistry, LruMap, Overflow
from ..bounded.aio import BoundedQueue
from ..config import NodeConfig
from ..core.effects import Deliver, DeliverBatch, Dial, DialAddress, Disconnect, Send
from ..core.events import StateChanged
from ..core.groups import GroupDeliver, GroupSink
from ..core.log_effects import Appended, OperationStored, StoreRead, StoreWrite
from ..core.messages import ALL_MESSAGES, Reply, Request
from ..core.node import NodeCore
from ..core.rpc import CallResolved, Invoke
from ..core.topics import Pattern
from ..core.wire import Codec
from ..core.wire import Message as WireMessage
from ..errors import (
    ContainerFull,
    FrameTooLarge,
    NodeClosed,
    TransportError,
)
from ..identity import KeyPair, NodeId
from .addressing import announce
from .credentials import load_trust
from .delivery import Delivery
from .handlers import Handler, HandlerRunner
from .inbox import InboxGuard
from .logs import LogService
from .memory import MemoryNetwork, MemoryTransport
from .message import Message
from .transport import Connection, Transport

if TYPE_CHECKING:
    from ..observability import Observability

__all__ = ["Handler", "Message", "NodeDriver"]

log = logging.getLogger("quicmesh.node")

_INBOX_CHUNK = 256
"""Inbound messages processed per event-loop iteration before readers get a turn."""
_LOG_OUTPUTS = (StoreRead, StoreWrite, OperationStored, Appended)
"""Outputs of the core's log replication, carried out by :class:`LogService`."""
_GRACEFUL_CODES = frozenset({"shutdown", "normal", "idle", "duplicate"})
_RECONCILE_INTERVAL = 5.0
"""Seconds between two reconciliations of per-peer RPC state with the live connections."""
_NO_EARLIER_DEADLINE: dict[type, type] = {Reply: CallResolved, Request: Invoke}
"""#14: a message whose one output is this one moved no deadline of the core earlier (a reply
that ended a call only removed its entries; a request only took a handler slot, watched by the
handlers' own timer), so the timer needs no re-arm: armed too early, it fires and re-arms. The
re-arm cost each call a loop callback and a walk over every machine's deadline."""


_BACKGROUND_CAPACITY = 4096
"""Dials and closes in flight at most (tracked so that ``stop()`` can cancel them)."""
_INBOX_CAPACITY = 65_536
"""Inbound messages waiting for processing; beyond it new ones are dropped and counted."""
_STOP_DRAIN = 1.0
"""Seconds ``stop()`` waits for the connections to transmit what was sent before it."""
_ROUTE_CACHE = 1024
"""Topics whose matching subscription queues are remembered (the cache is cleared when full,
when a subscription opens or closes, and every ``_RECONCILE_INTERVAL`` seconds)."""


@dataclass(slots=True)
class _SubState:
    pattern: str
    queue: BoundedQueue[Message]


class ClientService(Protocol):
    """What the driver hands light-client connections to (the gateway)."""

    def on_connection(self, conn: Connection) -> None: ...

    def on_message(self, conn: Connection, message: WireMessage) -> None: ...

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None: ...

    def gauges(self) -> dict[str, float]: ...

    def health(self) -> dict[str, Any]: ...


class NodeDriver(HandlerRunner):
    """The transport and timer side of a :class:`~quicmesh.runtime.node.Node` (see the module
    docstring); the user-facing API lives in :class:`~quicmesh.runtime.node.Node`."""

    gateway: ClientService
    """Serves light clients (set by :class:`~quicmesh.runtime.node.Node`)."""
    local_groups: GroupSink
    """Work-queue group member subscriptions (set by :class:`~quicmesh.runtime.node.Node`)."""

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
        self.trust = load_trust(config, self.id, time.time(), registry=self.registry)
        """The realm (open or authority mode), this node's certificate and the revocation list."""
        self.transport: Transport
        if network is not None:
            self.transport = MemoryTransport(
                keypair, config.realm, config.transport, self.codec, network=network,
                listen=config.listen, registry=self.registry, trust=self.trust,
            )
        else:
            from .quic import QuicTransport

            self.transport = QuicTransport(
                keypair, config.realm, config.transport, self.codec, listen=config.listen, registry=self.registry,
                trust=self.trust,
            )
        self.core = NodeCore(keypair, config, self._rng, self.registry, version_base=time.time_ns() // 1000,
                             trust=self.trust, serves_clients=config.gateway.max_clients > 0)
        """Every protocol state machine of this node, composed (see :mod:`quicmesh.core.node`)."""
        self.logs = LogService(
            keypair, config, self.core.logs, registry=self.registry, run=self._run, rearm=self._rearm
        )
        """Executes the core's store requests; log handles, watchers and maps."""
        self.mesh = self.core.mesh
        """The overlay: address book, realm membership, topic swarms and their broadcast."""
        self.services = self.core.services
        """The realm's service advertisements (signed leases), as seen by this node."""
        self.rpc = self.core.rpc
        self.caller = self.core.caller
        for_clients = config.gateway.max_clients_subscriptions if config.gateway.max_clients else 0
        self._subs: LruMap[int, _SubState] = LruMap(
            "node.subscriptions", config.pubsub.max_subscriptions + for_clients, Overflow.REJECT,
            registry=self.registry,
        )
        self._by_pattern: dict[str, tuple[Pattern, dict[int, _SubState]]] = {}  # bounded: one per local pattern
        self._routes: BoundedDict[str, list[BoundedQueue[Message]]] = BoundedDict(
            "node.route_cache", _ROUTE_CACHE, registry=self.registry
        )
        """Topic -> the subscription queues its messages go to; cleared whenever a subscription
        opens or closes (matching every pattern per message was a tenth of the receive path)."""
        self._handlers: dict[str, Handler] = {}  # bounded: one per advertised name, capped by rpc.max_services
        self._running: BoundedDict[tuple[NodeId, int], asyncio.Task[None]] = BoundedDict(
            "node.handler_tasks", config.rpc.max_concurrent_handlers, registry=self.registry
        )
        """Handler tasks (the core admits at most ``rpc.max_concurrent_handlers``)."""
        self._init_handler_runner()
        self._background: BoundedSet[asyncio.Task[Any]] = BoundedSet(
            "node.background_tasks", _BACKGROUND_CAPACITY, registry=self.registry
        )
        """Dials and closes in flight (the mesh caps its dials; closes end within the QUIC close)."""
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
        self.dials_in_flight = 0
        """Core dials being carried out now (at most ``core.dials.hard_cap``)."""
        self.dials_in_flight_peak = 0
        self.dials_refused = 0
        """Core dials refused here for breaching the gate's cap (0 unless the core has a bug)."""
        self._changed = asyncio.Event()
        self._next_reconcile = 0.0
        self._inbox: BoundedDeque[tuple[Connection, WireMessage]] = BoundedDeque(
            "node.inbox", _INBOX_CAPACITY, Overflow.DROP_NEWEST, registry=self.registry
        )
        self._inbox_scheduled = False
        self._inline = _INBOX_CHUNK
        """Inbound messages that may still be processed at once (nothing waiting). Renewed when
        the inbox is drained (#14: not per loop iteration, which cost a callback per message
        received alone): spent, the next message waits for the drain of the next iteration, so
        one iteration still processes at most an inbox chunk at once and one from the inbox."""
        self._inbox_in = 0
        """Messages ever appended to the inbox (positions for :attr:`_lost_later`)."""
        self._inbox_out = 0
        """Messages ever taken from the inbox."""
        self._calls_awaited = 0
        """Calls waiting in ``Node.call`` for their outcome (#14: with none, a request is written
        at once; with some, it leaves with theirs at the end of the loop iteration)."""
        self._lost_later: BoundedDict[Connection, tuple[int, Exception | None]] = BoundedDict(
            "node.losses_waiting", _INBOX_CAPACITY, registry=self.registry
        )
        """Closed connections whose messages still wait in the inbox -> (the inbox position of
        their last message, the error): the loss is handled after those messages, in order."""
        self._rearm_scheduled = False
        self._congested: BoundedDict[NodeId, Connection] = BoundedDict(
            "node.congested", config.transport.max_connections, registry=self.registry
        )
        self.inbox_dropped = 0
        self.send_errors = 0
        """Frames that could not be encoded (too large once re-encoded) and were dropped."""
        self.inbox_guard = InboxGuard(config.transport, _INBOX_CAPACITY, config.gateway.max_clients,
                                      spawn=self._spawn, registry=self.registry)
        """Each peer's fair share of the inbox; messages whose handling raised."""
        self.delivery = Delivery(config, self.registry, route=self._queues_for, deliver=self._deliver,
                                 deliver_batch=self._deliver_batch, on_room=self._delivery_room)
        """Deliveries (single messages and whole gossip batches) waiting for their turn, paced:
        while it is full the inbox is not drained (see :mod:`quicmesh.runtime.delivery`)."""
        self.observability: Observability | None = None
        self.http_address: str | None = None
        """``HOST:PORT`` of the /metrics and /health endpoint, when ``config.http`` is set."""
        self.effect_hook: Callable[[object], None] | None = None
        """Carries out core outputs this driver does not know (hole punching, #13)."""

    def _check_open(self) -> None:
        if self._stopped or not self._started:
            raise NodeClosed("node is not running")

    def on_connection(self, conn: Connection) -> None:
        if self.core.blocked(conn.peer_id, self._now()):  # repeated offences: refused for a while
            self._spawn(conn.close("blocked", "blocked for repeated offences"))
            return
        if conn.role == "client":
            self.gateway.on_connection(conn)
            return
        self.inbox_guard.peer_up()
        addresses = (conn.remote_address,) if conn.outbound else ()
        self._run(self.core.peer_connected(conn.peer_id, addresses, conn.outbound, self._now(),
                                           direct=conn.path == "direct"))
        if self.mesh.observed.report(conn.peer_id, getattr(conn, "observed", ""), self._now()):  # #13
            announce(self.core, self.keypair, self.trust.wire_id, self.mesh.observed.announced())
        self._rearm()

    def on_alive(self, conn: Connection) -> None:
        """The transport saw ``conn``'s peer send lately: the failure detector hears it."""
        if conn.role == "node" and not self._stopped and self._loop is not None:
            self.core.alive(conn.peer_id, self._now())

    def on_message(self, conn: Connection, message: WireMessage) -> None:
        if conn.role == "client":
            try:
                self.gateway.on_message(conn, message)
            except Exception as exc:
                self.inbox_guard.failed(conn, message, exc)
            return
        # Inbound messages are processed in chunks of _INBOX_CHUNK per loop iteration, so that a
        # burst (QUIC releases reassembled stream data at once after a loss) cannot fill a
        # subscription queue before its reader task gets to run. While nothing waits, a message
        # is processed at once (up to _INBOX_CHUNK between two drains): no hop for a request.
        # (the inbox is empty when as many messages left it as entered: no call per message, #14)
        if self._inbox_in == self._inbox_out and self._inline > 0 and not self.delivery.full and \
                not self._stopped and self._loop:
            self._inline -= 1
            self._inbox_in += 1
            self._inbox_out += 1
            try:
                self._process(conn, message)
            except Exception as exc:
                self.inbox_guard.failed(conn, message, exc)
            return
        if not self._inbox.append((conn, message)):
            self.inbox_dropped += 1
            return
        self._inbox_in += 1
        self.inbox_guard.put(conn)
        if not self._inbox_scheduled and self._loop is not None:
            self._inbox_scheduled = True
            self._loop.call_soon(self._drain_inbox)

    @property
    def outbox_dropped(self) -> int:
        """Deliveries the delivery queue refused (``delivery_dropped_total``; 0 unless a caller
        publishes without awaiting ``publish``)."""
        return self.delivery.dropped

    def _delivery_room(self) -> None:
        """The delivery queue drained after being full: the inbox goes on."""
        self.inbox_guard.unhold()
        if self._inbox and not self._inbox_scheduled and not self._stopped and self._loop is not None:
            self._inbox_scheduled = True
            self._loop.call_soon(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        self._inline = _INBOX_CHUNK
        inbox = self._inbox
        delivery = self.delivery
        n = min(len(inbox), _INBOX_CHUNK)
        for _ in range(n):
            if delivery.full:  # paced: resumed by _delivery_room; the inbox guard pauses the peers
                self.inbox_guard.hold()
                break
            conn, message = inbox.popleft()
            self._inbox_out += 1  # counted first: whatever the handling does, the books balance
            self.inbox_guard.take(conn)
            # a message received before its connection closed is processed (the peer sent it
            # and we received it: a publish right before a peer stops is delivered); the loss
            # itself is handled once the connection's messages are through (_lost_later)
            try:
                self._process(conn, message)
            except Exception as exc:
                self.inbox_guard.failed(conn, message, exc)
        while self._lost_later:
            conn = next(iter(self._lost_later))
            mark, error = self._lost_later[conn]
            if mark > self._inbox_out:
                break
            del self._lost_later[conn]
            self._connection_lost(conn, error)
        if inbox and not delivery.full and not self._stopped and self._loop is not None:
            self._inbox_scheduled = True
            self._loop.call_soon(self._drain_inbox)

    def _process(self, conn: Connection, message: WireMessage) -> None:
        outs = self.core.message(conn.peer_id, message, self._now())
        self._run(outs)
        if len(outs) == 1 and _NO_EARLIER_DEADLINE.get(type(message)) is type(outs[0]):
            return  # #14: nothing to re-arm (see _NO_EARLIER_DEADLINE)
        self._rearm()

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        self.inbox_guard.peer_down(conn)
        if conn.role == "client":
            self.gateway.on_connection_lost(conn, error)
            return
        if self._inbox and not self._stopped:
            # messages it delivered may still wait in the inbox: they go first
            try:
                self._lost_later[conn] = (self._inbox_in, error)
            except ContainerFull:  # as many losses as inbox slots: handle this one now
                self._connection_lost(conn, error)
            return
        self._connection_lost(conn, error)

    def _connection_lost(self, conn: Connection, error: Exception | None) -> None:
        peer = conn.peer_id
        if self.transport.get(peer) is not None:
            return  # a newer connection to the same peer replaced this one
        now = self._now()
        # an orderly close (the peer stopped, or one side found the link idle or duplicate) is a
        # departure, not a failure: the mesh does not keep re-dialling it as a lost neighbour
        graceful = error is None or conn.close_code in _GRACEFUL_CODES
        for key in [k for k in self._running if k[0] == peer]:
            self._cancel_handler(key)
        self._run(self.core.peer_disconnected(peer, now, graceful=graceful))
        self._rearm()

    def _reconcile(self, now: float) -> None:
        """Every few seconds: per-peer RPC state for a peer with no live connection is released
        (a safety net: connection-lost events are the normal path), and the route cache starts
        afresh (routes of topics that went quiet do not stay; a busy topic's route is computed
        again at its next message)."""
        self._next_reconcile = now + _RECONCILE_INTERVAL
        self._routes.clear()
        self._run(self.core.reconcile(frozenset(c.peer_id for c in self.transport.connections()), now))
        if self.mesh.observed.expire(now):  # #13: an observed address no longer confirmed is withdrawn
            announce(self.core, self.keypair, self.trust.wire_id, self.mesh.observed.announced())

    def _notify(self) -> None:
        """Wake every :meth:`wait_until` waiter: the peer set or a peer's interests changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _run(self, effects: Iterable[object]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                conn = self.transport.get(eff.peer)
                try:
                    sent = conn is not None and conn.send(eff.message)
                except (FrameTooLarge, msgspec.EncodeError, OverflowError, ValueError, TypeError) as exc:
                    self.send_errors += 1
                    log.debug("dropped a %s to %s: %s", type(eff.message).__name__, eff.peer.short(), exc)
                    sent = False
                if not sent:
                    self.dropped_sends += 1
            elif isinstance(eff, CallResolved):  # before the rest (#14): one per call
                fut = eff.token
                if isinstance(fut, asyncio.Future) and not fut.done():
                    if eff.error is not None:
                        fut.set_exception(eff.error)
                    else:
                        fut.set_result(eff.result)
            elif isinstance(eff, Invoke):
                self._invoke(eff)
            elif isinstance(eff, Deliver | DeliverBatch):
                self.delivery.put(eff)
            elif isinstance(eff, StateChanged):
                self._notify()
            elif isinstance(eff, Disconnect):
                conn = self.transport.get(eff.peer)
                if conn is not None:
                    self._spawn(conn.close(eff.reason))
            elif isinstance(eff, Dial | DialAddress):
                self._start_dial(eff.peer if isinstance(eff, Dial) else None, eff.addresses)
            elif isinstance(eff, _LOG_OUTPUTS):
                self.logs.execute(eff)
            elif isinstance(eff, GroupDeliver):
                self.local_groups.deliver(eff)
            elif self.effect_hook is not None:  # #13 (punch): outputs of add-on machines
                self.effect_hook(eff)

    def _start_dial(self, peer: NodeId | None, addresses: tuple[str, ...]) -> None:
        """Start a core Dial/DialAddress. The core's dial gate caps them; checked again here:
        beyond the gate's ``hard_cap`` the dial is refused (counted, logged) and reported failed."""
        if self.dials_in_flight >= self.core.dials.hard_cap:
            self.dials_refused += 1
            log.error("dial gate breached: %d dials in flight; dial refused", self.dials_in_flight)
            self._run(self.core.dial_failed(peer, addresses, self._now()))
            return
        self.dials_in_flight += 1
        self.dials_in_flight_peak = max(self.dials_in_flight_peak, self.dials_in_flight)
        self._spawn(self._dial(peer, addresses))

    async def _dial(self, peer: NodeId | None, addresses: tuple[str, ...]) -> None:
        """Carry out a core Dial/DialAddress; report success or failure back to the core (the
        dial leaves :attr:`dials_in_flight` first: the core may start a queued one at once)."""
        conn: Connection | None = None
        try:
            for addr in addresses:
                try:
                    conn = await self.transport.dial(addr, peer)
                    break
                except TransportError as exc:
                    log.debug("dial %s failed: %s", addr, exc)
        finally:
            self.dials_in_flight -= 1
        if self._stopped:
            return
        if conn is not None:
            direct = conn.path == "direct"
            self._run(self.core.peer_connected(conn.peer_id, addresses, True, self._now(), direct=direct))
        else:
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

    def _rearm_for_call(self, outs: list[object], deadline: float) -> None:
        """#14: after a call was sent: re-arm unless the timer is armed at or before ``deadline``.
        A call straight to a connected provider adds deadlines no earlier than the timer then (its
        own and its attempt's, at most ``deadline``; the timer fires first and re-arms from
        there), and scheduling the re-arm cost the loop a pass per call. A dial, a lookup or
        anything else it started re-arms as before."""
        at = self._timer_at
        if at is None or at > deadline or len(outs) != 1 or type(outs[0]) is not Send:
            self._rearm()

    def _rearm_now(self) -> None:
        self._rearm_scheduled = False
        if self._stopped or self._loop is None:
            return
        core = self.core
        if core.has_batches:
            # the end of a loop iteration: what was published in it leaves as one batch per topic
            effects = core.flush(self._now())
            self._run_now(effects)  # the end of this iteration's work: write it now
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
        try:
            self._background.add(task)
        except ContainerFull:  # counted in the container's rejections; the task runs untracked
            log.warning("node.background_tasks full: a dial or close runs untracked")
            return
        task.add_done_callback(self._background.discard)

    def _queues_for(self, topic: str) -> list[BoundedQueue[Message]]:
        queues = self._routes.get(topic)
        return self._route_topic(topic) if queues is None else queues

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
            # built by map in C (no bytecode per message): a third cheaper than a comprehension
            msgs = list(map(Message, itertools.repeat(eff.topic), eff.payloads, itertools.repeat(eff.publisher),
                            range(eff.seq, eff.seq + len(eff.payloads))))
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

    def _note_congestion(self, effects: Iterable[object]) -> None:
        """Remember the connections that ``effects`` sent to and that now hold more than half
        their send buffer: the next ``publish`` waits for them (:meth:`_backpressure`)."""
        high = self.config.transport.send_buffer_bytes // 2
        for eff in effects:
            if isinstance(eff, Send):
                conn = self.transport.get(eff.peer)
                if conn is not None and conn.pending_bound > high and conn.pending_bytes > high:
                    self._congested[eff.peer] = conn
