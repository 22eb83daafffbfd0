"""Plumtree epidemic broadcast trees (Leitão, Pereira, Rodrigues, 2007), one instance per swarm.

Theory of operation
-------------------
Each swarm member splits its swarm neighbours (the swarm's HyParView active view) into *eager*
peers, to which it pushes full payloads, and *lazy* peers, to which it only announces message ids
(IHAVE). New neighbours start eager, so the first broadcast floods; every duplicate payload
received makes its sender lazy (PRUNE), which trims the flood into a spanning tree.

A *payload* here is one :class:`MGossip`: a batch of one publisher's consecutive messages to one
topic (see ``GossipConfig.batch_max_messages``), handled as one unit by everything below.

* **One tree per publisher** (#14; as riak_core's and Partisan's Plumtree keep one per root). A
  tree shared by every publisher is optimised for none: with five publishers at 100 nodes a third
  of all receipts came through GRAFT repair (each duplicate pruned a link another publisher's
  messages needed), and deliveries took up to 19 hops where one publisher's own tree needs 5.
  So eager/lazy is decided per publisher: ``trees`` maps a publisher to the neighbours that are
  lazy for its messages (all others are eager), at most ``tree_publishers`` publishers (least
  recently used forgotten: its next message floods again and re-forms its tree). A publisher's
  first batch floods the swarm; duplicates prune it into the tree of first arrivals, i.e. of the
  fastest paths from that publisher. PRUNE and GRAFT name the publisher (``p``); without it they
  act on every tree held then. ``eager``/``lazy`` are the swarm's neighbours, each on the side of its last
  move (a summary for /health; ``eager`` + ``lazy`` is always the neighbour set).
* **Receive.** A payload whose id is new is remembered (seen cache, 90 s), cached for GRAFTs
  (payload cache, 30 s, capped in count and bytes), handed up, pushed to the eager peers and
  announced to the lazy peers. The id is computed here as a hash of (publisher, epoch, seq, topic,
  payloads) and never taken from the wire. A payload whose id was seen makes its sender lazy.
  Before a new id is remembered, cached, forwarded or handed up, the batch's origin signature
  and its publisher's permission are checked (``auth``, a :class:`GossipAuth`):
  a batch that fails is dropped, nothing is remembered of it, and its sender is penalised there.
  One exception (#14): a batch that comes straight from its publisher (the connection
  authenticated that peer with the publisher's own key), that no IHAVE announced and that goes
  on to no neighbour as a payload (a leaf of the publisher's tree) has everything but its
  signature checked at once; it is handed up and cached marked unchecked, and its signature is
  checked before it is first served to a GRAFT (a failure drops it, penalises the publisher and
  answers GONE). A leaf of a two-node mesh thus saves a verification (~70 µs) per batch, and
  nothing ever leaves a node with an unchecked signature.
* **Repair.** An IHAVE for an unseen id records the announcer and, the first time, arms a timer
  (80 ms). When it fires and the payload is still missing, the node sends GRAFT(id) to the
  announcer with the fewest hops (#14; making it eager) and re-arms (40 ms) for the next one,
  rotating through announcers until the payload arrives or the entry expires with the cache TTL.
  A GRAFT is answered once per ``GRAFT_ANSWER_INTERVAL`` per (id, peer): on a congested link
  the answer waits behind seconds of queued data while the retries keep coming, and answering
  each would multiply the load that delays them. An answer is marked as a repair (``r``), and a
  duplicate repair prunes nothing (it is the receiver's own retry, not a second tree path).
* **Re-announcement.** On lossy links an eager payload and every IHAVE for it can all be lost.
  Each received id is therefore announced once more, ``REANNOUNCE_DELAY`` seconds later, to every
  neighbour (eager and lazy) except the one it came from; a neighbour that has it ignores the
  IHAVE. This costs ids, never payloads, so it does not change the payload redundancy. Due
  re-announcements are processed at most every ``REANNOUNCE_DELAY / 2`` so they batch well.
* **Pulls** (#14, :mod:`quicmesh.core.plumtree_pull`). A node whose ordering has a gap that
  nothing fills asks its neighbours for the publisher's batches in the missing seqs (an
  ``MGraft`` with a seq and no id); they answer from their payload caches, as repairs.
* **Catch-up on new links.** When a swarm neighbour appears, it is sent an IHAVE of the (at most
  ``CATCHUP_IDS``) most recent payloads we still cache for the swarm. A node whose neighbours all
  crashed (their loss is only noticed at the transport's idle timeout) keeps publishing into the
  void; once it has new neighbours they graft what they missed and the tree spreads it. The
  price: a node that just joined a swarm may receive up to the payload cache's recent messages
  (at most ``payload_cache_ttl``, 30 s, old) published before it subscribed. A neighbour that
  comes back within ``REJOIN_WINDOW`` (2 s) of going down (a subscriber that re-subscribed, a
  link that flapped) is also pushed the batches cached since it went down (at most
  ``REJOIN_PUSH``, oldest first, as repairs) before anything newer: what a publisher sent while
  its view of a rejoining subscriber was stale arrives in order instead of behind the stream.
* **Tree optimisation.** When a payload arrives with ``hops`` more than ``optimization_threshold``
  above the hop count an earlier IHAVE announced, the node grafts the announcer (without id) and
  prunes the sender. The same holds the other way round, which is the common case (an IHAVE
  travels on a lazy link after a batching delay, so it usually comes after the payload): an IHAVE
  from a lazy peer announcing, with at least ``optimization_threshold`` fewer hops, a payload
  received in the last ``OPTIMISE_WINDOW`` seconds grafts the announcer and prunes the eager peer
  the payload came from (#14: at 1,000 nodes this took the deepest delivery from 30 hops down).
* **Tree refresh** (#14). Nothing above revisits a link pruned while its path was slower once the
  path speeds up (or the eager one slows down) unless a payload goes missing for the GRAFT timer.
  So every ``gossip.tree_refresh`` (30 s, x 0.5-1.5 fixed per node and publisher) a node that
  receives a new batch of a publisher grafts its neighbours lazy for that publisher: they push
  the next batch too, the first arrival is the eager link from then on and the duplicates prune
  the rest.
* **Batching.** IHAVEs are queued and flushed every ``ihave_batch_interval`` (5 ms), one message
  per peer.

The seen cache and payload cache are node-wide (:class:`GossipCaches`, keyed by id, tagged with
the swarm) so their caps hold whatever the number of swarms; :meth:`GossipCaches.purge` removes a
swarm's entries when the node leaves it. Everything else lives in this object and is closed by
:meth:`Plumtree.close`.
"""

