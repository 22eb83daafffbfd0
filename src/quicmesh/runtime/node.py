"""The asyncio node: the user-facing API over the driver of the sans-IO node core.

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
concurrency is capped. ``busy_poll_us`` keeps the loop awake after transmits (``busy_poll``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..bounded import Overflow
from ..bounded.aio import BoundedQueue
from ..config import NodeConfig
from ..config.schema import MAX_BATCH_MESSAGES
from ..core.topics import check_topic, parse_pattern
from ..core.trust import REVOCATION_TOPIC
from ..errors import (
    CallTimeout,
    InvalidTopic,
    LimitExceeded,
    MessageTooLarge,
    NodeClosed,
    NoProvider,
    RemoteError,
)
from ..identity import KeyPair, NodeId
from .gateway import Gateway
from .gateway_perms import ClientPermits, GuardedGateway
from .groups import LocalGroups
from .holepunch import HolePunch, PunchResult
from .local_discovery import LocalDiscovery
from .logs import Log, LogWatch, ReplicatedMap
from .memory import MemoryNetwork

if TYPE_CHECKING:
    from .http_api import HttpFace

from .addressing import announce, interface_addresses
from .driver import _STOP_DRAIN, Handler, Message, _SubState
from .node_status import NodeStatus
from .realm_service import RealmService
from .relay_agent import RelayAgent
from .subscription import Subscription

__all__ = ["Handler", "Message", "Node", "Subscription"]

log = logging.getLogger("quicmesh.node")


class Node(NodeStatus):
    """A quicmesh node. Start it with :meth:`Node.start`; stop it with :meth:`stop` (or use
    ``async with await Node.start(...) as node``)."""

    local_groups: LocalGroups

    def __init__(
        self,
        config: NodeConfig,
        keypair: KeyPair,
        *,
        network: MemoryNetwork | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(config, keypair, network=network, rng=rng)
        permits = ClientPermits(self.core.guard, lambda: self._now() + self.services.wall_offset)
        self.gateway: Gateway = GuardedGateway(self, config.gateway, permits)
        """Serves light clients (:class:`quicmesh.Client`) connecting to this node, within each
        client's permissions."""
        self.realm_service = RealmService(self)
        """Revocation lists and certificate renewal while the node runs (authority mode)."""
        self.core.mesh.client_swarms = self.gateway.client_swarms  # not the node's own topics
        self.http_face: HttpFace | None = None
        """The HTTP face (``/v1``) when ``http_api.listen`` is set, once started."""
        self.http_api_address: str | None = None
        """Where the HTTP face serves (``HOST:PORT``), once started."""
        self.local_groups = LocalGroups(self.core, config.pubsub, self.registry, now=self._now, run=self._run)
        """This node's work-queue group member subscriptions."""
        self.local_discovery = LocalDiscovery(self, config.discovery)
        """Finds nodes of this realm on the LAN (mDNS) and joins through them while alone (#13)."""
        self.relay_agent = RelayAgent(self, config.relay)
        """Relays for others (``relay.serve``) and keeps this node reachable through relays (#13)."""
        self.holepunch = HolePunch(self)  # #13 (punch)
        """Direct paths to nodes behind NATs by coordinated simultaneous dials."""
        self.effect_hook = self.holepunch.execute
        if self.relay_agent.quic is not None:  # a relayed connection up: try for a direct path
            self.relay_agent.quic.relay.on_relayed.append(self.holepunch.relayed)

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
        transport (tests); the default is QUIC."""
        config = config or NodeConfig()
        keypair = _load_keypair(config) if keypair is None else keypair
        node = cls(config, keypair, network=network, rng=rng)
        await node._start()
        return node

    async def _start(self) -> None:
        from ..observability import Observability

        self._loop = asyncio.get_running_loop()
        self.delivery.loop = self._loop
        self._start_busy_poll(self._loop)
        self._done = self._loop.create_future()
        self._done.set_result(None)
        await self.logs.start()  # the store is open before any peer can ask for a log
        try:
            self.address = await self.transport.start(self)
        except BaseException:
            await self.logs.stop()
            raise
        announce(self.core, self.keypair, self.trust.wire_id,
                 self.mesh.observed.configure(self.address, interface_addresses(self.address)))
        self.services.wall_offset = time.time() - self._loop.time()
        self._started = True
        self.observability = Observability(
            self, self.config.observability, http=self.config.http, traffic_counter=self._traffic
        )
        if self.config.http_api.listen is not None:  # #15: mounted on the endpoint when they share an address
            from .http_api import HttpFace

            self.http_face = HttpFace(self, self.observability.endpoint)
        try:
            self.http_address = await self.observability.start()
            if self.http_face is not None:
                self.http_api_address = await self.http_face.start()
        except BaseException:
            await self.observability.stop()
            await self.transport.stop()
            raise
        now = self._now()
        self._run(self.core.join([(None, (addr,)) for addr in self.config.bootstrap], now))
        self._rearm()
        await self.realm_service.start()
        await self.local_discovery.start()
        await self.relay_agent.start()
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
        self._stop_busy_poll()
        self.delivery.stop()
        await self.local_discovery.stop()
        await self.relay_agent.stop()
        self._lost_later.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._notify()
        await self.realm_service.stop()
        if self.http_face is not None:
            await self.http_face.stop()
        if self.observability is not None:
            await self.observability.stop()
        await self.gateway.stop()
        self._stop_handler_runner()
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
        self.local_groups.close_all()
        await self.transport.stop()
        await self.logs.stop()

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def connect(self, address: str, expected: NodeId | None = None) -> NodeId:
        """Connect directly to the node at ``address``; returns its proven node id. The peer
        joins this node's realm overlay if it has room (a mesh normally needs only bootstrap)."""
        self._check_open()
        conn = await self.transport.dial(address, expected)
        self._run(self.core.peer_connected(conn.peer_id, (address,), True, self._now(), direct=conn.path == "direct"))
        self._rearm()
        return conn.peer_id

    async def punch(self, peer: NodeId, *, via: NodeId | None = None, timeout: float | None = None) -> PunchResult:
        """Open a direct path to ``peer`` by hole punching through ``via`` (a node both are
        connected to; default: connected nodes in turn), with ``punch.attempts`` attempts backed
        off; see :mod:`quicmesh.core.punch`. Never raises for a failed punch: see the result."""
        self._check_open()
        return await self.holepunch.punch(peer, via, timeout)

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
        # a deadline loop: on 3.11 asyncio.wait_for inside asyncio.timeout can swallow the outer cancellation
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

    async def subscribe(self, pattern: str, *, queue_size: int | None = None, group: str | None = None,
                        overflow: str | None = None) -> Subscription:
        """Subscribe to ``pattern`` (``*`` one segment, ``>`` the rest); returns an async iterator.

        ``queue_size`` and ``overflow`` (``drop_oldest``, ``drop_newest`` or ``block``) override
        ``pubsub.subscriber_queue_size`` and ``pubsub.subscriber_overflow`` for this subscription
        (see :class:`~quicmesh.runtime.subscription.Subscription`).

        With ``group``, join that work-queue group: each message on a matching topic goes to one
        live member of the group mesh-wide, not to all (see README, "Work-queue groups").
        Raises :class:`~quicmesh.errors.LimitExceeded` past ``pubsub.max_subscriptions``."""
        self._check_open()
        self._check_reserved(pattern)
        if overflow is not None and overflow not in ("drop_oldest", "drop_newest", "block"):
            raise ValueError(f"overflow must be 'drop_oldest', 'drop_newest' or 'block', not {overflow!r}")
        if group is None:
            return await self._subscribe(pattern, queue_size=queue_size, overflow=overflow)
        try:
            sub_id = next(self._sub_ids)
            queue = self.local_groups.open(sub_id, pattern, group, queue_size)
        except ValueError as exc:
            raise InvalidTopic(str(exc)) from None
        self._rearm()
        return Subscription(self, sub_id, pattern, queue, group)

    async def _subscribe(self, pattern: str, *, queue_size: int | None = None,
                         overflow: str | None = None) -> Subscription:
        """:meth:`subscribe` without the reserved-topic check (the node's own services)."""
        try:
            parsed = parse_pattern(pattern)
        except ValueError as exc:
            raise InvalidTopic(str(exc)) from None
        cfg = self.config.pubsub
        if len(self._subs) - self.gateway.client_subscriptions >= cfg.max_subscriptions:  # clients: their own cap
            raise LimitExceeded("pubsub.max_subscriptions", cfg.max_subscriptions)
        size = queue_size or cfg.subscriber_queue_size
        policy = overflow or cfg.subscriber_overflow
        block = policy == "block"
        queue: BoundedQueue[Message] = BoundedQueue(  # block: room for one batch past the soft limit
            "node.subscription_queue", size + MAX_BATCH_MESSAGES if block else size,
            Overflow.DROP_NEWEST if policy == "drop_newest" else Overflow.EVICT_OLDEST, registry=self.registry
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
        if block:
            self.delivery.add_block(queue, size)
        self._run(effects)
        self._rearm()
        return Subscription(self, sub_id, pattern, queue, on_take=self.delivery.taken if block else None)

    def _release(self, sub_id: int) -> None:
        if sub_id in self.local_groups:
            self.local_groups.close(sub_id, stopping=self._stopped)
            return self._rearm()
        state = self._subs.pop(sub_id)
        if state is None:
            return
        state.queue.close()
        self.delivery.remove_block(state.queue)
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
        if self._congested or self.delivery.full:
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
        if isinstance(name, str) and name.startswith("$") and name != REVOCATION_TOPIC:
            raise InvalidTopic(f"topics starting with '$' are reserved for quicmesh: {name!r:.80}")

    @classmethod
    def _check_topic(cls, topic: str) -> None:
        cls._check_reserved(topic)
        try:
            check_topic(topic)
        except ValueError as exc:
            raise InvalidTopic(str(exc)) from None

    async def _backpressure(self) -> None:
        """Wait (bounded by ``transport.send_stall_timeout`` per connection) until the congested
        connections drained below a quarter of their send buffer, so fast publishers slow down
        instead of losing."""
        while self._congested:
            _, conn = self._congested.popitem()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.drain(), self.config.transport.send_stall_timeout)
        if self.delivery.full:  # local subscribers are behind: wait for the delivery queue (#14)
            await self.delivery.room()

    async def advertise(
        self, name: str, handler: Handler, *, ttl: float | None = None, metadata: bytes | None = None
    ) -> None:
        """Offer procedure ``name`` realm-wide; ``handler(payload) -> bytes`` runs for each call.

        A signed advertisement (this node's id and addresses, ``metadata``, a lease of ``ttl``
        seconds, default ``registry.lease_ttl``) reaches every node through the mesh and is
        refreshed every ``ttl / 3`` until :meth:`unadvertise` or :meth:`stop`. A handler raising
        :class:`~quicmesh.errors.RemoteError` passes its code and message to the caller; any
        other exception reaches the caller as ``RemoteError("handler_error", ...)`` without the
        traceback."""
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
        self.core.guard.check_own("call", name)  # PermissionDenied at once, before any local or remote attempt
        total = self.config.rpc.default_timeout if timeout is None else timeout
        local = self._handlers.get(name)
        if local is not None:  # this node provides it: no network, same error contract
            return await self._call_local(name, local, bytes(payload), total)
        deadline = (now := self._now()) + total  # the clock read once on the way in (#14)
        retried, checked = False, True  # checked: the permission above, until something is awaited
        if self.config.bootstrap and not self.mesh.realm.active and not self.services.providers(name, now):
            # not joined yet: there is nobody to ask for providers; wait (within the deadline)
            with contextlib.suppress(TimeoutError):
                await self.wait_until(lambda: bool(self.mesh.realm.active), total)
            now, checked = self._now(), False  # (the node's permissions may have changed meanwhile)
        payload = bytes(payload)
        assert self._loop is not None
        while True:  # #14: the attempt inline (a coroutine level fewer per call); once more after NoProvider
            try:
                fut: asyncio.Future[bytes] = self._loop.create_future()
                call_id, outs = self.core.call(name, payload, max(deadline - now, 1e-3), now, fut, checked=checked)
                # with no other call in flight (as for a handler's reply) the request leaves now
                (self._run if self._calls_awaited else self._run_now)(outs)
                self._rearm_for_call(outs, deadline)
                self._calls_awaited += 1
                try:
                    return await fut
                except asyncio.CancelledError:
                    self.core.cancel_call(call_id)
                    self._rearm()
                    raise
                finally:
                    self._calls_awaited -= 1
            except NoProvider as first:
                # the neighbours asked (just joined, maybe) may know nothing yet: wait a little, try once more
                budget = min(deadline - self._now(), self.config.registry.lookup_timeout)
                if retried or budget <= 0:
                    raise
                try:
                    await self.wait_for_provider(name, budget)
                except TimeoutError:
                    raise first from first.__cause__  # keeps its cause (what the last attempt met)
                retried, now, checked = True, self._now(), False

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

    def log(self, name: str) -> Log:
        """This node's log ``name``: ``await node.log(name).append(payload)``.

        While the handle (or any watcher or map of the name) is open, the name is replicated with
        the connected peers interested in it. Raises :class:`~quicmesh.errors.LimitExceeded` past
        ``store.max_interests`` names."""
        self._check_open()
        handle = self.logs.open_log(name)
        handle.permit = self.core.guard.check_own
        return handle

    def watch_log(self, name: str, *, queue_size: int | None = None, replay: bool = False) -> LogWatch:
        """An async iterator of every author's operations of log ``name`` stored here from now
        on (with ``replay``: first those already stored), each author's in order (bounded queue,
        drop-oldest; close it to release it)."""
        self._check_open()
        return self.logs.watch(name, queue_size=queue_size, replay=replay)

    async def kv(self, name: str) -> ReplicatedMap:
        """The last-writer-wins map ``name``, replicated over every node's log of that name."""
        self._check_open()
        handle = await self.logs.kv(name)
        handle.permit = self.core.guard.check_own
        return handle

    def gauges(self) -> dict[str, float]:
        """The node's numbers (see :class:`~quicmesh.runtime.node_status.NodeStatus`) plus local
        discovery's and hole punching's."""
        return {**super().gauges(), **self.local_discovery.gauges(), **self.holepunch.gauges()}

    def health(self) -> dict[str, Any]:
        """``/health`` (see :class:`~quicmesh.runtime.node_status.NodeStatus`) with the guard's
        counters under ``"guard"``, the work-queue groups' under ``"groups"`` and local discovery's
        under ``"local_discovery"``."""
        return {**super().health(), "guard": self.core.guard.stats(), "groups": self.core.groups.stats(),
                "local_discovery": self.local_discovery.health(), "holepunch": self.holepunch.health()}


def _load_keypair(config: NodeConfig) -> KeyPair:
    if config.key_path:
        return KeyPair.load_or_generate(config.key_path)
    if config.data_dir:
        return KeyPair.load_or_generate(Path(config.data_dir) / "node.key")
    return KeyPair.generate()
