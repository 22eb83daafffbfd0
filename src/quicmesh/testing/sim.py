"""A deterministic discrete-event simulator of many nodes, each one
:class:`~quicmesh.core.node.NodeCore`: the very core real nodes run.

Theory of operation
-------------------
One event heap over a fake clock. Each node owns a ``NodeCore`` (mesh, service registry, RPC,
call planner), a seeded ``Random`` and its own :class:`~quicmesh.bounded.ContainerRegistry`. The
simulator executes exactly the outputs the runtime executes, and like the runtime it flushes
the core's open gossip batches at the end of every turn (here: every event a node handled):

* ``Send(peer, msg)``: when the pair holds a connection, the message object is delivered to the
  peer's core (``message``) after a sampled latency, unless lost or the path is cut; per
  connection, messages arrive in the order sent.
* ``Dial(peer, addrs)`` / ``DialAddress(addrs)``: after a round trip, ``peer_connected`` on both
  sides (the dialer ``outbound=True``); when the target is dead or unreachable either way,
  ``dial_failed`` (``address_dial_failed``) after ``dial_timeout``.
* ``Disconnect(peer)``: the connection ends; the peer sees ``peer_disconnected`` after a latency.
* ``Deliver`` (and each message of a ``DeliverBatch``): recorded for the scenario metrics.
* ``Invoke``: the handler (an echo) answers after ``handler_delay`` (``HandlerDone``);
  ``CallResolved``: handed to :meth:`Simulator.on_resolved` (scenarios record it).
* ``StoreRead``/``StoreWrite``: the query runs against the node's
  :class:`~quicmesh.store.MemoryStore` after ``store_delay`` (``StoreDone``); the store is the
  node's disk: it survives :meth:`Simulator.restart`. ``OperationStored`` and ``Appended`` are
  handed to :meth:`Simulator.on_log_output`.

Nodes follow the realm's service adverts (the registry topic) when the simulator is made with
``services=True`` (``join`` then does what a real node's start does), or from
:meth:`Simulator.start_services` on; broadcast scenarios leave it off to keep their traffic to
the topic under test.

Connections that a partition cuts, or whose far end crashed, are reported lost to the surviving
side(s) after ``idle_timeout`` (QUIC's idle timeout). Each node's timer is armed at
``core.next_deadline()`` after every event it handled. Everything random is drawn from seeded
``Random`` instances in a deterministic order, so a run is bit-for-bit reproducible from its seed.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from random import Random

from ..bounded import ContainerRegistry
from ..config import NodeConfig
from ..core.effects import Deliver, DeliverBatch, Dial, DialAddress, Disconnect, Send
from ..core.log_effects import Appended, OperationStored, StoreRead, StoreWrite
from ..core.mesh import Mesh
from ..core.mesh_messages import MGossip, MGraft, MIHave, MPrune
from ..core.node import NodeCore
from ..core.rpc import CallResolved, Invoke
from ..core.trust import Trust
from ..core.wire import Message
from ..errors import NotAdmitted
from ..identity import KeyPair, NodeId
from ..store import MemoryStore
from .network import NetworkParams, Reachability

__all__ = ["Delivery", "SimNode", "Simulator", "node_identity", "node_keypair"]

_GOSSIP_KINDS = (MGossip, MIHave, MGraft, MPrune)


def node_keypair(seed: int, index: int) -> KeyPair:
    """A deterministic key pair for (``seed``, ``index``)."""
    return KeyPair.from_seed(hashlib.sha256(f"quicmesh-sim/{seed}/{index}".encode()).digest())


def node_identity(seed: int, index: int) -> NodeId:
    """A deterministic node id for (``seed``, ``index``)."""
    return node_keypair(seed, index).node_id


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Deliver effect seen at a node."""

    time: float
    topic: str
    publisher: NodeId
    seq: int
    hops: int
    payload: bytes


