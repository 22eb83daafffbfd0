"""The mesh facade: one object per node composing the address book, the realm-wide HyParView
overlay, topic swarms (a HyParView overlay plus a Plumtree per swarm) and per-publisher ordering.

Theory of operation
-------------------
The runtime (asyncio) and the simulator drive a :class:`Mesh` with the same calls and execute the
same effects; there is no simulator-only path. The mesh is split by responsibility; each part's
module explains its rules:

* :mod:`quicmesh.core.connections` (:class:`~quicmesh.core.connections.Connections`, ``self.links``):
  which peers are connected, dialled or lingering, and the dial queues. The mesh emits
  :class:`~quicmesh.core.effects.Send` only to peers the driver has reported connected; a message
  for another peer waits in its dial queue and one :class:`~quicmesh.core.effects.Dial` is emitted.
  ``dial_failed`` (or ``DIAL_TIMEOUT`` without an answer) drops the queue and tells every overlay
  the peer failed. An unneeded connection is closed after ``LINGER`` seconds with
  ``Disconnect(peer, "idle")``; the driver need not report ``peer_disconnected`` for it.
* :mod:`quicmesh.core.discovery` (:class:`~quicmesh.core.discovery.Discovery`, ``self.discovery``):
  joining the realm through bootstrap contacts (retried with capped, jittered backoff while the
  realm active view is empty; never gives up) and finding members of a swarm by walks (``MFind``
  / ``MFound``, member hints).
* :mod:`quicmesh.core.batching` (:class:`~quicmesh.core.batching.Batching`, mixed in):
  ``publish``, batches of local publishes, ``flush``, and the short path ``append_to_batch``.

What stays here is the composition: which machine a message goes to (:meth:`Mesh.handle_message`),
how overlay outputs become effects (``_route``: sends, and neighbour changes told to the swarm's
Plumtree and to the connection table), the timers (:meth:`Mesh.handle_timer`,
:meth:`Mesh.next_deadline`), and the swarms' lifecycle.

**Topic swarms.** A subscription joins the swarm of its pattern's first segment (see
:mod:`quicmesh.core.topics`); the swarm's members are found by discovery walks and joined through
the swarm's own HyParView (JOIN/FORWARDJOIN inside the swarm), which then keeps the swarm connected
by itself (shuffles, promotion). Payloads travel only over swarm links, so only members carry a
swarm's payloads. ``publish`` to a topic whose swarm the node has not joined joins it as a
publisher only; that membership is left after ``PUBLISH_LINGER`` seconds without publishing.

**Subscriptions** are reference counted here: ``subscribe(p)`` twice needs ``unsubscribe(p)``
twice. The last unsubscribe of a swarm's last pattern leaves the swarm (LEAVE to its neighbours)
and drops its state, unless the node published to it within ``PUBLISH_LINGER``: it stays a
publish-only member (as above). At ``gossip.max_topics`` such a membership gives way to a new swarm.

**Delivery.** New messages go through :class:`~quicmesh.core.topics.Ordering` and are emitted as
one :class:`~quicmesh.core.effects.DeliverBatch` per batch (a :class:`~quicmesh.core.effects.Deliver`
for a batch of one) when a local pattern matches the topic; local publishes are delivered at
once. Payloads over ``PubSubConfig.max_message_size`` raise
:class:`~quicmesh.errors.MessageTooLarge` on publish and are dropped (counted) on receive.
Receivers accept batches of at most :data:`~quicmesh.config.MAX_BATCH_MESSAGES` messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from random import Random
from typing import Any

from ..bounded import ContainerRegistry, LruMap, Overflow, Watch
from ..config import MAX_BATCH_MESSAGES, NodeConfig
from ..errors import LimitExceeded
from ..identity import NodeId
from .addressbook import AddressBook, normalize_addresses
from .batching import Batching
from .connections import DIAL_TIMEOUT, LINGER, MAX_DIAL_QUEUES, Connections
from .discovery import FIND_FANOUT, FOUND_PEERS, HINT_PEERS, HINT_SWARMS, HINT_TTL, MAX_BOOTSTRAP, Discovery
from .effects import DELIVERY_OVERHEAD, Deliver, DeliverBatch, Disconnect, Effect, Send
from .membership import HvOut, HvSend, HyParView, NeighborDown, NeighborUp
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
    SelfRecord,
)
from .observed import ObservedAddresses
from .plumtree import Arrived, GossipAuth, GossipCaches, Plumtree
from .swarm import Swarm, idle_publisher
from .swarm_timers import PUBLISH_LINGER, SwarmTimers
from .topics import MAX_TOPIC_LEN, Ordering, Pattern, check_topic, parse_pattern, swarm_of
from .wire import Message

__all__ = [
    "DIAL_TIMEOUT", "FIND_FANOUT", "FOUND_PEERS", "HINT_PEERS", "HINT_SWARMS", "HINT_TTL", "LINGER",
    "MAX_BOOTSTRAP", "MAX_DIAL_QUEUES", "MESH_MESSAGES", "PUBLISH_LINGER", "Mesh",
]


def _no_client_swarms() -> int:
    return 0

_INF = float("inf")


class Mesh(Batching):
    """One node's mesh core. See the module docstring for the theory of operation.

    Its parts are public attributes: ``book`` (address book), ``realm`` (the realm HyParView),
    ``swarms`` (joined swarms), ``patterns`` (subscriptions), ``caches`` and ``ordering``
    (broadcast caches and reorder buffers), ``links`` (connections), ``discovery``. The
    containers of ``links`` and ``discovery`` are also reachable under their former names
    (``conns``, ``dialing``, ``dial_queues``, ``linger``, ``addr_dials``, ``hints``).
    """

    def __init__(
        self,
        me: NodeId,
        addresses: tuple[str, ...],
        config: NodeConfig,
        rng: Random,
        registry: ContainerRegistry,
        *,
        serves_clients: bool = False,
        auth: GossipAuth | None = None,
    ) -> None:
        self.me = me
        self.auth = auth
        """Signs local gossip batches and checks received ones (None: unsigned, unchecked)."""
        self.addresses = normalize_addresses(addresses)
        self.config = config
        self.rng = rng
        self.registry = registry
        self.max_message_size = config.pubsub.max_message_size
        self.counters = {  # bounded: fixed keys
            "dial_queue_dropped": 0, "dials_failed": 0, "too_large_received": 0, "unknown_swarm": 0,
            "delivered": 0, "published": 0, "malformed": 0, "join_attempts": 0, "top_ups": 0,
            "replenished": 0,
        }
        self.book = AddressBook(me, config.address_book, registry)
        self.observed = ObservedAddresses(config.addresses, registry)
        """#13: what peers report seeing this node at, and the address set it announces."""
        self.realm = HyParView(me, self.addresses, "", config.membership, self.book, rng, registry)
        # serving light clients (#11): room for what clients may hold on top of the node's own
        # caps, so clients at their caps never use up the node's own (see client_swarms)
        gw = config.gateway
        self.client_topic_reserve = gw.max_clients_topics if serves_clients else 0
        self.client_swarms: Callable[[], int] = _no_client_swarms
        """Swarms held for light clients now (set by their driver): not the node's own ``max_topics``."""
        self.swarms: LruMap[str, Swarm] = LruMap(
            "mesh.swarms", config.gossip.max_topics + self.client_topic_reserve, Overflow.REJECT, registry=registry
        )
        self.swarm_timers = SwarmTimers(self.swarms)
        """The swarms' deadlines, recomputed for the swarms whose watch was marked."""
        self.patterns: LruMap[str, tuple[Pattern, int]] = LruMap(
            "mesh.patterns", config.pubsub.max_subscriptions + (gw.max_clients_subscriptions if serves_clients else 0),
            Overflow.REJECT, registry=registry,
        )
        self.caches = GossipCaches(config.gossip, registry)
        self.ordering = Ordering(
            config.gossip.reorder_window, config.gossip.reorder_gap_timeout, config.gossip.max_publishers, registry,
            max_buffered=config.gossip.reorder_buffer_total, idle_ttl=config.gossip.publisher_idle_ttl,
            start_wait=config.gossip.reorder_start_wait, gap_hold=config.gossip.reorder_gap_hold,
            repairing=self._repairing, pull=self._pull)
        self.links = Connections(config, self.book, registry, self.counters, self._known_by_overlays)
        self.discovery = Discovery(me, config, self.book, self.realm, self.swarms, rng, registry, self.counters,
                                   self._send, self._route)
        self._init_batches(config.gossip)
        # the next_deadline of every node-wide timer (next_deadline runs after each event)
        self._timers: tuple[Callable[[], float | None], ...] = (
            *self.links.timers(), *self.discovery.timers(), self.realm.next_deadline, self.ordering.next_deadline,
            self.caches.next_deadline, self.book.next_deadline,
        )
        self._watch = Watch()  # marked by every part _watched_deadline reads, where its state changes
        self._watched = _INF
        for part in (self.links, self.discovery, self.realm, self.ordering, self.caches, self.book, self.swarms):
            part.watch(self._watch)
        # the parts' containers under the names they had when the mesh was one class
        self.conns = self.links.conns
        self.dialing = self.links.dialing
        self.dial_queues = self.links.dial_queues
        self.linger = self.links.linger
        self.addr_dials = self.discovery.addr_dials
        self.hints = self.discovery.hints

    # -- lifecycle -------------------------------------------------------------------------------

    def join(self, bootstrap: Sequence[tuple[NodeId | None, tuple[str, ...]]], now: float) -> list[Effect]:
        """Join the realm through ``bootstrap`` contacts (ids may be ``None``: dialled by address);
        retried with capped exponential backoff until the realm active view is not empty, and
        again whenever it becomes empty."""
        return self.discovery.join(bootstrap, now)

    # -- transport events ------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId, addresses: tuple[str, ...], outbound: bool, now: float) -> list[Effect]:
        """The driver holds an authenticated connection to ``peer`` (idempotent)."""
        if peer == self.me:
            return [Disconnect(peer, "self")]
        norm = normalize_addresses(addresses)
        out = self.links.connected(peer, norm, outbound, now)
        if out is None:
            return [Disconnect(peer, "max_connections")]
        # a bootstrap contact dialled by address answered: join through it (or top up)
        if outbound and self.discovery.address_answered(norm, peer):
            out += self.discovery.contact_answered(peer, now)
        self.links.check_linger(peer, now)
        return out

    def peer_disconnected(self, peer: NodeId, now: float, *, graceful: bool = False) -> list[Effect]:
        """The connection to ``peer`` ended: lost, or closed in an orderly way (``graceful``: the
        peer shut down or left; it is not re-dialled as a lost neighbour)."""
        self.links.disconnected(peer, now)
        out: list[Effect] = []
        if self.realm.knows(peer):
            out += self._route("", self.realm.peer_failed(peer, now, lost=not graceful), now)
        for key in list(self.swarms.keys()):
            sw = self.swarms.peek(key)
            if sw is not None and sw.hv.knows(peer):
                out += self._route(key, sw.hv.peer_failed(peer, now, lost=not graceful), now)
                self._walk_soon(sw, now)
        out += self.discovery.maybe_join(now)
        return out

    def dial_failed(self, peer: NodeId, now: float) -> list[Effect]:
        """A dial to ``peer`` failed: drop its queue and tell every overlay."""
        self.links.dial_failed(peer)
        out = self._route("", self.realm.peer_failed(peer, now), now)
        for key in list(self.swarms.keys()):
            sw = self.swarms.peek(key)
            if sw is not None:
                out += self._route(key, sw.hv.peer_failed(peer, now), now)
                self._walk_soon(sw, now)
        out += self.discovery.maybe_join(now)
        return out

    @staticmethod
    def _walk_soon(sw: Swarm, now: float) -> None:
        """A swarm view emptied by failures walks for members soon, not on a full view's 90-150 s."""
        if len(sw.hv.active) == 0 and sw.next_find > now + sw.find_interval:
            sw.next_find = now + sw.find_interval

    def address_dial_failed(self, addresses: tuple[str, ...], now: float) -> list[Effect]:
        """A :class:`DialAddress` failed; the join timer tries the next contact."""
        self.discovery.address_failed(addresses)
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
        closed = self.links.forget(peer)
        self.book.remove(peer)
        return out + closed

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
        sw.watch.dirty = True
        self._no_short_path(sw)  # publishes to it are now delivered locally too
        return out

    def unsubscribe(self, pattern: str, now: float) -> list[Effect]:
        """Drop one reference to ``pattern``; the last reference of a swarm's last pattern leaves
        the swarm and releases all of its state, unless this node published to it within
        ``PUBLISH_LINGER`` (it stays a publisher). Unknown patterns are ignored."""
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
        sw.watch.dirty = True
        if sw.patterns or now - sw.last_publish <= PUBLISH_LINGER:
            return []
        return self._leave_swarm(key, now)

    def set_self_record(self, record: SelfRecord, realm: str) -> None:
        """#13: this node's signed record of its addresses, and the realm id records name (:mod:`.selfrecord`)."""
        self.book.own_record = record
        self.book.realm = realm

    def set_addresses(self, addresses: tuple[str, ...]) -> None:
        """This node's own listen addresses (known once the transport is bound)."""
        self.addresses = normalize_addresses(addresses)
        self.realm.addresses = self.addresses
        self.discovery.addresses = self.addresses
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
            return self.discovery.on_find(peer, msg, now)
        if isinstance(msg, MFound):
            return self.discovery.on_found(msg, now)
        if s == "":
            out = self._route("", self.realm.handle(peer, msg, now), now)
            out += self.discovery.maybe_join(now)
            self.links.check_linger(peer, now)
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
        self.links.check_linger(peer, now)
        return out

    # -- timers ----------------------------------------------------------------------------------

    def _pull(self, swarm: str, publisher: NodeId, epoch: int, seq: int, n: int, now: float) -> bool:
        return (sw := self.swarms.peek(swarm)) is not None and sw.pt.pull(publisher.raw, epoch, seq, n, now)

    def _repairing(self, swarm: str, now: float, start: bool, first: bool) -> bool:
        sw = self.swarms.peek(swarm)  # a start wait is held on only for a member of long standing
        return sw is not None and sw.pt.repairing(first) and (
            not start or now - sw.joined_at >= self.ordering.gap_timeout)

    def handle_timer(self, now: float) -> list[Effect]:
        """Run every due timer: open batches, overlays, broadcast repair, ordering gaps, expiry, joins, walks."""
        d = self.next_deadline()
        if (d is None or d > now) and not self.batched:  # another machine's timer: only what runs due or not
            return self._idle_timer(now)
        out: list[Effect] = self.flush(now)
        for peer in self.links.expire_dials(now):
            out += self.dial_failed(peer, now)
        self.discovery.expire(now)
        out += self.links.expire_idle(now)
        if now >= self.realm.next_repair:
            self.discovery.replenish(now)  # an empty passive view: candidates for this repair
        out += self._route("", self.realm.handle_timer(now), now)
        for key in self._waking(now):
            sw = self.swarms.peek(key)
            if sw is None:
                continue
            if not sw.patterns and now - sw.last_publish > PUBLISH_LINGER:
                out += self._leave_swarm(key, now)
                continue
            pt = sw.pt
            again = pt.reannounce_deadline()
            if self._swarm_deadline(sw) <= now or (again is not None and again <= now):
                out += self._route(key, sw.hv.handle_timer(now), now)
                out += self._route(key, list(pt.handle_timer(now)), now)
            else:  # neither has a due timer: what their handle_timer would do then (nothing for hv)
                pt.idle_timer(now)
            if now >= sw.next_find:
                out += self.discovery.discover(sw, now)
        delivered = self.ordering.handle_timer(now)
        for a in delivered:
            sw = self.swarms.peek(a.swarm)
            if sw is not None:
                out += self._deliver(sw, [a])
        self.caches.expire(now)
        self.book.expire(now)
        out += self.discovery.maybe_join(now)
        return out

    def _idle_timer(self, now: float) -> list[Effect]:
        """:meth:`handle_timer` before :meth:`next_deadline` (no open batch, no due timer): only
        the steps that wait for no deadline run, in the same order: a publish-only swarm past its
        linger is left (its deadline lies 1 ms later), the trees drop unused trees and old ids of
        the optimisation window (``Plumtree.idle_timer``), the join retry is checked."""
        out: list[Effect] = []
        for key in self._waking(now):
            sw = self.swarms.peek(key)
            if sw is None:
                continue
            if not sw.patterns and now - sw.last_publish > PUBLISH_LINGER:
                out += self._leave_swarm(key, now)
                continue
            sw.pt.idle_timer(now)
        out += self.discovery.maybe_join(now)
        return out

    def _waking(self, now: float) -> Iterator[str]:
        """The keys of the swarms a timer at ``now`` has anything to do for, in the swarms' order
        (a walk over the keys; see :mod:`quicmesh.core.swarm_timers`). A swarm that the work on
        an earlier one woke is included, as in a walk over all of them."""
        timers = self.swarm_timers
        awake = timers.waking(now)
        for key in list(self.swarms.keys()):
            if timers.dirty:
                awake |= timers.waking(now)
            if key in awake:
                yield key

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` must run, or ``None``.

        The node-wide timers (caches, tables: :meth:`_watched_deadline`) are recomputed only after
        one of them marked the mesh's :class:`~quicmesh.bounded.Watch`, and a swarm's times only
        after its own watch was marked (:class:`~quicmesh.core.swarm_timers.SwarmTimers`: a heap of
        the swarms' deadlines); open batches and the join retry are read here every time."""
        w = self._watch
        if w.dirty:
            w.dirty = False
            self._watched = self._watched_deadline()
        best = self._watched
        for d in self.batched.values():  # an open batch is due at once
            if d < best:
                best = d
        join = self.discovery.join_due()
        if join is not None and join < best:
            best = join
        d = self.swarm_timers.earliest_due()
        if d < best:
            best = d
        return None if best == _INF else best

    def _watched_deadline(self) -> float:
        """The part of :meth:`next_deadline` that :attr:`_watch` covers (``inf``: none)."""
        best = _INF
        for timer in self._timers:
            d = timer()
            if d is not None and d < best:
                best = d
        return best

    @staticmethod
    def _swarm_deadline(sw: Swarm) -> float:
        """The earliest timer of a swarm's overlay and broadcast tree (re-announcements aside;
        ``inf``: none), recomputed only after one of them marked the swarm's watch: a node in many
        swarms pays per event for the swarms whose timers changed, not for all of them."""
        w = sw.watch
        if w.dirty:  # the key stays in SwarmTimers.dirty: its due and wake are recomputed there
            w.dirty = False
            sw.deadline = SwarmTimers.timer_deadline(sw)
        return sw.deadline

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
            "connections": len(self.links.conns),
            "dialing": len(self.links.dialing),
            "dial_queues": len(self.links.dial_queues),
            "ordering": {"publishers": len(self.ordering.states), **self.ordering.counters},
            "hints": len(self.discovery.hints),
            **self.counters,
        }

    def topic_state(self, swarm: str) -> int:
        """Entries any structure of this node holds for ``swarm`` (0 after leaving it), hints
        excluded (realm-level, they expire after ``membership.hint_ttl``)."""
        n = 0
        sw = self.swarms.peek(swarm)
        if sw is not None:
            n += 1 + len(sw.hv.active) + len(sw.hv.passive) + sw.pt.state_size() + len(sw.patterns)
        n += self.caches.count(swarm) + self.ordering.count(swarm)
        n += sum(1 for p in self.patterns.keys() if swarm_of(p) == swarm)
        return n + self.links.queued(swarm)

    # -- internals -------------------------------------------------------------------------------

    def _ensure_swarm(self, key: str, now: float) -> tuple[Swarm, list[Effect]]:
        sw = self.swarms.peek(key)
        if sw is not None:
            return sw, []
        out: list[Effect] = []
        own_cap = self.config.gossip.max_topics
        if len(self.swarms) >= own_cap + min(self.client_swarms(), self.client_topic_reserve):
            victim = idle_publisher(self.swarms)  # a publish-only membership gives way, never refuses
            if victim is None:
                raise LimitExceeded("gossip.max_topics", own_cap)
            out = self._leave_swarm(victim, now)
        hv = HyParView(self.me, self.addresses, key, self.config.membership, self.book, self.rng, self.registry,
                       prefix="swarm", now=now)
        pt = Plumtree(self.me, key, self.config.gossip, self.caches, self.rng, self.registry,
                      max_message_size=self.max_message_size, auth=self.auth)
        sw = Swarm(hv, pt, self.rng.getrandbits(63), now, self.swarm_timers.watch(key))  # hv and pt mark it
        self.swarms.set(key, sw)
        for p in self.discovery.take_hints(key, now):  # hints we hold for this swarm are a head start
            hv.add_candidate(p)
        return sw, out + self.discovery.discover(sw, now)

    def _leave_swarm(self, key: str, now: float) -> list[Effect]:
        sw = self.swarms.peek(key)
        if sw is None:
            return []
        out = self._flush_swarm(sw, now)  # what was published before leaving still goes out
        self.swarms.pop(key)
        self._no_short_path(sw)
        out += self._route(key, sw.hv.leave(), now)
        sw.pt.close()
        self.caches.purge(key)
        self.ordering.purge(key)
        self.links.purge_swarm(key)
        for p in list(self.patterns.keys()):
            if swarm_of(p) == key:
                self.patterns.pop(p)
        return out

    def _deliver(self, sw: Swarm, items: list[Arrived]) -> list[Effect]:
        out: list[Effect] = []
        for a in items:
            if sw.wants(a.topic):
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
                    out += self._route(swarm, sw.pt.neighbor_up(o.peer, now), now)
                self.links.in_use(o.peer)
            elif isinstance(o, NeighborDown):
                if sw is not None:
                    sw.pt.neighbor_down(o.peer, now)
                self.links.check_linger(o.peer, now)
        return out

    def _send(self, peer: NodeId, msg: Message, now: float) -> list[Effect]:
        if peer == self.me:
            return []
        if peer in self.conns:  # connected: the hot path, kept inline (Connections.send does the same)
            return [Send(peer, msg)]
        out = self.links.send(peer, msg, now)
        if out is None:  # no address to dial: failed at once
            return self.dial_failed(peer, now)
        return out

    def _known_by_overlays(self, peer: NodeId) -> bool:
        return self.realm.knows(peer) or any(sw.hv.knows(peer) for sw in self.swarms.values())
