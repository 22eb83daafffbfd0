"""One node's protocol core: every state machine composed once, driven alike by the asyncio
runtime and by the simulator.

Theory of operation
-------------------
A :class:`NodeCore` owns the node's sans-IO machines: the :class:`~quicmesh.core.mesh.Mesh`
(address book, realm membership, topic swarms and their broadcast), the service
:class:`~quicmesh.core.registry.Registry` (signed leases), the :class:`~quicmesh.core.rpc.Rpc`
(calls on one connection) and the :class:`~quicmesh.core.caller.Caller` (provider choice and
failover) and the :class:`~quicmesh.core.replication.LogReplication` (log interest and sync,
store access as outputs). Time (``now``) and a seeded RNG are arguments; nothing here does I/O.

**In.** :meth:`handle` takes one typed event of :mod:`quicmesh.core.events` and returns the
outputs, in order. The same entry points exist as methods (``message``, ``publish``, ...) for
the driver's hot paths, which skip building an event object; ``handle`` only dispatches to
them, so both ways run the same code.

**Routing**, all of it here and nowhere else:

* a message goes by type: mesh messages to the mesh; ``Request``/``Reply``/``ReplyError``/
  ``Services`` to the caller (which hands them to its ``Rpc``); ``r.*`` messages to the
  registry; log messages to the log machine;
* connection events go to the mesh, then (unless the mesh refused the connection) to the caller
  and the log machine;
* outputs of one machine that are inputs of another are consumed here and never reach the
  driver: a ``Deliver`` on the registry topic becomes ``Registry.handle_advert``; a registry
  ``Broadcast`` becomes ``Mesh.publish`` (into the open batch, sent at the next :meth:`flush`);
  ``LookupDone`` goes to ``Caller.lookup_done``;
* **pinning**: the mesh closes connections no overlay needs after ``LINGER`` seconds with
  ``Disconnect(peer, "idle")``. The core knows what else uses a connection (a call pending on it,
  a handler running for it, a peer that serves us procedures, RPC traffic with it in the last
  :data:`RPC_PIN` seconds, a log shared with it); such a connection is kept: the ``Disconnect`` is
  dropped and the mesh told the connection is still there, so it lingers again and is closed once
  nothing uses it. An idle close that goes out is also reported to the caller and the log machine
  (the driver reports no loss for connections the core closed itself).

**Dials** (:mod:`quicmesh.core.dialgate`): every ``Dial``/``DialAddress`` of any machine passes
the :class:`~quicmesh.core.dialgate.DialGate` (``self.dials``) on its way out: deduplicated per
peer id and per address, at most ``transport.max_pending_dials`` learned dials in flight, at most
``transport.dial_rate`` new ones a second, never connections plus dials beyond
``max_connections``; the rest waits in a bounded queue or is dropped and reported failed to the
machine that asked, at once. Dials to the user's bootstrap contacts and ``add_peer`` peers go
first. ``PeerConnected`` (outbound) and ``DialFailed`` free a slot and release queued dials.

**Trust** (:mod:`quicmesh.core.guard`, ``self.guard``): the application commands ``publish``,
``subscribe``, ``advertise`` and ``call`` raise ``PermissionDenied`` when this node's
certificate does not allow them; a peer's ``Request`` its certificate does not allow is answered
``ReplyError(code="permission_denied")`` without running a handler; gossip batches are signed by
the mesh where they are built and verified before anything else touches them; a peer the guard
blocks for repeated offences is forgotten and disconnected right after the message
(``Disconnect(peer, "misbehaving")``), its messages ignored and its connections refused
(:meth:`NodeCore.blocked`, which the driver also asks at admission) until the block expires.

**Out.** Every output is an instruction for the driver (:mod:`quicmesh.core.events` lists them);
:class:`~quicmesh.core.events.StateChanged` says that the peer set, a swarm or the known
providers changed, for drivers that wake waiters.

**Time.** :meth:`next_deadline` is the earliest deadline of every machine; the driver arms one
timer for it and calls :meth:`timer` (``TimerFired``) when it fires. Publishes of one driver turn
collect in per-topic batches; the driver calls :meth:`flush` at the end of its turn (the runtime
once per event-loop iteration, the simulator after every event), so a batch is never held
longer than one turn.

**Work-queue groups** (:mod:`quicmesh.core.groups`, ``self.groups``): memberships are registry
adverts (``group_join``/``group_leave``); ``publish`` also hands the message to one member per
matching group; ``GPush``/``GAck`` go to the groups machine, connection events too.

**Hole punching** (#13, :mod:`quicmesh.core.punch`, ``self.puncher``; wired in by the
:mod:`~quicmesh.core.punch_node` mixin): ``punch.*`` messages go to the puncher; a ``Dial`` that
fails or stays pending starts a punch through connected nodes (``punch.auto``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from random import Random
from typing import Any

from ..bounded import BoundedDict, ContainerRegistry
from ..config import NodeConfig
from ..errors import ContainerFull
from ..identity import KeyPair, NodeId
from .caller import Caller
from .dial_node import DialCommands
from .dialgate import DialGate
from .effects import Deliver, DeliverBatch, Dial, DialAddress, Disconnect, Send
from .events import (
    STATE_CHANGED,
    AcquireLog,
    AddPeer,
    Advertise,
    AppendLog,
    CancelCall,
    DialFailed,
    Event,
    Flush,
    HandlerDone,
    Join,
    JoinTopic,
    Lookup,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    Publish,
    Reconcile,
    ReleaseLog,
    RemovePeer,
    Shutdown,
    StartCall,
    StoreDone,
    Subscribe,
    TimerFired,
    Unadvertise,
    Unsubscribe,
)
from .failure import FAILURE_MESSAGES, FailureDetector
from .groups import Groups
from .groups_messages import GROUP_MESSAGES, GAck, GPush
from .groups_node import GroupCommands
from .guard import Guard
from .log_messages import LOG_MESSAGES
from .logs_node import LogCommands
from .mesh import Mesh
from .mesh_messages import MESH_MESSAGES, MGossip, MIHave
from .messages import Reply, ReplyError, Request, Services
from .punch_node import PUNCH_TYPES, PunchCommands
from .registry import REGISTRY_PATTERN, REGISTRY_TOPIC, Broadcast, LookupDone, Registry
from .registry_messages import REGISTRY_MESSAGES
from .replication import LogReplication
from .rpc import DENIED_CODE, CallResolved, Invoke
from .trust import Trust
from .wire import Message

__all__ = ["RPC_PIN", "NodeCore"]

RPC_PIN = 30.0
"""Seconds a connection stays open after its last RPC message (a caller that calls every few
seconds keeps its connection instead of paying a handshake per call, and a callee never closes
a connection a request may be travelling on)."""
PIN_GRANULARITY = 1.0
"""A pin is renewed at most this often (#14: per message it cost every call a dictionary
write through the bound's check): a connection stays at least ``RPC_PIN - PIN_GRANULARITY``
seconds after its last RPC message."""

_FAILURE_TYPES = FAILURE_MESSAGES
_MESH_TYPES = tuple(MESH_MESSAGES)
_QUIET_MESH_TYPES = (MGossip, MIHave)
"""Mesh messages that do not change membership (no :class:`StateChanged` for them)."""
_CALLER_TYPES = (Request, Reply, ReplyError)
_PLAIN_OUTPUTS = frozenset({CallResolved, Invoke, Send})
"""Outputs :meth:`NodeCore._route` passes through as they are: a lone one needs no routing."""
_REGISTRY_TYPES = tuple(REGISTRY_MESSAGES)
_LOG_TYPES = tuple(LOG_MESSAGES)
_GROUP_TYPES = tuple(GROUP_MESSAGES)


class NodeCore(PunchCommands, DialCommands, GroupCommands, LogCommands):
    """The composed sans-IO core of one node (see the module docstring)."""

    def __init__(
        self,
        keypair: KeyPair,
        config: NodeConfig,
        rng: Random,
        registry: ContainerRegistry,
        *,
        addresses: tuple[str, ...] = (),
        version_base: int = 0,
        wall_offset: float = 0.0,
        trust: Trust | None = None,
        serves_clients: bool = False,
    ) -> None:
        self.id = keypair.node_id
        self.config = config
        self.trust = trust if trust is not None else Trust.open_realm(config.realm, registry=registry)
        """The realm, this node's certificate, the revocation list and the verified certificates
        of members (an open realm when none is given: everyone is a full member)."""
        cap = config.transport.max_connections
        self.guard = Guard(keypair, self.trust, wall=lambda now: now + self.services.wall_offset, registry=registry,
                           config=config)
        """Permission checks of actions, origin signatures of gossip, penalties of peers."""
        self.mesh = Mesh(self.id, addresses, config, rng, registry, serves_clients=serves_clients, auth=self.guard)
        """The overlay: address book, realm membership, topic swarms and their broadcast."""
        self._append_to_batch = self.mesh.append_to_batch
        self.services = Registry(
            keypair, addresses, config.registry, realm=self.trust.wire_id, rng=rng,
            version_base=version_base, wall_offset=wall_offset, registry=registry, trust=self.trust,
        )
        """The realm's service advertisements (signed leases), as seen by this node."""
        self.guard.reserved, self.services.offence = self.services.reserved_batch_ok, self.guard.offence
        from .rpc import Rpc

        self.rpc = Rpc(self.id, config.rpc, peer_capacity=cap, rng=rng, registry=registry)
        """Calls on one connection: pending outgoing calls, running handlers, peers' services."""
        self.caller = Caller(
            self.id, config.rpc, config.registry, self.rpc, self.services,
            neighbours=self.mesh.realm.active_peers, peer_capacity=cap, rng=rng, containers=registry,
        )
        """Provider choice, dials, attempts and failover within one deadline."""
        self.logs = LogReplication(keypair, config, Random(rng.random()), registry, realm=self.trust.wire_id,
                                   wall_offset=wall_offset, guard=self.guard)
        """Replicated logs: interest exchange and sync; store access as outputs."""
        self.dials = DialGate(config, registry, lambda: len(self.mesh.links.conns))
        """Every Dial/DialAddress of every machine passes here: capped, rate limited, deduplicated
        (see :mod:`quicmesh.core.dialgate`)."""
        self.failure = FailureDetector(self.id, config.failure, Random(rng.random()), capacity=cap,
                                       registry=registry)
        """Failure detection on live links: probes, indirect probes, suspicion (SWIM/Lifeguard)."""
        self._probing = config.failure.probe_interval > 0
        self.groups = Groups(
            self.id, config.pubsub, registry, names=self.services.names,
            members=lambda n, now: [(e.provider, e.addresses) for e in self.services.providers(n, now)],
            connected=lambda p: p in self.mesh.links.conns,
            may_publish=lambda p, t, now: self.trust.open or self.guard.peer_allowed(p, "publish", t, now),
        )
        """Work-queue groups: one member per message (see :mod:`quicmesh.core.groups`)."""
        # its own generator, seeded from the node's without drawing from it (the other machines'
        # sequences stay as they were); from the state's integers only: the state's ``None``
        # hashes by address on Python 3.11, which made simulations differ from process to process
        self.puncher = self._make_puncher(keypair, Random(hash(rng.getstate()[1])), registry, wall_offset)  # #13
        """Hole punching through a common node (see :mod:`quicmesh.core.punch`)."""
        self._lookup_ids = 0  # an int: the core stays deep-copyable (itertools objects are not, from 3.14)
        self._rpc_seen: BoundedDict[NodeId, float] = BoundedDict("node.rpc_pins", cap, registry=registry)
        """Peer -> when the last RPC message came from it (the :data:`RPC_PIN`); one entry per
        connected peer, dropped with its connection."""
        self._dispatch: dict[type, Callable[[Any, float], list[object]]] = {  # bounded: fixed event types
            MessageReceived: lambda e, now: self.message(e.peer, e.message, now),
            PeerConnected: lambda e, now: self.peer_connected(e.peer, e.addresses, e.outbound, now),
            PeerDisconnected: lambda e, now: self.peer_disconnected(e.peer, now, graceful=e.graceful),
            DialFailed: lambda e, now: self.dial_failed(e.peer, e.addresses, now),
            TimerFired: lambda e, now: self.timer(now),
            Reconcile: lambda e, now: self.reconcile(e.live, now),
            Join: lambda e, now: self.join(e.bootstrap, now),
            Subscribe: lambda e, now: self.subscribe(e.pattern, now),
            Unsubscribe: lambda e, now: self.unsubscribe(e.pattern, now),
            JoinTopic: lambda e, now: self.join_topic(e.topic, now),
            Publish: lambda e, now: self.publish(e.topic, e.payload, now),
            Flush: lambda e, now: self.flush(now),
            Advertise: lambda e, now: self.advertise(e.name, now, ttl=e.ttl, metadata=e.metadata),
            Unadvertise: lambda e, now: self.unadvertise(e.name, now),
            StartCall: lambda e, now: self.call(e.name, e.payload, e.timeout, now, e.token)[1],
            CancelCall: lambda e, now: self.cancel_call(e.call_id),
            HandlerDone: lambda e, now: self.handler_done(e.peer, e.call_id, e.result, e.error, now),
            Lookup: lambda e, now: self.lookup(e.name, now),
            AcquireLog: lambda e, now: self.acquire_log(e.name, now),
            ReleaseLog: lambda e, now: self.release_log(e.name, now),
            AppendLog: lambda e, now: self.append_log(e.name, e.payload, now, now_us=e.now_us, min_us=e.min_us)[1],
            StoreDone: lambda e, now: self.store_done(e.req_id, e.result, now),
            AddPeer: lambda e, now: self.add_peer(e.peer, e.addresses, now),
            RemovePeer: lambda e, now: self.remove_peer(e.peer, now),
            Shutdown: lambda e, now: self.shutdown(now),
        }

    # -- the one entry point ---------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[object]:
        """Process one input event at time ``now``; returns the outputs for the driver."""
        try:
            fn = self._dispatch[type(event)]
        except KeyError:
            raise TypeError(f"not a NodeCore event: {type(event).__name__}") from None
        return fn(event, now)

    def next_deadline(self) -> float | None:
        """The earliest time any machine needs :meth:`timer` (``None``: no deadline)."""
        best: float | None = None
        for d in (
            self.mesh.next_deadline(), self.services.next_deadline(), self.caller.next_deadline(),
            self.logs.next_deadline(), self.dials.next_deadline(), self.guard.next_deadline(),
            self.failure.next_deadline(), self.groups.next_deadline(), self.punch_deadline(),
        ):
            if d is not None and (best is None or d < best):
                best = d
        return best

    # -- network events --------------------------------------------------------------------------

    def alive(self, peer: NodeId, now: float) -> None:
        """The transport saw ``peer``'s packets at ``now`` (its messages may still be queued)."""
        self.failure.heard(peer, now)

    def message(self, peer: NodeId, msg: Message, now: float) -> list[object]:
        """``msg`` arrived from ``peer``: route it to the machine it is for."""
        if self.guard.blocked(peer, now):
            return []  # sent before its connection was closed
        self.failure.heard(peer, now)
        if isinstance(msg, _CALLER_TYPES):  # first (#14): a caller's or a callee's every call
            if now - self._rpc_seen.get(peer, -PIN_GRANULARITY) >= PIN_GRANULARITY:
                self._pin(peer, now)  # renewed at most once a second, not per message
            if type(msg) is Request and not self.trust.open and isinstance(msg.name, str) and \
                    not self.guard.peer_allowed(peer, "call", msg.name, now):
                err = self.guard.deny("call", msg.name)
                return [Send(peer, ReplyError(msg.id, DENIED_CODE, str(err)[:1000], False))]
            outs: list[object] = list(self.caller.handle_message(peer, msg, now))
            return outs if len(outs) == 1 and type(outs[0]) in _PLAIN_OUTPUTS else self._route(outs, now)
        if isinstance(msg, _MESH_TYPES):
            out = self._route(self.mesh.handle_message(peer, msg, now), now)
            if self.guard.kicked:
                out += self._kick(now)
            if not isinstance(msg, _QUIET_MESH_TYPES):
                out.append(STATE_CHANGED)
            return out
        if isinstance(msg, Services):
            self._pin(peer, now)
            out = self._route(self.caller.handle_message(peer, msg, now), now)
            out.append(STATE_CHANGED)
            return out
        if isinstance(msg, _REGISTRY_TYPES):
            out = self._route(self.services.handle_message(peer, msg, now), now)
            out.append(STATE_CHANGED)  # a lookup answer may list new providers
        elif isinstance(msg, _LOG_TYPES):
            out = self.logs.handle_message(peer, msg, now)
        elif isinstance(msg, _FAILURE_TYPES):
            return self._failure_outputs(self.failure.handle(peer, msg, now), now)
        elif isinstance(msg, _GROUP_TYPES):
            self._pin(peer, now)
            g = self.groups
            return self._route(g.handle_push(peer, msg, now) if type(msg) is GPush else
                               g.handle_ack(peer, msg, now) if type(msg) is GAck else [], now)
        elif isinstance(msg, PUNCH_TYPES):  # #13 (punch)
            return self._route(self.puncher.handle(peer, msg, now), now)
        else:
            return []
        return out + self._kick(now) if self.guard.kicked else out  # invalid answers, log operations

    def peer_connected(self, peer: NodeId, addresses: tuple[str, ...], outbound: bool, now: float, *,
                       direct: bool = True) -> list[object]:
        """An authenticated connection to ``peer`` is up (idempotent). A blocked peer is refused.
        ``direct=False``: its packets go through a relay (a punch to the peer goes on)."""
        freed = outbound and self.dials.finished(peer, addresses)
        if self.guard.blocked(peer, now):
            return [Disconnect(peer, "blocked"), *(self._release_dials(now) if freed else [])]
        out = self._route(self.mesh.peer_connected(peer, addresses, outbound, now), now)
        if freed:
            out += self._release_dials(now)
        if any(isinstance(e, Disconnect) and e.peer == peer for e in out):
            return out  # the mesh refused it (ourselves, or over max_connections)
        out += self._route(self.caller.peer_connected(peer, now), now)
        out += self.logs.peer_connected(peer, now)
        out += self._route(self.groups.peer_connected(peer, now), now)
        out += self.punch_connected(peer, now, direct=direct)
        if self._probing:
            self.failure.add(peer, now)
        out.append(STATE_CHANGED)
        return out

    def peer_disconnected(self, peer: NodeId, now: float, *, graceful: bool = False) -> list[object]:
        """The connection to ``peer`` ended (``graceful``: an orderly close, not a failure)."""
        self.failure.remove(peer)
        out = self._route(self.mesh.peer_disconnected(peer, now, graceful=graceful), now)
        out += self._lost(peer, now)
        out.append(STATE_CHANGED)
        return out

    def timer(self, now: float) -> list[object]:
        """Run every machine's due timers."""
        out = self._route(self.mesh.handle_timer(now), now)
        out += self._route(self.services.handle_timer(now), now)
        out += self._route(self.caller.handle_timer(now), now)
        out += self.logs.handle_timer(now)
        self.dials.expire(now)
        out += self._release_dials(now)
        self.guard.expire(now)
        out += self._failure_outputs(self.failure.handle_timer(now), now)
        out += self._route(self.groups.handle_timer(now), now)
        out += self.punch_timer(now)
        return out

    def reconcile(self, live: frozenset[NodeId] | set[NodeId], now: float) -> list[object]:
        """Release per-peer RPC state of peers without a live connection (a safety net: the
        connection-lost events are the normal path)."""
        out: list[object] = []
        for peer in self.caller.connected_peers():
            if peer not in live:
                out += self._route(self.caller.peer_disconnected(peer, now), now)
        for peer in self.rpc.connected_peers():
            if peer not in live:
                out += self._route(list(self.rpc.peer_disconnected(peer)), now)
        for peer in [p for p in self._rpc_seen if p not in live]:
            del self._rpc_seen[peer]
        return out

    # -- application commands --------------------------------------------------------------------

    def join(self, bootstrap: Iterable[tuple[NodeId | None, tuple[str, ...]]], now: float, *,
             follow_services: bool = True, learned: bool = False) -> list[object]:
        """Join the realm through ``bootstrap`` and (``follow_services``, what a node does) follow
        the realm's service adverts. Contacts the user gave go first at the dial gate; ``learned``
        ones (local discovery: anyone on the LAN can announce) queue and are rate-limited."""
        contacts = list(bootstrap)
        for peer, addrs in contacts if not learned else ():
            self.dials.prefer(peer, addrs)
        out = self._route(self.mesh.join(contacts, now), now)
        if follow_services:
            out += self.follow_services(now)
        return out

    def follow_services(self, now: float) -> list[object]:
        """Subscribe to the realm's service adverts (the registry topic)."""
        return self._route(self.mesh.subscribe(REGISTRY_PATTERN, now), now)

    def subscribe(self, pattern: str, now: float) -> list[object]:
        """Take a reference to ``pattern``'s swarm (raises ``ValueError`` for a bad pattern and
        ``PermissionDenied``)."""
        self.guard.check_own("subscribe", pattern)
        return self._route(self.mesh.subscribe(pattern, now), now)

    def unsubscribe(self, pattern: str, now: float) -> list[object]:
        """Drop a reference to ``pattern``'s swarm."""
        return self._route(self.mesh.unsubscribe(pattern, now), now)

    def join_topic(self, topic: str, now: float) -> list[object]:
        """Link into ``topic``'s swarm as a publisher."""
        return self._route(self.mesh.join_topic(topic, now), now)

    def publish(self, topic: str, payload: bytes, now: float) -> list[object]:
        """Publish ``payload`` on ``topic`` (raises ``ValueError`` for a bad topic and
        ``MessageTooLarge`` and ``PermissionDenied``). The short path (:meth:`append_to_batch`)
        needs no check: its batch's topic was checked here when the batch opened."""
        self.guard.check_own("publish", topic)
        out = self.groups.route(topic, payload, now) if self.groups.keys_for(topic) else []
        return self._route([*out, *self.mesh.publish(topic, payload, now)], now)

    def append_to_batch(self, topic: str, payload: bytes) -> bool:
        """The publish fast path: add ``payload`` to ``topic``'s open batch when one is open
        (checked when it opened); ``False``: call :meth:`publish` (always for a group's topic)."""
        g = self.groups  # keyless: the common case, without a call to keys_for (#14)
        return (g.keyless or not g.keys_for(topic)) and self._append_to_batch(topic, payload)

    @property
    def has_batches(self) -> bool:
        """Whether a gossip batch (or a group ack) waits for :meth:`flush`."""
        return self.mesh.has_batches or self.groups.has_acks

    def flush(self, now: float) -> list[object]:
        """Send the open gossip batches and the coalesced group acks."""
        return self._route([*self.mesh.flush(now), *self.groups.flush()], now)

    def advertise(self, name: str, now: float, *, ttl: float | None = None,
                  metadata: bytes | None = None) -> list[object]:
        """Serve ``name`` and advertise it realm-wide (raises ``ValueError``/``LimitExceeded``/
        ``PermissionDenied``)."""
        self.guard.check_own("advertise", name)
        out: list[object] = list(self.rpc.advertise(name))
        try:
            out += self.services.advertise(name, now, ttl=ttl, metadata=metadata)
        except BaseException:
            self.rpc.unadvertise(name)
            raise
        return self._route(out, now)

    def unadvertise(self, name: str, now: float) -> list[object]:
        """Stop serving ``name`` and withdraw its advert."""
        out: list[object] = list(self.rpc.unadvertise(name))
        out += self.services.unadvertise(name, now)
        return self._route(out, now)

    def call(self, name: str, payload: bytes, timeout: float, now: float, token: object, *,
             checked: bool = False) -> tuple[int, list[object]]:
        """Start a call; returns its id (for :meth:`cancel_call`) and the outputs. Raises
        ``Overloaded`` past ``rpc.max_pending_calls`` and ``PermissionDenied`` (unless ``checked``:
        the driver has just checked this node's permission, as the runtime's ``Node.call`` does)."""
        if not checked:
            self.guard.check_own("call", name)
        call_id, outs = self.caller.call(name, payload, timeout, now, token)
        if len(outs) == 1 and type(outs[0]) is Send:
            return call_id, [outs[0]]  # #14: the request itself, nothing to route
        return call_id, self._route(outs, now)

    def cancel_call(self, call_id: int) -> list[object]:
        """Free everything call ``call_id`` holds (its caller went away)."""
        self.caller.cancel(call_id)
        return []

    def handler_done(self, peer: NodeId, call_id: int, result: bytes | None, error: Any, now: float) -> list[object]:
        """A handler ended (``result`` and ``error`` both ``None``: cancelled, no reply)."""
        if result is None and error is None:
            self.rpc.handler_cancelled(peer, call_id)
            return []
        outs: list[object] = list(self.rpc.handler_done(peer, call_id, result, error))
        return outs if len(outs) == 1 and type(outs[0]) is Send else self._route(outs, now)

    def lookup(self, name: str, now: float) -> list[object]:
        """Ask the realm neighbours for providers of ``name`` (answers arrive as messages)."""
        self._lookup_ids += 1
        waiter = -self._lookup_ids  # negative: not a call of the caller planner
        return self._route(self.services.lookup(name, waiter, now, self.mesh.realm.active_peers()), now)

    def add_peer(self, peer: NodeId, addresses: tuple[str, ...], now: float) -> list[object]:
        """Tell the address book where ``peer`` can be reached (dials to it go first)."""
        self.dials.prefer(peer, addresses)
        self.mesh.add_peer(peer, addresses, now)
        return []

    def remove_peer(self, peer: NodeId, now: float) -> list[object]:
        """Forget ``peer`` (and close its connection if only the mesh used it)."""
        return self._route(self.mesh.remove_peer(peer, now), now)

    def shutdown(self, now: float) -> list[object]:
        """Withdraw every own advert and send what is open (before closing connections)."""
        for name in self.rpc.services:
            self.rpc.unadvertise(name)
        out = self._route(list(self.services.close(now)), now)
        out += self.flush(now)
        return out

    def set_addresses(self, addresses: tuple[str, ...]) -> None:
        """The addresses this node listens at (known once the driver bound its socket)."""
        self.mesh.set_addresses(addresses)
        self.services.addresses = addresses

    # -- queries ---------------------------------------------------------------------------------

    def blocked(self, peer: NodeId, now: float) -> bool:
        """Whether ``peer`` is blocked for repeated offences (refuse its connections)."""
        return self.guard.blocked(peer, now)

    def in_use(self, peer: NodeId, now: float) -> bool:
        """Whether something besides the overlays needs the connection to ``peer``."""
        if now - self._rpc_seen.get(peer, -RPC_PIN) < RPC_PIN:
            return True
        if self.caller.uses(peer) or self.rpc.peer_in_use(peer) or self.groups.uses(peer):
            return True
        return self.logs.shares_with(peer)

    @property
    def pending_calls(self) -> int:
        """Calls of this node not ended yet."""
        return self.caller.pending

    def pending_entries(self) -> dict[str, int]:
        """Per-call state left in this node (all 0 when no call is open)."""
        return {**self.caller.pending_entries(), "handlers_running": self.rpc.running}

    # -- routing between machines ----------------------------------------------------------------

    def _pin(self, peer: NodeId, now: float) -> None:
        seen = self._rpc_seen.get(peer)
        if seen is not None and now - seen < PIN_GRANULARITY:
            return  # #14: renewed at most once a second, not per message
        try:
            self._rpc_seen[peer] = now
        except ContainerFull:  # more peers than connections (a stale entry): counted, not pinned
            pass

    def _kick(self, now: float) -> list[object]:
        """Disconnect and forget the peers the guard just blocked."""
        out: list[object] = []
        for peer in self.guard.take_kicked():
            out += [e for e in self.remove_peer(peer, now) if not (isinstance(e, Disconnect) and e.peer == peer)]
            out.append(Disconnect(peer, "misbehaving"))
            out += self._lost(peer, now)
        return out

    def _lost(self, peer: NodeId, now: float) -> list[object]:
        self.failure.remove(peer)
        self._rpc_seen.pop(peer, None)
        out = self._route(self.caller.peer_disconnected(peer, now), now)
        out += self.logs.peer_disconnected(peer, now)
        out += self._route(self.groups.peer_lost(peer, now), now)
        return out

    def _route(self, effects: Iterable[object], now: float) -> list[object]:
        """Consume the outputs that are another machine's inputs; return the rest, in order."""
        out: list[object] = []
        for eff in effects:
            cls = type(eff)
            if cls is DeliverBatch or cls is Deliver:
                assert isinstance(eff, Deliver | DeliverBatch)
                if eff.topic == REGISTRY_TOPIC:
                    payloads = eff.payloads if isinstance(eff, DeliverBatch) else (eff.payload,)
                    for payload in payloads:
                        out += self._route(self.services.handle_advert(payload, now), now)
                    self.groups.changed()
                    out.append(STATE_CHANGED)
                else:
                    out.append(eff)
            elif cls is Broadcast:
                assert isinstance(eff, Broadcast)
                out += self._route(self.mesh.publish(eff.topic, eff.payload, now), now)
            elif cls is LookupDone:
                assert isinstance(eff, LookupDone)
                out += self._route(self.caller.lookup_done(eff, now), now)
            elif cls is Disconnect:
                assert isinstance(eff, Disconnect)
                if eff.reason == "idle":
                    if self.in_use(eff.peer, now):
                        # keep it: the mesh lingers again and closes it once nothing uses it
                        out += self._route(self.mesh.peer_connected(eff.peer, (), False, now), now)
                        continue
                    out.append(eff)
                    out += self._lost(eff.peer, now)
                else:
                    out.append(eff)
            elif cls is Dial or cls is DialAddress:
                assert isinstance(eff, Dial | DialAddress)
                out += self._gate(eff, now)
            else:
                out.append(eff)
        return out