@dataclass(slots=True)
class SimNode:
    """One simulated node."""

    index: int
    id: NodeId
    address: str
    core: NodeCore
    registry: ContainerRegistry
    alive: bool = True
    incarnation: int = 0
    timer_at: float | None = None
    deliveries: list[Delivery] = field(default_factory=list)  # bounded: the scenario's message count
    on_deliver: Callable[[SimNode, Deliver], None] | None = None
    identity_index: int = 0
    store: MemoryStore | None = None
    """The node's log store (its disk: kept across restarts), made at its first store request."""

    @property
    def mesh(self) -> Mesh:
        """The node's overlay (``core.mesh``)."""
        return self.core.mesh


class Simulator:
    """The event loop, the network and the nodes. See the module docstring."""

    def __init__(
        self,
        seed: int,
        config: NodeConfig | None = None,
        network: NetworkParams | None = None,
        *,
        record_deliveries: bool = True,
        services: bool = False,
        handler_delay: float = 0.001,
        clock_skew: float = 0.0,
        store_delay: float = 0.0005,
        trust: Callable[[int, NodeId], Trust | None] | None = None,
    ) -> None:
        self.seed = seed
        self.trust = trust
        """``trust(index, node_id)``: the :class:`~quicmesh.core.trust.Trust` of node ``index``
        (its realm and certificate; None: an open realm). Connecting nodes exchange and check
        certificates as the handshake does (``Trust.learn``); a refused one fails the dial."""
        self.services = services
        """Whether ``join`` also follows the realm's service adverts (as real nodes do)."""
        self.handler_delay = handler_delay
        """Seconds an invoked (echo) handler takes."""
        self.clock_skew = clock_skew
        """Each node's wall clock is off by up to this many seconds (seeded, per node)."""
        self.store_delay = store_delay
        """Seconds a store request takes (the runtime runs them on a worker thread)."""
        self.config = config or NodeConfig()
        self.net = network or NetworkParams()
        self.rng = Random(seed)
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []  # bounded: pending events of the run
        self._seq = itertools.count()
        self.nodes: list[SimNode] = []  # bounded: the scenario's node count
        self.by_id: dict[NodeId, SimNode] = {}  # bounded: one entry per node index
        self.by_addr: dict[str, SimNode] = {}  # bounded: one entry per node index
        self.conns: dict[frozenset[int], int] = {}  # bounded: at most one per node pair, capped by views
        self.link_last: dict[tuple[int, int], float] = {}  # bounded: one per directed connected pair
        self.link_base: dict[tuple[int, int], float] = {}  # bounded: one per node pair ever linked
        self._conn_ids = itertools.count(1)
        self.reach = Reachability()
        self.record_deliveries = record_deliveries
        self._tomb = NodeCore(node_keypair(seed, -1), self.config, Random(0), ContainerRegistry("tomb"),
                              addresses=("sim:retired",))
        self.counters = {  # bounded: fixed keys
            "sent": 0, "lost": 0, "cut": 0, "duplicated": 0, "payload_sent": 0, "dials": 0, "dials_failed": 0,
            "events": 0,
        }

    # -- nodes -----------------------------------------------------------------------------------

    def add_node(self, identity_index: int | None = None) -> SimNode:
        """Create a node (not joined yet). ``identity_index`` picks its deterministic id."""
        index = len(self.nodes)
        ident_index = index if identity_index is None else identity_index
        address = f"sim:{index}"
        registry = ContainerRegistry(address)
        core = self._new_core(ident_index, address, index, 0, registry)
        node = SimNode(index, core.id, address, core, registry, identity_index=ident_index)
        self.nodes.append(node)
        self.by_id[node.id] = node
        self.by_addr[address] = node
        return node

    def _new_core(self, ident_index: int, address: str, index: int, incarnation: int,
                  registry: ContainerRegistry) -> NodeCore:
        rng = Random(f"{self.seed}/{index}/{incarnation}")
        base = int(self.now * 1e6) + 1  # advert versions keep increasing across restarts (a wall clock)
        skew = 0.0
        if self.clock_skew:
            skew = Random(f"skew/{self.seed}/{index}").uniform(-self.clock_skew, self.clock_skew)
        kp = node_keypair(self.seed, ident_index)
        trust = self.trust(index, kp.node_id) if self.trust is not None else None
        return NodeCore(kp, self.config, rng, registry, addresses=(address,), version_base=base, wall_offset=skew,
                        trust=trust)

    def join(self, node: SimNode, contacts: list[SimNode], *, by_address: bool = False) -> None:
        """Start ``node``'s join through ``contacts`` (by id, or by address only)."""
        boot = [(None if by_address else c.id, (c.address,)) for c in contacts]
        self._apply(node, node.core.join(boot, self.now, follow_services=self.services))

    def subscribe(self, node: SimNode, pattern: str) -> None:
        """``node`` subscribes to ``pattern`` now."""
        self._apply(node, node.core.subscribe(pattern, self.now))

    def unsubscribe(self, node: SimNode, pattern: str) -> None:
        """``node`` drops one reference to ``pattern`` now."""
        self._apply(node, node.core.unsubscribe(pattern, self.now))

    def publish(self, node: SimNode, topic: str, payload: bytes) -> None:
        """``node`` publishes ``payload`` on ``topic`` now (sent at the end of this turn)."""
        self._apply(node, node.core.publish(topic, payload, self.now))

    # -- services and calls (the same core calls a real node makes) ------------------------------

    def start_services(self, node: SimNode) -> None:
        """``node`` follows the realm's service adverts from now on."""
        self._apply(node, node.core.follow_services(self.now))

    def advertise(self, node: SimNode, name: str, ttl: float | None = None) -> None:
        """``node`` serves ``name`` (an echo handler) and advertises it."""
        self._apply(node, node.core.advertise(name, self.now, ttl=ttl))

    def unadvertise(self, node: SimNode, name: str) -> None:
        """``node`` withdraws ``name``."""
        self._apply(node, node.core.unadvertise(name, self.now))

    def shutdown(self, node: SimNode) -> None:
        """``node`` withdraws its adverts and sends what is open (a stopping node's first step)."""
        self._apply(node, node.core.shutdown(self.now))

    def call(self, node: SimNode, name: str, payload: bytes, timeout: float, token: object) -> None:
        """``node`` calls ``name``; the outcome reaches :meth:`on_resolved` with ``token``."""
        if not node.alive:
            return
        try:
            _cid, outs = node.core.call(name, payload, timeout, self.now, token)
        except Exception as exc:  # Overloaded: the call ends at once
            self.on_resolved(node, CallResolved(token, None, exc))  # type: ignore[arg-type]
            return
        self._apply(node, outs)

    def on_resolved(self, node: SimNode, outcome: CallResolved) -> None:
        """A call of ``node`` ended (scenarios override this to record it)."""

    # -- replicated logs -------------------------------------------------------------------------

    def acquire_log(self, node: SimNode, name: str) -> None:
        """``node`` opens a handle on log ``name`` (replicates it from now on)."""
        self._apply(node, node.core.acquire_log(name, self.now))

    def release_log(self, node: SimNode, name: str) -> None:
        """``node`` closes its handle on log ``name``."""
        self._apply(node, node.core.release_log(name, self.now))

    def append(self, node: SimNode, name: str, payload: bytes) -> int | None:
        """``node`` appends to its log ``name``; the outcome (``Appended`` with the returned
        request id) reaches :meth:`on_log_output`. ``None``: refused at once (limit)."""
        if not node.alive:
            return None
        try:
            req_id, outs = node.core.append_log(name, payload, self.now, now_us=int(self.now * 1e6) + 1)
        except Exception:
            return None
        self._apply(node, outs)
        return req_id

    def on_log_output(self, node: SimNode, output: OperationStored | Appended) -> None:
        """``node`` stored an operation or finished an append (scenarios override this)."""

    def _store(self, node: SimNode, req: StoreRead | StoreWrite) -> None:
        if node.store is None:
            node.store = MemoryStore(self.config.store, registry=ContainerRegistry(f"{node.address}/store"))
        inc = node.incarnation

        def done() -> None:
            if not node.alive or node.incarnation != inc or node.store is None:
                return
            try:
                result: object = req.query.run(node.store)
            except Exception as exc:
                result = exc
            self._apply(node, node.core.store_done(req.req_id, result, self.now))

        self.at(self.now + self.store_delay, done)

    def _invoke(self, node: SimNode, eff: Invoke) -> None:
        inc = node.incarnation

        def done() -> None:
            if node.alive and node.incarnation == inc:
                self._apply(node, node.core.handler_done(eff.peer, eff.call_id, eff.payload, None, self.now))

        self.at(self.now + self.handler_delay, done)

    def crash(self, node: SimNode) -> None:
        """Kill ``node`` without a word: its peers notice after ``idle_timeout``."""
        if not node.alive:
            return
        node.alive = False
        node.timer_at = None
        for pair in [p for p in self.conns if node.index in p]:
            cid = self.conns.pop(pair)
            (other,) = pair - {node.index}
            self._lose_later(other, node.index, cid, self.net.idle_timeout)

    def restart(self, node: SimNode, contacts: list[SimNode]) -> None:
        """Bring a crashed node back with the same id and fresh state, and join again."""
        node.incarnation += 1
        node.registry = ContainerRegistry(node.address)
        node.core = self._new_core(node.identity_index, node.address, node.index, node.incarnation, node.registry)
        node.alive = True
        node.timer_at = None
        self.join(node, contacts)

    def retire(self, node: SimNode) -> None:
        """Crash ``node`` for good and drop its state (long churn runs keep memory flat)."""
        self.crash(node)
        node.core = self._tomb
        node.registry = self._tomb.mesh.registry
        node.deliveries = []

    def leave(self, node: SimNode) -> None:
        """Graceful stop: the node closes its connections (peers see peer_disconnected) and dies."""
        for pair in [p for p in self.conns if node.index in p]:
            cid = self.conns.pop(pair)
            (other,) = pair - {node.index}
            self._lose_later(other, node.index, cid, self.net.latency.sample(self.rng))
        node.alive = False
        node.timer_at = None

    # -- network control -------------------------------------------------------------------------

    def partition(self, groups: list[list[SimNode]], *, one_way: bool = False) -> None:
        """Cut the network between ``groups``; cut connections are lost after ``idle_timeout``."""
        self.reach.partition([[n.index for n in g] for g in groups], one_way=one_way)
        for pair, cid in list(self.conns.items()):
            a, b = sorted(pair)
            if not (self.reach.can_send(a, b) and self.reach.can_send(b, a)):
                self.at(self.now + self.net.idle_timeout, partial(self._cut_check, a, b, cid))

    def heal(self) -> None:
        """Remove every cut (connections lost meanwhile stay lost; nodes re-link by themselves)."""
        self.reach.heal()

    def _cut_check(self, a: int, b: int, cid: int) -> None:
        pair = frozenset((a, b))
        if self.conns.get(pair) != cid:
            return
        if self.reach.can_send(a, b) and self.reach.can_send(b, a):
            return
        del self.conns[pair]
        for x, y in ((a, b), (b, a)):
            self._lose_later(x, y, cid, 0.0)

    # -- event loop ------------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at simulated time ``t``."""
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), fn))

    def run_until(self, t: float) -> None:
        """Process events up to time ``t`` (inclusive); the clock ends at ``t``."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, fn = heapq.heappop(heap)
            self.now = when
            self.counters["events"] += 1
            fn()
        self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        """Process events for ``seconds`` of simulated time."""
        self.run_until(self.now + seconds)

    def run_while(self, cond: Callable[[], bool], limit: float, step: float = 0.5) -> float:
        """Advance in ``step``s while ``cond()`` holds, at most ``limit`` seconds; returns the time."""
        end = self.now + limit
        while cond() and self.now < end:
            self.run_until(min(self.now + step, end))
        return self.now

    # -- effects ---------------------------------------------------------------------------------

    def _apply(self, node: SimNode, effects: Sequence[object]) -> None:
        """Carry out ``node``'s outputs, then (the end of its turn) flush its open batches."""
        if not node.alive:
            return
        self._execute(node, effects)
        while node.alive and node.core.has_batches:
            self._execute(node, node.core.flush(self.now))
        self._arm(node)

    def _execute(self, node: SimNode, effects: Iterable[object]) -> None:
        for eff in effects:
            if not node.alive:
                return
            if isinstance(eff, Send):
                self._send(node, eff.peer, eff.message)
            elif isinstance(eff, DeliverBatch):
                self._execute(node, list(eff.each()))
            elif isinstance(eff, Deliver):
                if self.record_deliveries:
                    node.deliveries.append(Delivery(self.now, eff.topic, eff.publisher, eff.seq, eff.hops,
                                                    eff.payload))
                if node.on_deliver is not None:
                    node.on_deliver(node, eff)
            elif isinstance(eff, Dial):
                self._dial(node, self.by_id.get(eff.peer), eff.addresses, by_address=False)
            elif isinstance(eff, DialAddress):
                target = next((self.by_addr[a] for a in eff.addresses if a in self.by_addr), None)
                self._dial(node, target, eff.addresses, by_address=True)
            elif isinstance(eff, Disconnect):
                other = self.by_id.get(eff.peer)
                if other is None:
                    continue
                pair = frozenset((node.index, other.index))
                cid = self.conns.pop(pair, None)
                if cid is not None:
                    self._lose_later(other.index, node.index, cid, self.net.latency.sample(self.rng))
            elif isinstance(eff, Invoke):
                self._invoke(node, eff)
            elif isinstance(eff, CallResolved):
                self.on_resolved(node, eff)
            elif isinstance(eff, StoreRead | StoreWrite):
                self._store(node, eff)
            elif isinstance(eff, OperationStored | Appended):
                self.on_log_output(node, eff)

    def _arm(self, node: SimNode) -> None:
        if not node.alive:
            return
        d = node.core.next_deadline()
        if d is None:
            return
        d = max(d, self.now)
        if node.timer_at is not None and node.timer_at <= d and node.timer_at >= self.now:
            return
        node.timer_at = d
        inc = node.incarnation
        self.at(d, lambda: self._fire(node, inc, d))

    def _fire(self, node: SimNode, inc: int, d: float) -> None:
        if not node.alive or node.incarnation != inc or node.timer_at != d:
            return
        node.timer_at = None
        self._apply(node, node.core.timer(self.now))

    def _send(self, node: SimNode, peer: NodeId, msg: Message) -> None:
        other = self.by_id.get(peer)
        self.counters["sent"] += 1
        if isinstance(msg, MGossip):
            self.counters["payload_sent"] += 1
        if other is None:
            return
        pair = frozenset((node.index, other.index))
        cid = self.conns.get(pair)
        if cid is None:
            return
        if not self.reach.can_send(node.index, other.index):
            self.counters["cut"] += 1
            return
        delay = 0.0
        if self.net.loss and self.rng.random() < self.net.loss:
            self.counters["lost"] += 1
            mode = self.net.loss_mode
            if mode == "drop" or (mode == "drop_gossip" and isinstance(msg, _GOSSIP_KINDS)):
                return
            base = self._base_latency(node.index, other.index)
            pto = 6 * base + 0.025
            delay = pto
            while self.rng.random() < self.net.loss:  # the retransmission is lost too
                pto *= 2
                delay += pto
        copies = 1
        if self.net.duplicate and self.rng.random() < self.net.duplicate:
            copies = 2
            self.counters["duplicated"] += 1
        key = (node.index, other.index)
        base = self._base_latency(node.index, other.index)
        for _ in range(copies):
            t = self.now + delay + self.net.latency.link(base, self.rng)
            if self.net.bytes_per_second and isinstance(msg, MGossip):
                t += sum(map(len, msg.payloads)) / self.net.bytes_per_second
            t = max(t, self.link_last.get(key, 0.0) + 1e-6)
            self.link_last[key] = t
            src = node.index
            self.at(t, partial(self._receive, other, src, cid, msg))

    def link_latency(self, a: int, b: int) -> float:
        """The base one-way latency of the link between nodes ``a`` and ``b`` (by index; seconds,
        stable for the run; each message adds its jitter to it)."""
        return self._base_latency(a, b)

    def set_link_latency(self, a: int, b: int, seconds: float) -> None:
        """Make the base latency of the link between nodes ``a`` and ``b`` ``seconds`` from now on
        (a route change, a congested link); messages already on their way keep their times."""
        if not seconds > 0:
            raise ValueError(f"a link latency is positive, got {seconds!r}")
        self.link_base[(a, b) if a <= b else (b, a)] = float(seconds)

    def _base_latency(self, a: int, b: int) -> float:
        key = (a, b) if a <= b else (b, a)
        v = self.link_base.get(key)
        if v is None:
            v = self.net.latency.base(self.seed, a, b)
            self.link_base[key] = v
        return v

    def _receive(self, node: SimNode, src: int, cid: int, msg: Message) -> None:
        if not node.alive or self.conns.get(frozenset((node.index, src))) != cid:
            return
        self._apply(node, node.core.message(self.nodes[src].id, msg, self.now))

    def _dial(self, node: SimNode, target: SimNode | None, addrs: tuple[str, ...], *, by_address: bool) -> None:
        self.counters["dials"] += 1
        ok = (
            target is not None
            and target.alive
            and target is not node
            and self.reach.can_send(node.index, target.index)
            and self.reach.can_send(target.index, node.index)
        )
        inc = node.incarnation
        if not ok:
            self.counters["dials_failed"] += 1
            peer = None if by_address or target is None else target.id
            self.at(self.now + self.net.dial_timeout, lambda: self._dial_failed(node, inc, peer, addrs))
            return
        assert target is not None
        base = self._base_latency(node.index, target.index)
        rtt = 4 * self.net.latency.link(base, self.rng)
        tinc = target.incarnation
        self.at(self.now + rtt, lambda: self._dial_done(node, inc, target, tinc, addrs, by_address))

    def _dial_failed(self, node: SimNode, inc: int, peer: NodeId | None, addrs: tuple[str, ...]) -> None:
        if not node.alive or node.incarnation != inc:
            return
        self._apply(node, node.core.dial_failed(peer, addrs, self.now))

    def _dial_done(self, node: SimNode, inc: int, target: SimNode, tinc: int, addrs: tuple[str, ...],
                   by_address: bool) -> None:
        if not node.alive or node.incarnation != inc:
            return
        if not target.alive or target.incarnation != tinc or not (
            self.reach.can_send(node.index, target.index) and self.reach.can_send(target.index, node.index)
        ):
            self._dial_failed(node, inc, None if by_address else target.id, addrs)
            return
        if not self._admit(node, target):
            self._dial_failed(node, inc, None if by_address else target.id, addrs)
            return
        pair = frozenset((node.index, target.index))
        if pair not in self.conns:
            self.conns[pair] = next(self._conn_ids)
            self.link_last.pop((node.index, target.index), None)
            self.link_last.pop((target.index, node.index), None)
            self._apply(target, target.core.peer_connected(node.id, (node.address,), False, self.now))
        if node.alive and pair in self.conns:
            self._apply(node, node.core.peer_connected(target.id, (target.address,), True, self.now))

    def receive(self, node: SimNode, sender: NodeId, msg: Message) -> list[object]:
        """Hand ``msg`` to ``node`` now as if it came from ``sender`` (an adversary's injection
        point: ``sender`` need not be a node of the simulation); its outputs are carried out
        and returned."""
        out = node.core.message(sender, msg, self.now)
        self._apply(node, out)
        return out

    def _admit(self, a: SimNode, b: SimNode) -> bool:
        """The handshake's certificate exchange: each side checks the other's (and refuses a
        peer it blocked); False: the connection is refused."""
        for me, other in ((a, b), (b, a)):
            if me.core.blocked(other.id, self.now):
                return False
            if not me.core.trust.open:
                try:
                    me.core.trust.learn(other.core.trust.own_certificate, self.now + me.core.services.wall_offset,
                                        subject=other.id, kind="node")
                except NotAdmitted:
                    return False
        return True

    def _lose_later(self, who: int, peer: int, cid: int, delay: float) -> None:
        node = self.nodes[who]
        inc = node.incarnation

        def fire() -> None:
            pair = frozenset((who, peer))
            if not node.alive or node.incarnation != inc or self.conns.get(pair) not in (None, cid):
                return  # the node restarted, or a new connection replaced this one
            self.conns.pop(pair, None)
            self._apply(node, node.core.peer_disconnected(self.nodes[peer].id, self.now))

        self.at(self.now + delay, fire)
