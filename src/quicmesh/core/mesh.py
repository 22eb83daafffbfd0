"""The mesh facade: one object per node composing the address book, the realm-wide HyParView
overlay, topic swarms (a HyParView overlay plus a Plumtree per swarm) and per-publisher ordering.

Theory of operation
-------------------
The runtime (asyncio) and the simulator drive a :class:`Mesh` with the same calls and execute the
same effects; there is no simulator-only path.

**Connections.** The mesh emits :class:`~quicmesh.core.effects.Send` only to peers the driver has
reported connected. A message for an unconnected peer is queued in that peer's *dial queue*
(a :class:`~quicmesh.bounded.BoundedDeque` of ``GossipConfig.dial_queue_capacity`` messages, oldest
dropped and counted; at most ``MAX_DIAL_QUEUES`` peers have one) and one
:class:`~quicmesh.core.effects.Dial` is emitted. ``peer_connected`` flushes the queue;
``dial_failed`` (or ``DIAL_TIMEOUT`` without an answer) drops it, counts it and tells every overlay
the peer failed. A connection no overlay needs (not in an active view, no request pending, no
queued message) is closed after ``LINGER`` seconds with ``Disconnect(peer, "idle")``. The driver
does not report ``peer_disconnected`` for connections the mesh closed itself (reporting it anyway
is harmless).

**Realm overlay and join.** ``join(bootstrap)`` remembers up to ``MAX_BOOTSTRAP`` contacts. While
the realm active view is empty, the mesh sends JOIN to one contact (round robin; the first
attempt goes to every contact, so overlays started apart merge), dialling by id
or, for a contact whose id is unknown, with :class:`~quicmesh.core.effects.DialAddress`. The next
attempt comes after ``join_timeout * 2**attempt`` seconds, capped at ``join_backoff_max``, jittered
by +-25 %, never sooner than ``join_timeout / 2``; it never gives up. Failure detection comes from
the transport: ``peer_disconnected`` of an active peer, ``dial_failed``.

**Topic swarms.** A subscription joins the swarm of its pattern's first segment (see
:mod:`quicmesh.core.topics`). To find members, the node sends discovery walks (``MFind``, ARWL hops)
over the realm overlay to up to ``FIND_FANOUT`` realm neighbours. A node on the walk that is a
member answers the origin with itself and some of its swarm neighbours (``MFound``) and ends the
walk; a non-member answers with members it remembers (*hints*) and remembers the origin as a
member, then forwards the walk. Hints are realm-level routing state (an LRU of
``HINT_SWARMS`` swarms x ``HINT_PEERS`` peers, each expiring after ``HINT_TTL``). Found members
are joined through the swarm's own HyParView (JOIN/FORWARDJOIN inside the swarm) which then keeps
the swarm connected by itself (shuffles, promotion). Walks are repeated while the swarm's active
view is not full: after 1 s, doubling to 30 s while it is empty; every 30 s while partly full;
every 120 s when full (refreshing hints). Payloads travel only over swarm links, so only members
carry a swarm's payloads. ``publish`` to a topic whose swarm the node has not joined joins it
as a publisher only; that membership is left after ``PUBLISH_LINGER`` seconds without publishing.

**Subscriptions** are reference counted here: ``subscribe(p)`` twice needs ``unsubscribe(p)``
twice. The last unsubscribe of a swarm's last pattern leaves the swarm (LEAVE to its neighbours)
and releases its HyParView, Plumtree, ordering states, cache entries and queued messages.

**Publishing and batches.** ``publish`` numbers the message (per swarm ``seq``), delivers it to
local matching patterns at once, and appends it to the swarm's open *batch*; nothing is sent yet.
:meth:`Mesh.flush` (and :meth:`handle_timer`, since :meth:`next_deadline` reports an open batch
as due at once) sends every open batch as one :class:`MGossip`. A batch closes early when the next
publish goes to another topic of the swarm, or it reaches ``gossip.batch_max_messages`` messages
or ``gossip.batch_max_bytes`` bytes. The runtime flushes at the end of each event-loop iteration,
so a lone publish leaves at once while a burst travels ``batch_max_messages`` to a frame, and the
simulator flushes after every publish. Receivers accept batches of at most
:data:`~quicmesh.config.MAX_BATCH_MESSAGES` messages, each within ``max_message_size``.

**Delivery.** New messages go through :class:`~quicmesh.core.topics.Ordering` and are emitted as
one :class:`~quicmesh.core.effects.DeliverBatch` per batch (a :class:`~quicmesh.core.effects.Deliver`
for a batch of one) when a local pattern matches the topic; local publishes are delivered at
once. Payloads over ``PubSubConfig.max_message_size`` raise
:class:`~quicmesh.errors.MessageTooLarge` on publish and are dropped (counted) on receive.

**The short path.** While a swarm with no local subscription has an open batch, a publish to the
batch's topic only appends to it (:meth:`Mesh.append_to_batch`: no clock, no topic check, no
effects); everything else takes the general path. The published counter and the swarm's
``last_publish`` are updated when the batch is flushed.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import Any

from ..bounded import BoundedDeque, ContainerRegistry, LruMap, Overflow, TtlMap
from ..config import MAX_BATCH_MESSAGES, NodeConfig
from ..errors import LimitExceeded, MessageTooLarge
from ..identity import NodeId
from .addressbook import AddressBook, normalize_addresses
from .effects import DELIVERY_OVERHEAD, Deliver, DeliverBatch, Dial, DialAddress, Disconnect, Effect, Send
from .membership import HvOut, HvSend, HyParView, NeighborDown, NeighborUp, peer_id
from .mesh_messages import (
    MESH_MESSAGES,
    MFind,
    MFound,
    MGone,
    MGossip,
    MGraft,
    MIHave,
    MJoin,
    MLeave,
    MNeighbor,
    MPrune,
    PeerInfo,
)
from .plumtree import Arrived, GossipCaches, Plumtree
from .topics import MAX_TOPIC_LEN, Ordering, Pattern, check_topic, parse_pattern, swarm_of
from .wire import Message

__all__ = ["DIAL_TIMEOUT", "LINGER", "MESH_MESSAGES", "Mesh"]

DIAL_TIMEOUT = 10.0
"""Seconds a dial may stay unanswered before it counts as failed."""
LINGER = 5.0
"""Seconds an unneeded connection is kept open before ``Disconnect(peer, "idle")``."""
MAX_BOOTSTRAP = 64
"""Bootstrap contacts remembered."""
MAX_DIAL_QUEUES = 1024
"""Peers with messages waiting for a dial at once; the least recently used queue is dropped."""
FIND_FANOUT = 3
"""Discovery walks started per round."""
HINT_SWARMS = 1024
"""Swarms for which member hints are remembered."""
HINT_PEERS = 8
"""Member hints remembered per swarm."""
HINT_TTL = 300.0
"""Seconds a member hint is kept."""
FOUND_PEERS = 4
"""Peers sent in one MFound."""
PUBLISH_LINGER = 300.0
"""Seconds a publish-only swarm membership outlives the last publish."""

_INF = float("inf")


class _Swarm:
    """One joined swarm: its overlay, its broadcast tree, its local patterns, its publisher seq
    and its open batch of local publishes."""

    __slots__ = ("batch", "batch_bytes", "batch_seq", "batch_topic", "epoch", "find_interval", "hv",
                 "last_publish", "next_find", "next_seq", "patterns", "pt")

    def __init__(self, hv: HyParView, pt: Plumtree, epoch: int, now: float) -> None:
        self.hv = hv
        self.pt = pt
        self.patterns: dict[str, Pattern] = {}  # bounded: subset of Mesh.patterns (max_subscriptions)
        self.epoch = epoch
        self.next_seq = 0
        self.next_find = now
        self.find_interval = 1.0
        self.last_publish = -1e18
        self.batch: list[bytes] = []  # bounded: flushed at gossip.batch_max_messages / _bytes
        self.batch_topic = ""
        self.batch_seq = 0
        self.batch_bytes = 0


class Mesh:
    """One node's mesh core. See the module docstring for the theory of operation."""

    def __init__(
        self,
        me: NodeId,
        addresses: tuple[str, ...],
        config: NodeConfig,
        rng: Random,
        registry: ContainerRegistry,
    ) -> None:
        self.me = me
        self.addresses = normalize_addresses(addresses)
        self.config = config
        self.rng = rng
        self.registry = registry
        self.max_message_size = config.pubsub.max_message_size
        self.book = AddressBook(me, config.address_book, registry)
        self.realm = HyParView(me, self.addresses, "", config.membership, self.book, rng, registry)
        self.swarms: LruMap[str, _Swarm] = LruMap("mesh.swarms", config.gossip.max_topics, Overflow.REJECT,
                                                  registry=registry)
        self.patterns: LruMap[str, tuple[Pattern, int]] = LruMap(
            "mesh.patterns", config.pubsub.max_subscriptions, Overflow.REJECT, registry=registry
        )
        self.caches = GossipCaches(config.gossip, registry)
        self.ordering = Ordering(
            config.gossip.reorder_window, config.gossip.reorder_gap_timeout, config.gossip.max_publishers, registry,
            max_buffered=config.gossip.reorder_buffer_total, idle_ttl=config.gossip.publisher_idle_ttl,
        )
        maxc = config.transport.max_connections
        self.conns: LruMap[NodeId, bool] = LruMap("mesh.connections", maxc, Overflow.DROP_NEWEST, registry=registry)
        self.dialing: TtlMap[NodeId, None] = TtlMap("mesh.dialing", maxc, DIAL_TIMEOUT, registry=registry)
        self.addr_dials: TtlMap[tuple[str, ...], None] = TtlMap(
            "mesh.address_dials", MAX_BOOTSTRAP, DIAL_TIMEOUT, registry=registry
        )
        self.dial_queues: LruMap[NodeId, BoundedDeque[Message]] = LruMap(
            "mesh.dial_queues", MAX_DIAL_QUEUES, on_evict=self._queue_evicted, registry=registry
        )
        self.linger: TtlMap[NodeId, None] = TtlMap("mesh.linger", maxc, LINGER, registry=registry)
        self.hints: TtlMap[str, tuple[tuple[NodeId, float], ...]] = TtlMap(
            "mesh.swarm_hints", HINT_SWARMS, HINT_TTL, registry=registry
        )
        self.batched: dict[str, float] = {}  # bounded: a subset of swarms (gossip.max_topics)
        """Swarms with an open batch -> when its first message was published."""
        self.batch_max = config.gossip.batch_max_messages
        self._hot: _Swarm | None = None
        """The swarm whose open batch the last publish joined, while it has no local pattern: the
        next publish to the same topic takes a short path (see :meth:`publish`)."""
        self.batch_max_bytes = config.gossip.batch_max_bytes
        self._hot_bytes = min(self.batch_max_bytes, self.max_message_size)
        self.bootstrap: tuple[tuple[NodeId | None, tuple[str, ...]], ...] = ()
        self.join_attempt = 0
        self.next_join: float | None = None
        self.counters = {  # bounded: fixed keys
            "dial_queue_dropped": 0, "dials_failed": 0, "too_large_received": 0, "unknown_swarm": 0,
            "delivered": 0, "published": 0, "malformed": 0, "join_attempts": 0,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    def join(self, bootstrap: Sequence[tuple[NodeId | None, tuple[str, ...]]], now: float) -> list[Effect]:
        """Join the realm through ``bootstrap`` contacts (ids may be ``None``: dialled by address).

        Retries with capped exponential backoff until the realm active view is not empty, and
        again whenever it becomes empty."""
        entries: list[tuple[NodeId | None, tuple[str, ...]]] = []
        for pid, addrs in list(bootstrap)[:MAX_BOOTSTRAP]:
            norm = normalize_addresses(addrs)
            if pid == self.me or (pid is None and not norm):
                continue
            if pid is not None and norm:
                self.book.add(pid, norm, now)
            entries.append((pid, norm))
        self.bootstrap = tuple(entries)
        self.join_attempt = 0
        self.next_join = now
        # The first attempt goes to every contact, so overlays started apart merge; retries
        # (while the active view stays empty) go to one contact at a time, round robin.
        out: list[Effect] = []
        for pid, addrs in entries[1:]:
            out += self._contact(pid, addrs, now)
        return self._maybe_join(now) + out

    def _maybe_join(self, now: float) -> list[Effect]:
        if len(self.realm.active) > 0:
            self.join_attempt = 0
            self.next_join = None
            return []
        if not self.bootstrap:
            return []
        if self.next_join is None:
            self.next_join = now
        if now < self.next_join:
            return []
        cfg = self.config.membership
        pid, addrs = self.bootstrap[self.join_attempt % len(self.bootstrap)]
        delay = min(cfg.join_backoff_max, cfg.join_timeout * 2.0 ** min(self.join_attempt, 30))
        delay = max(delay * (0.75 + 0.5 * self.rng.random()), cfg.join_timeout / 2)
        self.join_attempt += 1
        self.counters["join_attempts"] += 1
        self.next_join = now + delay
        return self._contact(pid, addrs, now)

    def _contact(self, pid: NodeId | None, addrs: tuple[str, ...], now: float) -> list[Effect]:
        """Send a JOIN to a bootstrap contact, dialling it by address when its id is unknown."""
        if pid is not None:
            return self._route("", self.realm.join_via(pid, now), now)
        if addrs in self.addr_dials:
            return []
        self.addr_dials.set(addrs, None, now)
        return [DialAddress(addrs)]

    # -- transport events ------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId, addresses: tuple[str, ...], outbound: bool, now: float) -> list[Effect]:
        """The driver holds an authenticated connection to ``peer`` (idempotent)."""
        if peer == self.me:
            return [Disconnect(peer, "self")]
        if peer not in self.conns and not self.conns.set(peer, outbound):
            return [Disconnect(peer, "max_connections")]
        norm = normalize_addresses(addresses)
        self.book.set_connected(peer, norm if outbound else (), now)
        self.dialing.pop(peer)
        out: list[Effect] = []
        q = self.dial_queues.pop(peer)
        if q is not None:
            out += [Send(peer, m) for m in q.drain()]
            q.close()
        if outbound:  # a bootstrap contact dialled by address answered: join through it
            matched = [k for k in self.addr_dials.keys() if set(k) & set(norm)]
            for k in matched:
                self.addr_dials.pop(k)
            if matched:
                out += self._route("", self.realm.join_via(peer, now), now)
        self._check_linger(peer, now)
        return out

    def peer_disconnected(self, peer: NodeId, now: float, *, graceful: bool = False) -> list[Effect]:
        """The connection to ``peer`` ended: lost, or closed in an orderly way (``graceful``: the
        peer shut down or left; it is not re-dialled as a lost neighbour)."""
        self.conns.pop(peer)
        self.linger.pop(peer)
        self.book.set_disconnected(peer, now)
        out: list[Effect] = []
        if self.realm.knows(peer):
            out += self._route("", self.realm.peer_failed(peer, now, lost=not graceful), now)
        for key in list(self.swarms.keys()):
            sw = self.swarms.peek(key)
            if sw is not None and sw.hv.knows(peer):
                out += self._route(key, sw.hv.peer_failed(peer, now, lost=not graceful), now)
        out += self._maybe_join(now)
        return out

    def dial_failed(self, peer: NodeId, now: float) -> list[Effect]:
        """A dial to ``peer`` failed: drop its queue and tell every overlay."""
        self.dialing.pop(peer)
        self.counters["dials_failed"] += 1
        q = self.dial_queues.pop(peer)
        if q is not None:
            self.counters["dial_queue_dropped"] += len(q)
            q.close()
        out = self._route("", self.realm.peer_failed(peer, now), now)
        for key in list(self.swarms.keys()):
            sw = self.swarms.peek(key)
            if sw is not None:
                out += self._route(key, sw.hv.peer_failed(peer, now), now)
        out += self._maybe_join(now)
        return out

    def address_dial_failed(self, addresses: tuple[str, ...], now: float) -> list[Effect]:
        """A :class:`DialAddress` failed; the join timer tries the next contact."""
        self.addr_dials.pop(normalize_addresses(addresses))
        return []

    # -- API -------------------------------------------------------------------------------------

    def add_peer(self, peer: NodeId, addresses: tuple[str, ...], now: float) -> None:
        """Learn a peer from the API: address book and realm passive view."""
        self.book.add(peer, addresses, now)
        self.realm.add_candidate(peer)

    def remove_peer(self, peer: NodeId, now: float) -> list[Effect]:
        """Forget a peer everywhere and close our connection to it."""
        out = self._route("", self.realm.forget(peer), now)
        for key in list(self.swarms.keys()):
            sw = self.swarms.peek(key)
            if sw is not None:
                out += self._route(key, sw.hv.forget(peer), now)
        q = self.dial_queues.pop(peer)
        if q is not None:
            q.close()
        self.dialing.pop(peer)
        self.linger.pop(peer)
        self.book.remove(peer)
        if self.conns.pop(peer) is not None:
            out.append(Disconnect(peer, "removed"))
        return out

    def subscribe(self, pattern: str, now: float) -> list[Effect]:
        """Add one reference to ``pattern``; the first joins its swarm. Raises ``ValueError`` for a
        bad pattern and :class:`LimitExceeded` past ``max_subscriptions`` / ``max_topics``."""
        p = parse_pattern(pattern)
        entry = self.patterns.get(pattern)
        if entry is not None:
            self.patterns.set(pattern, (entry[0], entry[1] + 1))
            return []
        sw, out = self._ensure_swarm(p.swarm, now)
        self.patterns.set(pattern, (p, 1))
        sw.patterns[pattern] = p
        if self._hot is sw:
            self._hot = None  # publishes to it are now delivered locally too: not the short path
        return out

    def unsubscribe(self, pattern: str, now: float) -> list[Effect]:
        """Drop one reference to ``pattern``; the last reference of a swarm's last pattern leaves
        the swarm and releases all of its state. Unknown patterns are ignored."""
        entry = self.patterns.get(pattern)
        if entry is None:
            return []
        if entry[1] > 1:
            self.patterns.set(pattern, (entry[0], entry[1] - 1))
            return []
        self.patterns.pop(pattern)
        key = entry[0].swarm
        sw = self.swarms.peek(key)
        if sw is None:
            return []
        sw.patterns.pop(pattern, None)
        if sw.patterns:
            return []
        return self._leave_swarm(key, now)

    def publish(self, topic: str, payload: bytes, now: float) -> list[Effect]:
        """Publish ``payload`` on ``topic``: local matching subscriptions get a Deliver at once;
        the message joins the swarm's open batch, sent by :meth:`flush` (or earlier when the batch
        closes; see "Publishing and batches").

        Raises :class:`MessageTooLarge` over ``pubsub.max_message_size`` and ``ValueError`` for a
        bad topic."""
        if self.append_to_batch(topic, payload):
            return []
        check_topic(topic)
        if len(payload) > self.max_message_size:
            raise MessageTooLarge(len(payload), self.max_message_size)
        sw, out = self._ensure_swarm(swarm_of(topic), now)
        sw.last_publish = now
        if sw.batch and (sw.batch_topic != topic or len(sw.batch) >= self.batch_max
                         or sw.batch_bytes + len(payload) > self.batch_max_bytes):
            out += self._flush_swarm(sw, now)
        if not sw.batch:
            sw.batch_topic = topic
            sw.batch_seq = sw.next_seq
            self.batched.setdefault(sw.hv.swarm, now)
        payload = bytes(payload)
        self._hot = None if sw.patterns or topic[:1] == "$" else sw  # reserved topics: never short
        sw.batch.append(payload)
        sw.batch_bytes += len(payload)
        seq = sw.next_seq
        sw.next_seq += 1
        if sw.patterns and any(p.matches(topic) for p in sw.patterns.values()):
            out.append(Deliver(topic, payload, self.me, seq, 0))
            self.counters["delivered"] += 1
        return out

    def append_to_batch(self, topic: str, payload: bytes) -> bool:
        """The short path of :meth:`publish`, for the common case of a burst: add ``payload`` to
        the open batch if that batch is for ``topic``, in a swarm with no local subscription, and
        has room; ``False`` (nothing done) otherwise. No clock is needed: the topic was checked
        when the batch opened, ``_hot_bytes`` bounds each message's size too, and the swarm's
        ``last_publish`` and the published counter are brought up to date at the flush."""
        sw = self._hot
        if sw is not None and topic == sw.batch_topic:
            batch = sw.batch
            size = sw.batch_bytes + len(payload)
            if len(batch) < self.batch_max and size <= self._hot_bytes:
                batch.append(payload)
                sw.batch_bytes = size
                sw.next_seq += 1
                return True
        return False

    @property
    def has_batches(self) -> bool:
        """Whether some local publishes wait in an open batch (see :meth:`flush`)."""
        return bool(self.batched)

    def flush(self, now: float) -> list[Effect]:
        """Send every open batch of local publishes (see "Publishing and batches")."""
        out: list[Effect] = []
        if not self.batched:
            return out
        keys = list(self.batched)
        self.batched.clear()
        for key in keys:
            sw = self.swarms.peek(key)
            if sw is not None:
                out += self._flush_swarm(sw, now)
        return out

    def _flush_swarm(self, sw: _Swarm, now: float) -> list[Effect]:
        if not sw.batch:
            return []
        msg = MGossip(sw.hv.swarm, sw.batch_topic, self.me.raw, sw.epoch, sw.batch_seq, sw.batch, 0)
        self.counters["published"] += len(sw.batch)
        sw.last_publish = max(sw.last_publish, now)
        if self._hot is sw:
            self._hot = None
        sw.batch = []
        sw.batch_bytes = 0
        self.batched.pop(sw.hv.swarm, None)
        return self._route(sw.hv.swarm, list(sw.pt.broadcast(msg, now)), now)

    def set_addresses(self, addresses: tuple[str, ...]) -> None:
        """This node's own listen addresses (known once the transport is bound)."""
        self.addresses = normalize_addresses(addresses)
        self.realm.addresses = self.addresses
        for sw in self.swarms.values():
            sw.hv.addresses = self.addresses

    def join_topic(self, topic: str, now: float) -> list[Effect]:
        """Join ``topic``'s swarm as a publisher (as ``publish`` does) without publishing yet;
        the membership is left after ``PUBLISH_LINGER`` seconds without publishing."""
        check_topic(topic)
        sw, out = self._ensure_swarm(swarm_of(topic), now)
        sw.last_publish = max(sw.last_publish, now)
        return out

    def swarm_neighbours(self, topic: str) -> int:
        """Active neighbours of this node in ``topic``'s swarm (0 when not a member)."""
        sw = self.swarms.peek(swarm_of(topic))
        return 0 if sw is None else len(sw.hv.active)

    # -- messages --------------------------------------------------------------------------------

    def handle_message(self, peer: NodeId, msg: Message, now: float) -> list[Effect]:
        """Process one message received from ``peer``."""
        s = getattr(msg, "s", None)
        if not isinstance(s, str) or len(s) > MAX_TOPIC_LEN:
            self.counters["malformed"] += 1
            return []
        if isinstance(msg, MFind):
            return self._on_find(peer, msg, now)
        if isinstance(msg, MFound):
            return self._on_found(msg, now)
        if s == "":
            out = self._route("", self.realm.handle(peer, msg, now), now)
            out += self._maybe_join(now)
            self._check_linger(peer, now)
            return out
        sw = self.swarms.peek(s)
        if sw is None:
            self.counters["unknown_swarm"] += 1
            if isinstance(msg, (MJoin, MNeighbor, MGossip, MIHave, MGraft)):  # not MGone: never answer it
                return self._send(peer, MLeave(s, False), now)
            return []
        if isinstance(msg, MGossip):
            if not msg.payloads or len(msg.payloads) > MAX_BATCH_MESSAGES:
                self.counters["malformed"] += 1
                return []
            if max(map(len, msg.payloads)) > self.max_message_size:
                self.counters["too_large_received"] += 1
                return []
        if isinstance(msg, (MGossip, MIHave, MGraft, MPrune, MGone)):
            sends, arrived = sw.pt.handle(peer, msg, now)
            out = self._route(s, list(sends), now)
            if arrived is not None:
                out += self._deliver(sw, self.ordering.offer(arrived, now))
            return out
        out = self._route(s, sw.hv.handle(peer, msg, now), now)
        self._check_linger(peer, now)
        return out

    def _on_find(self, sender: NodeId, msg: MFind, now: float) -> list[Effect]:
        origin = peer_id(msg.origin)
        if origin is None or origin == self.me or not msg.s:
            return []
        self.book.add(origin, msg.addrs, now)
        sw = self.swarms.peek(msg.s)
        out: list[Effect] = []
        if sw is not None:
            peers = [self.me, *self.rng.sample(sw.hv.active_peers(), min(FOUND_PEERS - 1, len(sw.hv.active)))]
            infos = [PeerInfo(p.raw, list(self.addresses if p == self.me else self.book.addresses(p)))
                     for p in peers if p != origin]
            out += self._send(origin, MFound(msg.s, infos), now)
            return out
        hints = [(p, exp) for p, exp in (self.hints.get(msg.s) or ()) if exp > now and p != origin]
        if hints:
            infos = [PeerInfo(p.raw, list(self.book.addresses(p))) for p, _ in hints[-FOUND_PEERS:]
                     if self.book.addresses(p)]
            if infos:
                out += self._send(origin, MFound(msg.s, infos), now)
        kept = [(p, e) for p, e in hints if p != origin][-(HINT_PEERS - 1):]
        self.hints.set(msg.s, (*kept, (origin, now + HINT_TTL)), now)
        ttl = min(msg.ttl, self.config.membership.active_random_walk)
        if ttl > 0:
            cands = [p for p in self.realm.active.keys() if p not in (sender, origin)]
            if cands:
                nxt = self.rng.choice(cands)
                out += self._send(nxt, MFind(msg.s, msg.origin, list(self.book.addresses(origin)), ttl - 1), now)
        return out

    def _on_found(self, msg: MFound, now: float) -> list[Effect]:
        sw = self.swarms.peek(msg.s)
        if sw is None:
            return []
        out: list[Effect] = []
        for info in msg.peers[:FOUND_PEERS * 2]:
            p = peer_id(info.id)
            if p is None or p == self.me:
                continue
            self.book.add(p, info.addrs, now)
            if len(sw.hv.active) + len(sw.hv.pending) < self.config.membership.active_view:
                out += self._route(msg.s, sw.hv.join_via(p, now), now)
            else:
                sw.hv.add_candidate(p)
        return out

    # -- timers ----------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> list[Effect]:
        """Run every due timer: open batches, overlays, broadcast repair, ordering gaps, expiry,
        joins, walks."""
        out: list[Effect] = self.flush(now)
        for peer, _ in self.dialing.expire(now):
            out += self.dial_failed(peer, now)
        self.addr_dials.expire(now)
        for peer, _ in self.linger.expire(now):
            if peer in self.conns and not self._needed(peer):
                self.conns.pop(peer)
                self.book.set_disconnected(peer, now)
                out.append(Disconnect(peer, "idle"))
        out += self._route("", self.realm.handle_timer(now), now)
        for key in list(self.swarms.keys()):
            sw = self.swarms.peek(key)
            if sw is None:
                continue
            if not sw.patterns and now - sw.last_publish > PUBLISH_LINGER:
                out += self._leave_swarm(key, now)
                continue
            out += self._route(key, sw.hv.handle_timer(now), now)
            out += self._route(key, list(sw.pt.handle_timer(now)), now)
            if now >= sw.next_find:
                out += self._discover(sw, now)
        delivered = self.ordering.handle_timer(now)
        for a in delivered:
            sw = self.swarms.peek(a.swarm)
            if sw is not None:
                out += self._deliver(sw, [a])
        self.caches.expire(now)
        self.book.expire(now)
        self.hints.expire(now)
        out += self._maybe_join(now)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` must run, or ``None``."""
        best = _INF
        for d in (
            self.dialing.next_deadline(), self.addr_dials.next_deadline(), self.linger.next_deadline(),
            self.realm.next_deadline(), self.ordering.next_deadline(), self.caches.next_deadline(),
            self.book.next_deadline(), self.hints.next_deadline(),
        ):
            if d is not None and d < best:
                best = d
        for d in self.batched.values():
            if d < best:
                best = d
        if self.bootstrap and self.next_join is not None and len(self.realm.active) == 0 and self.next_join < best:
            best = self.next_join
        for sw in self.swarms.values():
            if sw.next_find < best:
                best = sw.next_find
            d = sw.hv.next_deadline()
            if d is not None and d < best:
                best = d
            d = sw.pt.next_deadline()
            if d is not None and d < best:
                best = d
            if not sw.patterns and sw.last_publish + PUBLISH_LINGER + 0.001 < best:
                best = sw.last_publish + PUBLISH_LINGER + 0.001
        return None if best == _INF else best

    # -- observability ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A snapshot for /health: views, swarms, caches, queues, counters."""
        swarms = {}
        for key, sw in self.swarms.items():
            swarms[key] = {
                "active": len(sw.hv.active), "passive": len(sw.hv.passive), "eager": len(sw.pt.eager),
                "lazy": len(sw.pt.lazy), "missing": len(sw.pt.missing), "patterns": len(sw.patterns),
                **sw.pt.counters,
            }
        return {
            "realm": {"active": len(self.realm.active), "passive": len(self.realm.passive),
                      "pending": len(self.realm.pending), **self.realm.counters},
            "address_book": self.book.stats(),
            "swarms": swarms,
            "patterns": len(self.patterns),
            "seen_ids": len(self.caches.seen),
            "payload_cache": len(self.caches.payloads),
            "payload_cache_bytes": self.caches.payloads.nbytes,
            "connections": len(self.conns),
            "dialing": len(self.dialing),
            "dial_queues": len(self.dial_queues),
            "ordering": {"publishers": len(self.ordering.states), **self.ordering.counters},
            "hints": len(self.hints),
            **self.counters,
        }

    def topic_state(self, swarm: str) -> int:
        """Entries any structure of this node holds for ``swarm`` (0 after leaving it), hints
        excluded (realm-level, they expire after ``HINT_TTL``)."""
        n = 0
        sw = self.swarms.peek(swarm)
        if sw is not None:
            n += 1 + len(sw.hv.active) + len(sw.hv.passive) + sw.pt.state_size() + len(sw.patterns)
        n += self.caches.count(swarm) + self.ordering.count(swarm)
        n += sum(1 for p in self.patterns.keys() if swarm_of(p) == swarm)
        for q in self.dial_queues.values():
            n += sum(1 for m in q if getattr(m, "s", None) == swarm)
        return n

    # -- internals -------------------------------------------------------------------------------

    def _ensure_swarm(self, key: str, now: float) -> tuple[_Swarm, list[Effect]]:
        sw = self.swarms.peek(key)
        if sw is not None:
            return sw, []
        if len(self.swarms) >= self.swarms.capacity:
            raise LimitExceeded("gossip.max_topics", self.swarms.capacity)
        hv = HyParView(self.me, self.addresses, key, self.config.membership, self.book, self.rng, self.registry,
                       prefix="swarm", now=now)
        pt = Plumtree(self.me, key, self.config.gossip, self.caches, self.rng, self.registry,
                      max_message_size=self.max_message_size)
        sw = _Swarm(hv, pt, self.rng.getrandbits(63), now)
        self.swarms.set(key, sw)
        # hints we hold for this swarm are a head start
        for p, exp in self.hints.pop(key) or ():
            if exp > now:
                hv.add_candidate(p)
        return sw, self._discover(sw, now)

    def _leave_swarm(self, key: str, now: float) -> list[Effect]:
        sw = self.swarms.peek(key)
        if sw is None:
            return []
        out = self._flush_swarm(sw, now)  # what was published before leaving still goes out
        self.swarms.pop(key)
        if self._hot is sw:
            self._hot = None
        out += self._route(key, sw.hv.leave(), now)
        sw.pt.close()
        self.caches.purge(key)
        self.ordering.purge(key)
        for peer in list(self.dial_queues.keys()):
            q = self.dial_queues.peek(peer)
            if q is None:
                continue
            keep = [m for m in q.drain() if getattr(m, "s", None) != key]
            for m in keep:
                q.append(m)
        for p in list(self.patterns.keys()):
            if swarm_of(p) == key:
                self.patterns.pop(p)
        return out

    def _discover(self, sw: _Swarm, now: float) -> list[Effect]:
        cfg = self.config.membership
        n_active = len(sw.hv.active)
        if n_active == 0:
            sw.next_find = now + sw.find_interval * (0.75 + 0.5 * self.rng.random())
            sw.find_interval = min(sw.find_interval * 2, 30.0)
        else:
            sw.find_interval = 1.0
            sw.next_find = now + (120.0 if n_active >= cfg.active_view else 30.0) * (0.75 + 0.5 * self.rng.random())
        realm = self.realm.active_peers()
        out: list[Effect] = []
        for p in self.rng.sample(realm, min(FIND_FANOUT, len(realm))):
            out += self._send(p, MFind(sw.hv.swarm, self.me.raw, list(self.addresses), cfg.active_random_walk), now)
        return out

    def _deliver(self, sw: _Swarm, items: list[Arrived]) -> list[Effect]:
        out: list[Effect] = []
        for a in items:
            if any(p.matches(a.topic) for p in sw.patterns.values()):
                self.counters["delivered"] += len(a.payloads)
                payloads = a.payloads
                if len(payloads) == 1:
                    out.append(Deliver(a.topic, payloads[0], a.publisher, a.seq, a.hops))
                else:
                    size = sum(map(len, payloads)) + DELIVERY_OVERHEAD * len(payloads)
                    out.append(DeliverBatch(a.topic, payloads, a.publisher, a.seq, a.hops, size))
        return out

    def _route(self, swarm: str, outs: Sequence[HvOut], now: float) -> list[Effect]:
        out: list[Effect] = []
        sw = self.swarms.peek(swarm) if swarm else None
        for o in outs:
            if isinstance(o, HvSend):
                out += self._send(o.peer, o.message, now)
            elif isinstance(o, NeighborUp):
                if sw is not None:
                    sw.pt.neighbor_up(o.peer, now)
                self.linger.pop(o.peer)
            elif isinstance(o, NeighborDown):
                if sw is not None:
                    sw.pt.neighbor_down(o.peer)
                self._check_linger(o.peer, now)
        return out

    def _send(self, peer: NodeId, msg: Message, now: float) -> list[Effect]:
        if peer == self.me:
            return []
        if peer in self.conns:
            return [Send(peer, msg)]
        q = self.dial_queues.get(peer)
        if q is None:
            q = BoundedDeque("mesh.dial_queue", self.config.gossip.dial_queue_capacity,
                             on_evict=self._queued_dropped, registry=self.registry)
            self.dial_queues.set(peer, q)
        q.append(msg)
        if peer in self.dialing:
            return []
        addrs = self.book.addresses(peer)
        if not addrs:
            return self.dial_failed(peer, now)
        self.dialing.set(peer, None, now)
        return [Dial(peer, addrs)]

    def _queued_dropped(self, _msg: Message) -> None:
        self.counters["dial_queue_dropped"] += 1

    def _queue_evicted(self, _peer: NodeId, q: BoundedDeque[Message]) -> None:
        self.counters["dial_queue_dropped"] += len(q)
        q.close()

    def _needed(self, peer: NodeId) -> bool:
        if self.realm.knows(peer) or peer in self.dial_queues:
            return True
        return any(sw.hv.knows(peer) for sw in self.swarms.values())

    def _check_linger(self, peer: NodeId, now: float) -> None:
        if peer not in self.conns:
            return
        if self._needed(peer):
            self.linger.pop(peer)
        elif peer not in self.linger:
            self.linger.set(peer, None, now)