from __future__ import annotations

from random import Random

from ..bounded import BoundedDeque, ContainerRegistry, LruMap, TtlMap, Watch
from ..config import GossipConfig
from ..identity import NodeId
from . import plumtree_params as params
from .gossip_caches import ID_LEN, Arrived, GossipAuth, GossipCaches, batch_digest, message_id
from .membership import HvSend
from .mesh_messages import MGone, MGossip, MGraft, MIHave, MPrune
from .plumtree_links import TreeLinks
from .plumtree_params import GRAFT_ANSWER_INTERVAL, MAX_IHAVE_IDS, REANNOUNCE_DELAY
from .plumtree_pull import Repairs
from .wire import Message

__all__ = [
    "GRAFT_ANSWER_INTERVAL", "ID_LEN", "REANNOUNCE_DELAY", "Arrived", "GossipAuth", "GossipCaches", "Plumtree",
    "batch_digest", "message_id",
]

class Plumtree(TreeLinks, Repairs):
    """Broadcast state of one swarm. See the module docstring."""

    def __init__(
        self,
        me: NodeId,
        swarm: str,
        config: GossipConfig,
        caches: GossipCaches,
        rng: Random,
        registry: ContainerRegistry,
        *,
        max_message_size: int,
        auth: GossipAuth | None = None,
    ) -> None:
        self.me = me
        self.auth = auth
        """Checks origin signatures and permissions of received batches (None: no checks)."""
        self.swarm = swarm
        self.config = config
        self.caches = caches
        self.rng = rng
        self.max_message_size = max_message_size
        self.eager: LruMap[NodeId, None] = LruMap("plumtree.eager", params.MAX_NEIGHBOURS, registry=registry)
        self.lazy: LruMap[NodeId, None] = LruMap("plumtree.lazy", params.MAX_NEIGHBOURS, registry=registry)
        self.since: LruMap[NodeId, float] = LruMap("plumtree.neighbour_since", params.MAX_NEIGHBOURS, registry=registry)
        """When each neighbour joined: re-announcements go only to neighbours that were linked when
        the message arrived (a newcomer gets the bounded catch-up instead, not the whole backlog)."""
        self.left: TtlMap[NodeId, bytes] = TtlMap("plumtree.left", params.MAX_NEIGHBOURS, params.REJOIN_WINDOW,
                                                  registry=registry)
        """Neighbours that went down in the last ``REJOIN_WINDOW``: the newest batch cached then."""
        cap = config.payload_cache_capacity
        self.missing: TtlMap[bytes, tuple[tuple[NodeId, int], ...]] = TtlMap(
            "plumtree.missing", cap, config.payload_cache_ttl, registry=registry
        )
        self.graft_timers: TtlMap[bytes, None] = TtlMap("plumtree.graft_timers", cap, config.graft_timeout_1,
                                                        registry=registry)
        self.graft_tries: TtlMap[bytes, int] = TtlMap(
            "plumtree.graft_tries", cap, config.payload_cache_ttl, registry=registry
        )
        self.trees: LruMap[bytes, set[NodeId]] = LruMap("plumtree.trees", config.tree_publishers, registry=registry)
        """Per publisher: the neighbours lazy for its messages (see the module docstring)."""
        self.tree_used: TtlMap[bytes, float] = TtlMap(
            "plumtree.tree_used", config.tree_publishers, config.publisher_idle_ttl, registry=registry,
            touch_granularity=min(1.0, config.publisher_idle_ttl / 100))
        """Publishers whose messages passed lately, each with when its tree is next refreshed here
        (``gossip.tree_refresh``): a tree unused for ``gossip.publisher_idle_ttl`` (a departed
        publisher's) is dropped, as its ordering state is."""
        self.received_from: TtlMap[bytes, tuple[NodeId, int, bytes]] = TtlMap(
            "plumtree.received_from", cap, params.OPTIMISE_WINDOW, registry=registry
        )
        """Recently received ids: the peer each came from, its hop count and its publisher (tree
        optimisation)."""
        self.answered: TtlMap[tuple[bytes, NodeId], None] = TtlMap(
            "plumtree.grafts_answered", cap, GRAFT_ANSWER_INTERVAL, registry=registry)
        """(id, peer) GRAFTs answered lately (see ``GRAFT_ANSWER_INTERVAL``)."""
        self.ihave_queue: BoundedDeque[tuple[NodeId, bytes, int]] = BoundedDeque("plumtree.ihave_queue", 4 * cap,
                                                                                  registry=registry)
        self.pulls: BoundedDeque[tuple[NodeId, MGraft]] = BoundedDeque("plumtree.pulls", cap, registry=registry)
        """Pulls to send with the next IHAVE flush (see :meth:`pull`)."""
        self._watch = Watch()
        self._ihave_deadline: float | None = None
        self.next_reannounce = 0.0
        self.reannounce: BoundedDeque[tuple[float, bytes, NodeId | None]] = BoundedDeque("plumtree.reannounce", cap,
                                                                                          registry=registry)
        self.counters = {  # bounded: fixed keys
            "received": 0, "duplicates": 0, "grafts_sent": 0, "prunes_sent": 0, "too_large": 0,
            "payloads_sent": 0, "ihaves_sent": 0, "optimisations": 0, "tree_refreshes": 0,
            "grafts_abandoned": 0, "rejected": 0, "grafts_unanswered": 0, "rejoin_pushes": 0, "pulls_sent": 0,
            "pulls_answered": 0,
        }

    # -- neighbours ------------------------------------------------------------------------------

    def neighbor_up(self, peer: NodeId, now: float) -> list[HvSend]:
        """A swarm neighbour appeared: start it eager, announce our recent messages to it, and
        push a rejoining one what it missed (catch-up: see the module docstring)."""
        self._make_eager(peer, None)
        self.since.set(peer, now)
        recent = self.caches.recent(self.swarm, params.CATCHUP_IDS)
        for mid, m in recent:
            self._queue_ihave(peer, mid, m.hops + 1, now)
        newest = self.left.live(peer, now)  # the newest cached when it left (b"": none, all came since)
        self.left.pop(peer)
        if newest is None:
            return []
        start = next((i + 1 for i, (mid, _) in enumerate(recent) if mid == newest), 0)
        out: list[HvSend] = []
        for mid, m in recent[start:start + params.REJOIN_PUSH]:
            if mid not in self.caches.unchecked or self._check_deferred(mid, m, now):
                self.answered.set((mid, peer), None, now)
                out.append(HvSend(peer, self._repair(m)))
        self.counters["payloads_sent"] += len(out)
        self.counters["rejoin_pushes"] += len(out)
        return out

    def neighbor_down(self, peer: NodeId, now: float) -> None:
        """A swarm neighbour left: forget it, but for when it left and the newest batch cached
        then (a rejoin within ``REJOIN_WINDOW`` is pushed what came after)."""
        newest = self.caches.recent(self.swarm, 1)
        self.left.set(peer, newest[0][0] if newest else b"", now)
        self.eager.pop(peer)
        self.lazy.pop(peer)
        self.since.pop(peer)
        for lazy in self.trees.values():
            lazy.discard(peer)
        for key in [k for k in self.answered.keys() if k[1] == peer]:  # what it was sent may be lost
            self.answered.pop(key)

    # -- events ----------------------------------------------------------------------------------

    def broadcast(self, msg: MGossip, now: float, mid: bytes | None = None) -> list[HvSend]:
        """Publish a locally created message (hops 0); the caller delivers it locally itself.
        ``mid``: its id when the caller computed it already (signing needs the digest)."""
        if mid is None:
            mid = message_id(msg.publisher, msg.epoch, msg.seq, msg.topic, msg.payloads)
        self.caches.remember(mid, self.swarm, now, new=True)
        self.caches.keep(mid, msg, now)
        return self._push(mid, msg, None, now)

    def handle(self, sender: NodeId, msg: Message, now: float) -> tuple[list[HvSend], Arrived | None]:
        """Process a Plumtree message from ``sender``."""
        if isinstance(msg, MGossip):
            return self._on_gossip(sender, msg, now)
        if isinstance(msg, MIHave):
            return self._on_ihave(sender, msg, now), None
        if isinstance(msg, MGraft):
            return self._on_graft(sender, msg, now), None
        if isinstance(msg, MGone):
            self._on_gone(sender, msg, now)
            return [], None
        if isinstance(msg, MPrune):
            if self._is_neighbour(sender):
                self._make_lazy(sender, msg.p)
            return [], None
        return [], None

    def _on_gossip(self, sender: NodeId, msg: MGossip, now: float) -> tuple[list[HvSend], Arrived | None]:
        if not msg.payloads or max(map(len, msg.payloads)) > self.max_message_size:
            self.counters["too_large"] += 1
            return [], None
        digest = batch_digest(msg.publisher, msg.epoch, msg.seq, msg.topic, msg.payloads)
        mid = digest[:ID_LEN]
        out: list[HvSend] = []
        pub = msg.publisher
        if mid in self.caches.seen:
            self.counters["duplicates"] += 1
            if not msg.r and self.is_eager(sender, pub):
                self._make_lazy(sender, pub)
                self.counters["prunes_sent"] += 1
                out.append(HvSend(sender, MPrune(self.swarm, pub)))
            return out, None
        # #14: a batch straight from its publisher is authenticated by the connection; its origin
        # signature matters to the nodes it goes on to, so it is checked now only if it will go
        # on at once, and else before it is first served (_on_graft)
        auth = self.auth
        deferred = (auth is not None and sender.raw == pub and mid not in self.missing
                    and not self._pushes_payload(sender, pub))
        if auth is not None and not auth.verify_gossip(sender, msg, digest, now, signature=not deferred):
            self.counters["rejected"] += 1  # nothing remembered: a valid copy may still come
            return out, None
        self.counters["received"] += 1
        self.caches.remember(mid, self.swarm, now, new=True)
        announcers = self.missing.pop(mid) or ()
        if announcers:  # #14: a GRAFT timer and count exist only beside an announced id (stale ones expire)
            self.graft_timers.pop(mid)
            self.graft_tries.pop(mid)
        if self._is_neighbour(sender) and not self.is_eager(sender, pub):
            self._make_eager(sender, pub)
        # tree optimisation: an announcer was much closer to the source than the eager sender
        for peer, hops in announcers:
            if peer != sender and self._is_neighbour(peer) and hops + self.config.optimization_threshold < msg.hops:
                out += self._swap(peer, sender, pub)
                break
        if self.config.tree_refresh and not msg.r:
            out += self._refresh(pub, now)
        self.caches.keep(mid, msg, now, checked=not deferred)
        self.received_from.set(mid, (sender, msg.hops, pub), now)
        out += self._push(mid, msg, sender, now, forward=True)
        return out, self._arrived(msg)

    def _on_ihave(self, sender: NodeId, msg: MIHave, now: float) -> list[HvSend]:
        if not self._is_neighbour(sender):
            return []
        out: list[HvSend] = []
        n = min(len(msg.ids), len(msg.hops), MAX_IHAVE_IDS)
        for i in range(n):
            mid = msg.ids[i]
            if len(mid) != ID_LEN:
                continue
            if mid in self.caches.seen:
                if not out:
                    out = self._optimise(sender, mid, msg.hops[i])
                continue
            hops = msg.hops[i]
            entry = self.missing.get(mid) or ()
            if all(p != sender for p, _ in entry) and len(entry) < params.MAX_ANNOUNCERS:
                deadline = self.missing.deadline(mid)
                ttl = self.config.payload_cache_ttl if deadline is None else max(deadline - now, 0.001)
                self.missing.set(mid, (*entry, (sender, hops)), now, ttl)
            if mid not in self.graft_timers:
                self.graft_timers.set(mid, None, now, self.config.graft_timeout_1)
        return out

    def _on_graft(self, sender: NodeId, msg: MGraft, now: float) -> list[HvSend]:
        if not self._is_neighbour(sender):
            return []
        if msg.id is None and msg.q is not None and msg.e is not None and msg.p is not None:
            return self._on_pull(sender, msg.p, msg.e, msg.q, 1 if msg.n is None else msg.n, now)
        if msg.id is None:
            self._make_eager(sender, msg.p)
            return []
        cached = self.caches.payloads.get(msg.id)
        if cached is None or cached.s != self.swarm:
            if msg.p is not None:
                self._make_eager(sender, msg.p)
            return [HvSend(sender, MGone(self.swarm, msg.id))]
        if msg.id in self.caches.unchecked and not self._check_deferred(msg.id, cached, now):
            return [HvSend(sender, MGone(self.swarm, msg.id))]
        self._make_eager(sender, cached.publisher)
        key = (msg.id, sender)
        answered = self.answered.deadline(key)
        if answered is not None and answered > now:
            self.counters["grafts_unanswered"] += 1
            return []
        self.answered.set(key, None, now)
        self.counters["payloads_sent"] += 1
        return [HvSend(sender, self._repair(cached))]

    def _repair(self, cached: MGossip) -> MGossip:
        """A cached batch one hop on, marked as a repair (a duplicate of it prunes nothing)."""
        return MGossip(self.swarm, cached.topic, cached.publisher, cached.epoch, cached.seq, cached.payloads,
                       cached.hops + 1, cached.sig, cached.cert, r=True)

    def _pushes_payload(self, sender: NodeId, publisher: bytes) -> bool:
        """Whether a new batch of ``publisher`` from ``sender`` goes on as a payload (to a
        neighbour eager for ``publisher``; see :meth:`_push`)."""
        lazy = self.trees.peek(publisher)  # not marking the tree used: the receive path does that
        return any(p != sender and (lazy is None or p not in lazy) for p in (*self.eager.keys(), *self.lazy.keys()))

    def _check_deferred(self, mid: bytes, cached: MGossip, now: float) -> bool:
        """Check the origin signature of cached batch ``mid`` that was kept unchecked; a batch that
        fails is dropped and its publisher (who sent it) penalised."""
        del self.caches.unchecked[mid]
        assert self.auth is not None  # only kept unchecked with an auth
        digest = batch_digest(cached.publisher, cached.epoch, cached.seq, cached.topic, cached.payloads)
        if self.auth.verify_gossip(NodeId(cached.publisher), cached, digest, now):
            return True
        self.counters["rejected"] += 1
        self.caches.drop(mid)
        return False

    def _on_gone(self, sender: NodeId, msg: MGone, now: float) -> None:
        """``sender`` no longer has the payload: stop asking it; give up when nobody is left."""
        entry = self.missing.get(msg.id)
        if entry is None:
            return
        rest = tuple(e for e in entry if e[0] != sender)
        if rest:
            deadline = self.missing.deadline(msg.id) or now
            self.missing.set(msg.id, rest, now, max(deadline - now, 0.001))
            return
        self.missing.pop(msg.id)
        self.graft_timers.pop(msg.id)
        self.graft_tries.pop(msg.id)
        self.counters["grafts_abandoned"] += 1

    # -- timers ----------------------------------------------------------------------------------

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever :meth:`timer_deadline`, :meth:`reannounce_deadline` or the idle
        work (:meth:`idle_timer`: ``received_from``'s expiry, ``trees`` beyond ``tree_used``) may
        change (an owner caching them)."""
        self._watch = w
        for c in (self.graft_timers, self.missing, self.graft_tries, self.tree_used, self.answered,
                  self.received_from, self.trees, self.left):
            c.watch(w)

    @property
    def ihave_deadline(self) -> float | None:
        """When the queued IHAVEs go out (``None``: none queued)."""
        return self._ihave_deadline

    @ihave_deadline.setter
    def ihave_deadline(self, t: float | None) -> None:
        self._ihave_deadline = t
        self._watch.dirty = True

    def handle_timer(self, now: float) -> list[HvSend]:
        """Send due GRAFTs, flush IHAVE batches, re-announce, expire."""
        out: list[HvSend] = []
        for publisher, _ in self.tree_used.expire(now):
            self.trees.pop(publisher)
        self._drop_idle_trees()
        for mid, _ in self.graft_timers.expire(now):
            if mid in self.caches.seen:
                self.missing.pop(mid)
                self.graft_tries.pop(mid)
                continue
            entry = self.missing.get(mid)
            if entry is None:
                continue
            live = [e for e in entry if self._is_neighbour(e[0])]
            tries = (self.graft_tries.get(mid) or 0) + 1
            if not live or tries > params.MAX_GRAFTS_PER_ID:
                # nobody left to ask, or asked often enough (an announcer may have evicted the
                # payload): give up instead of re-grafting until the entry's TTL
                self.missing.pop(mid)
                self.graft_tries.pop(mid)
                self.counters["grafts_abandoned"] += 1
                continue
            if tries == 1:  # the first GRAFT: the nearest announcer, not the first (#14)
                live.sort(key=lambda e: e[1])
            peer, hops = live[0]
            deadline = self.missing.deadline(mid)
            ttl = max((deadline or now) - now, 0.001)
            self.missing.set(mid, (*live[1:], (peer, hops)), now, ttl)  # rotate through the announcers
            self.graft_tries.set(mid, tries, now, ttl)
            self.lazy.pop(peer)
            self.eager.set(peer, None)
            self.counters["grafts_sent"] += 1
            out.append(HvSend(peer, MGraft(self.swarm, mid)))
            # back off: 40 ms, 80 ms, ... up to 1 s, so that replies slowed by load are not
            # answered with ever more GRAFTs (congestion collapse)
            backoff = min(self.config.graft_timeout_2 * 2.0 ** (tries - 1), params.MAX_GRAFT_INTERVAL)
            self.graft_timers.set(mid, None, now, backoff)
        if self.reannounce and now >= self.next_reannounce and self.reannounce.peekleft()[0] <= now:
            self.next_reannounce = now + REANNOUNCE_DELAY / 2
            self._watch.dirty = True
            while self.reannounce and self.reannounce.peekleft()[0] <= now:
                due, mid, origin = self.reannounce.popleft()
                cached = self.caches.payloads.get(mid)
                if cached is None:
                    continue
                arrived_at = due - REANNOUNCE_DELAY
                for p in (*self.eager.keys(), *self.lazy.keys()):
                    if p != origin and (self.since.peek(p) or 0.0) <= arrived_at:
                        self._queue_ihave(p, mid, cached.hops + 1, now)
        if self.ihave_deadline is not None and now >= self.ihave_deadline:
            out += self._flush_ihaves()
        self.missing.expire(now)
        self.graft_tries.expire(now)
        self.answered.expire(now)
        self.received_from.expire(now)
        self.left.expire(now)
        return out

    def idle_timer(self, now: float) -> None:
        """:meth:`handle_timer` at a time before :meth:`next_deadline` (nothing due): the two steps
        of it that run whether due or not, dropping trees of idle publishers and expiring ids of
        the optimisation window (``received_from`` keeps no timer of its own)."""
        self._drop_idle_trees()
        self.received_from.expire(now)

    def _drop_idle_trees(self) -> None:
        if len(self.trees) > len(self.tree_used):  # trees made by a PRUNE/IHAVE for an idle publisher
            for publisher in [p for p in self.trees.keys() if p not in self.tree_used]:
                self.trees.pop(publisher)

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` has work."""
        best = self.timer_deadline()
        d = self.reannounce_deadline()
        if d is not None and (best is None or d < best):
            best = d
        return best

    def reannounce_deadline(self) -> float | None:
        """When the queued re-announcements are due (``None``: none queued); not watched."""
        if not self.reannounce:
            return None
        return max(self.reannounce.peekleft()[0], self.next_reannounce)

    def timer_deadline(self) -> float | None:
        """:meth:`next_deadline` without the re-announcements (what :meth:`watch` covers)."""
        best = self.graft_timers.next_deadline()
        ihave = self._ihave_deadline
        if ihave is not None and (best is None or ihave < best):
            best = ihave
        for d in (self.missing.next_deadline(), self.graft_tries.next_deadline(), self.tree_used.next_deadline(),
                  self.answered.next_deadline(), self.left.next_deadline()):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def close(self) -> None:
        """Release every per-swarm container."""
        for c in (self.eager, self.lazy, self.since, self.left, self.missing, self.graft_timers, self.graft_tries,
                  self.ihave_queue, self.reannounce, self.received_from, self.trees, self.tree_used, self.answered,
                  self.pulls):
            c.close()
        self.ihave_deadline = None

    def state_size(self) -> int:
        """Entries held (for tests and /health)."""
        return (len(self.eager) + len(self.lazy) + len(self.missing) + len(self.graft_timers)
                + len(self.graft_tries) + len(self.ihave_queue) + len(self.reannounce) + len(self.received_from)
                + len(self.pulls)
                + len(self.trees) + len(self.tree_used) + len(self.answered) + len(self.left))

    # -- internals -------------------------------------------------------------------------------

    def _arrived(self, msg: MGossip) -> Arrived:
        return Arrived(self.swarm, msg.topic, NodeId(msg.publisher), msg.epoch, msg.seq, msg.payloads, msg.hops)

    def _push(self, mid: bytes, msg: MGossip, sender: NodeId | None, now: float, *,
              forward: bool = False) -> list[HvSend]:
        """``msg`` to the eager neighbours, announced to the lazy; ``forward``: received, one hop on."""
        out: list[HvSend] = []
        hops = msg.hops + 1 if forward else msg.hops
        fwd: MGossip | None = None if forward else msg
        lazy = self._lazy_for(msg.publisher)
        if not self.tree_used.touch(msg.publisher, now):  # #14: renewed once a second, not per batch
            self.tree_used.set(msg.publisher, self._next_refresh(msg.publisher, now), now)
        for p in (*self.eager.keys(), *self.lazy.keys()):
            if p == sender:
                continue
            if p in lazy:
                self._queue_ihave(p, mid, hops, now)
            else:
                if fwd is None:  # #14: the copy one hop on is made only when a neighbour takes it
                    fwd = MGossip(self.swarm, msg.topic, msg.publisher, msg.epoch, msg.seq, msg.payloads, hops,
                                  msg.sig, msg.cert)
                out.append(HvSend(p, fwd))
        self.counters["payloads_sent"] += len(out)
        queue = self.reannounce
        n = len(queue)
        queue.append((now + REANNOUNCE_DELAY, mid, sender))
        if n == 0 or n >= queue.capacity:  # the head is new (or the full queue let its oldest go):
            self._watch.dirty = True  # the re-announcement deadline reads it
        return out

    def _queue_ihave(self, peer: NodeId, mid: bytes, hops: int, now: float) -> None:
        self.ihave_queue.append((peer, mid, hops))
        if self.ihave_deadline is None:
            self.ihave_deadline = now + self.config.ihave_batch_interval

    def _flush_ihaves(self) -> list[HvSend]:
        self.ihave_deadline = None
        out = [HvSend(p, m) for p, m in self.pulls.drain() if self._is_neighbour(p)]
        batches: dict[NodeId, tuple[list[bytes], list[int]]] = {}
        for peer, mid, hops in self.ihave_queue.drain():
            if self._is_neighbour(peer):
                ids, hl = batches.setdefault(peer, ([], []))
                ids.append(mid)
                hl.append(hops)
        for peer, (ids, hl) in batches.items():
            for i in range(0, len(ids), MAX_IHAVE_IDS):
                self.counters["ihaves_sent"] += 1
                out.append(HvSend(peer, MIHave(self.swarm, ids[i:i + MAX_IHAVE_IDS], hl[i:i + MAX_IHAVE_IDS])))
        return out

