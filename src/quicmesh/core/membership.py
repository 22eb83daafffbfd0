"""HyParView membership (Leitão, Pereira, Rodrigues, 2007), one instance per overlay.

Theory of operation
-------------------
A node keeps a small *active view* (default 5) of peers it holds links to and a larger *passive
view* (default 30) of peers it knows but is not linked to. The same class runs the realm-wide
overlay (``swarm == ""``) and every topic swarm overlay (``swarm == <key>``); the two differ only in
how they find their first contact (bootstrap for the realm, discovery walks for swarms, both
driven by :class:`~quicmesh.core.mesh.Mesh`).

* **Join.** ``join_via(contact)`` sends JOIN. The contact takes the joiner into its active view
  (evicting a random active peer, which it tells with LEAVE(alive) and moves to its passive
  view), answers NEIGHBOR_REPLY(ok) and sends FORWARDJOIN(ttl=ARWL) to its other active peers.
  A FORWARDJOIN walks at random; at ``ttl == PRWL`` the node also puts the joiner in its passive
  view; at ``ttl == 0`` (or at a node with at most one active peer) the node adds the joiner to its
  active view and sends it NEIGHBOR(high), which must be accepted. The codec refuses a ``ttl``
  below 0 or above ``MAX_WALK_TTL`` and the receiver clamps it to its own ARWL, so a hostile
  FORWARDJOIN can do no more than the last hop of a legitimate walk (the joiner is dialled at the
  addresses the book holds for it, its own claims first: see the address book).
* **Failure and promotion.** The transport reports failures (``peer_failed``: a connection lost or
  a dial failed). The peer leaves both views and its pending request is dropped; the node then
  sends NEIGHBOR to random passive peers until the active view is full again, ``high`` while it
  holds no active peer, or one after a request of low priority was refused (the paper: none; two
  survivors linked only to each other were otherwise refused by every full view they knew). A
  request unanswered within ``neighbor_request_timeout`` (500 ms) removes that candidate from the
  passive view; a refusal keeps it. Refill is also retried every ``REPAIR_INTERVAL`` seconds while
  the active view is not full.
* **Top-up.** ``request_link(peer)`` sends NEIGHBOR to a peer outside both views (the realm
  asks its bootstrap contacts when its view is thin, see :mod:`~quicmesh.core.discovery`).
* **Shuffle.** Every ``shuffle_interval`` (60 s, jittered) the node sends a SHUFFLE with itself, 3
  active and 4 passive peers on a 6-hop random walk; the end node answers with as many passive
  peers straight to the origin; both merge what they got into their passive views, evicting
  first the entries they just sent, then random ones.
* **View consistency.** Active views must be symmetric, but a lost or raced message can leave
  A holding B while B does not hold A (B then sends A nothing). Every ``VIEW_SYNC_INTERVAL``
  (10 s) each node sends NEIGHBOR_REPLY(ok) to its active peers; a receiver that does not hold
  the sender (and was not waiting for it) answers LEAVE(alive), and the sender drops the link
  and refills its view.
* **Partition healing.** HyParView alone never re-links two halves of a healed partition whose
  active views refilled on each side. An active peer lost through a *connection failure* is kept
  in a small ``lost`` map (10 entries, 10 min); every ``RECONNECT_INTERVAL`` (5 s) one of them is
  sent NEIGHBOR(high), which must be accepted: once the cut heals, the old links come back.

All state is bounded: the active and passive views are :class:`~quicmesh.bounded.LruMap`\\ s capped
at their sizes, pending requests a :class:`~quicmesh.bounded.TtlMap`. Addresses live in the shared
:class:`~quicmesh.core.addressbook.AddressBook`, never here. Handlers return a list of
:data:`HvOut` values (messages to send, neighbour up/down notices) that the mesh facade routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from random import Random

from ..bounded import ContainerRegistry, LruMap, TtlMap, Watch
from ..config import MembershipConfig
from ..errors import InvalidNodeId
from ..identity import NodeId
from .addressbook import AddressBook
from .mesh_messages import (
    MAX_WALK_TTL,
    MForwardJoin,
    MJoin,
    MLeave,
    MNeighbor,
    MNeighborReply,
    MShuffle,
    MShuffleReply,
    PeerInfo,
    SelfRecord,
)
from .wire import Message

__all__ = ["REPAIR_INTERVAL", "HvOut", "HvSend", "HyParView", "NeighborDown", "NeighborUp", "peer_id"]

LOST_TTL = 600.0
"""Seconds an active peer lost by a connection failure is remembered for reconnection."""

RECONNECT_INTERVAL = 5.0
"""Seconds between reconnection attempts to one lost active peer."""

VIEW_SYNC_INTERVAL = 10.0
"""Seconds between view-consistency heartbeats to every active peer."""

REPAIR_INTERVAL = 2.0
"""Seconds between attempts to refill a non-full active view from the passive view."""

MAX_SHUFFLE_PEERS = 16
"""Peers accepted from one SHUFFLE or SHUFFLE_REPLY; more are ignored."""


@dataclass(frozen=True, slots=True)
class HvSend:
    """Send ``message`` to ``peer`` (the facade dials when needed)."""

    peer: NodeId
    message: Message


@dataclass(frozen=True, slots=True)
class NeighborUp:
    """``peer`` entered the active view."""

    peer: NodeId


@dataclass(frozen=True, slots=True)
class NeighborDown:
    """``peer`` left the active view."""

    peer: NodeId


HvOut = HvSend | NeighborUp | NeighborDown


def peer_id(raw: bytes) -> NodeId | None:
    """A NodeId from wire bytes, or ``None`` when malformed."""
    try:
        return NodeId(raw)
    except (InvalidNodeId, TypeError):
        return None


class HyParView:
    """One HyParView overlay (realm or swarm). See the module docstring."""

    def __init__(
        self,
        me: NodeId,
        addresses: tuple[str, ...],
        swarm: str,
        config: MembershipConfig,
        book: AddressBook,
        rng: Random,
        registry: ContainerRegistry,
        *,
        prefix: str = "membership",
        now: float = 0.0,
    ) -> None:
        self.me = me
        self.addresses = addresses
        self.swarm = swarm
        self.config = config
        self.book = book
        self.rng = rng
        self.active: LruMap[NodeId, None] = LruMap(f"{prefix}.active", config.active_view, registry=registry)
        self.passive: LruMap[NodeId, None] = LruMap(f"{prefix}.passive", config.passive_view, registry=registry)
        cap = config.active_view + config.passive_view
        self.pending: TtlMap[NodeId, bool] = TtlMap(
            f"{prefix}.pending", cap, config.neighbor_request_timeout, registry=registry
        )
        self.lost: TtlMap[NodeId, None] = TtlMap(f"{prefix}.lost", 2 * config.active_view, config.lost_ttl,
                                                  registry=registry)
        self._watch = Watch()
        self._next_shuffle = now + config.shuffle_interval * (0.5 + rng.random())
        self._next_reconnect = now + RECONNECT_INTERVAL
        self._next_sync = now + VIEW_SYNC_INTERVAL * (0.5 + rng.random())
        self._next_repair = now + REPAIR_INTERVAL
        self.counters = {  # bounded: fixed keys
            "joins": 0, "promotions": 0, "shuffles": 0, "failures": 0, "reconnects": 0,
        }
        self._refused = False
        """A NEIGHBOR request was refused while at most one peer was active (see :meth:`_urgent`)."""

    # -- timer fields: setting one marks the deadline watch (see :meth:`watch`) ------------------

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever :meth:`next_deadline` may change (an owner caching it,
        :class:`~quicmesh.core.mesh.Mesh`)."""
        self._watch = w
        self.pending.watch(w)
        self.lost.watch(w)  # its expiry is one of the deadlines (handle_timer)

    @property
    def next_shuffle(self) -> float:
        """When the next shuffle is due."""
        return self._next_shuffle

    @next_shuffle.setter
    def next_shuffle(self, t: float) -> None:
        self._next_shuffle = t
        self._watch.dirty = True

    @property
    def next_reconnect(self) -> float:
        """When the next reconnect round is due."""
        return self._next_reconnect

    @next_reconnect.setter
    def next_reconnect(self, t: float) -> None:
        self._next_reconnect = t
        self._watch.dirty = True

    @property
    def next_sync(self) -> float:
        """When the next view sync is due."""
        return self._next_sync

    @next_sync.setter
    def next_sync(self, t: float) -> None:
        self._next_sync = t
        self._watch.dirty = True

    @property
    def next_repair(self) -> float:
        """When the next repair round is due."""
        return self._next_repair

    @next_repair.setter
    def next_repair(self, t: float) -> None:
        self._next_repair = t
        self._watch.dirty = True

    # -- queries ---------------------------------------------------------------------------------

    def active_peers(self) -> list[NodeId]:
        """The active view (a copy)."""
        return list(self.active.keys())

    def passive_peers(self) -> list[NodeId]:
        """The passive view (a copy)."""
        return list(self.passive.keys())

    def is_active(self, peer: NodeId) -> bool:
        return peer in self.active

    def knows(self, peer: NodeId) -> bool:
        """Whether ``peer`` is in a view or has a request pending (the facade keeps its link)."""
        return peer in self.active or peer in self.pending

    # -- commands --------------------------------------------------------------------------------

    def join_via(self, contact: NodeId, now: float) -> list[HvOut]:
        """Send JOIN to ``contact``; its reply puts it in our active view."""
        if contact == self.me or contact in self.active or contact in self.pending:
            return []
        self.counters["joins"] += 1
        self.pending.set(contact, True, now, self.config.join_timeout)
        return [HvSend(contact, MJoin(self.swarm, list(self.addresses), self.book.own_record))]

    def request_link(self, peer: NodeId, now: float) -> list[HvOut]:
        """Send NEIGHBOR to ``peer`` (``high`` as :meth:`_fill` would ask), waiting
        ``join_timeout`` for the answer as it may need a dial: a thin view's top-up."""
        if peer == self.me or peer in self.active or peer in self.pending:
            return []
        self.pending.set(peer, False, now, self.config.join_timeout)
        return [HvSend(peer, MNeighbor(self.swarm, self._urgent(), list(self.addresses)))]

    def add_candidate(self, peer: NodeId) -> None:
        """Remember ``peer`` in the passive view (e.g. found by discovery)."""
        self._add_passive(peer)

    def leave(self) -> list[HvOut]:
        """Leave the overlay: LEAVE(alive=False) to every active peer, then drop all state."""
        out: list[HvOut] = []
        for p in self.active_peers():
            out.append(HvSend(p, MLeave(self.swarm, False)))
            out.append(NeighborDown(p))
        self.close()
        return out

    def close(self) -> None:
        """Release every container (the instance must not be used afterwards)."""
        self.active.close()
        self.passive.close()
        self.pending.close()
        self.lost.close()

    def peer_failed(self, peer: NodeId, now: float, *, lost: bool = False) -> list[HvOut]:
        """The connection to ``peer`` was lost (``lost=True``) or could not be made: forget it and
        refill. An *active* peer whose connection was lost is remembered in ``lost`` and re-tried
        (see the module docstring: partition healing)."""
        out: list[HvOut] = []
        known = peer in self.active or peer in self.passive or peer in self.pending
        if peer in self.active:
            self.active.pop(peer)
            out.append(NeighborDown(peer))
            if lost:
                self.lost.set(peer, None, now)
        self.passive.pop(peer)
        self.pending.pop(peer)
        if known:
            self.counters["failures"] += 1
            out += self._fill(now)
        return out

    def forget(self, peer: NodeId) -> list[HvOut]:
        """Remove ``peer`` from every view (API removal); an active peer is told LEAVE."""
        out: list[HvOut] = []
        if peer in self.active:
            self.active.pop(peer)
            out.append(HvSend(peer, MLeave(self.swarm, False)))
            out.append(NeighborDown(peer))
        self.passive.pop(peer)
        self.pending.pop(peer)
        return out

    # -- messages --------------------------------------------------------------------------------

    def handle(self, sender: NodeId, msg: Message, now: float) -> list[HvOut]:
        """Process one membership message from ``sender``."""
        if isinstance(msg, MJoin):
            return self._on_join(sender, msg, now)
        if isinstance(msg, MForwardJoin):
            return self._on_forward_join(sender, msg, now)
        if isinstance(msg, MNeighbor):
            return self._on_neighbor(sender, msg, now)
        if isinstance(msg, MNeighborReply):
            return self._on_neighbor_reply(sender, msg, now)
        if isinstance(msg, MLeave):
            return self._on_leave(sender, msg, now)
        if isinstance(msg, MShuffle):
            return self._on_shuffle(sender, msg, now)
        if isinstance(msg, MShuffleReply):
            self._merge(self._peers_from(msg.peers, now, sender), [])
            return []
        return []

    def _on_join(self, sender: NodeId, msg: MJoin, now: float) -> list[HvOut]:
        self.book.add(sender, msg.addrs, now, own=True)
        if msg.rec is not None:  # #13: kept to relay in the FORWARDJOIN walks
            self.book.add_record(msg.rec, now, subject=sender)
        out = self._add_active(sender, now)
        out.append(HvSend(sender, MNeighborReply(self.swarm, True)))
        addrs = list(self.book.addresses(sender))
        for p in self.active_peers():
            if p != sender:
                out.append(HvSend(p, MForwardJoin(self.swarm, sender.raw, addrs, self._walk_ttl,
                                                  self.book.record(sender))))
        return out

    def _on_forward_join(self, sender: NodeId, msg: MForwardJoin, now: float) -> list[HvOut]:
        joiner = peer_id(msg.peer)
        if joiner is None or joiner == self.me:
            return []
        self._learn(joiner, msg.addrs, msg.rec, sender, now)
        if joiner in self.active:
            return []
        ttl = max(0, min(msg.ttl, self._walk_ttl))  # the codec refuses ttl < 0; clamp anyway
        if ttl == 0 or len(self.active) <= 1:
            return self._invite(joiner, now)
        if ttl == self.config.passive_random_walk:
            self._add_passive(joiner)
        nxt = self._random_active(exclude=(sender, joiner))
        if nxt is None:
            return self._invite(joiner, now)
        return [HvSend(nxt, MForwardJoin(self.swarm, msg.peer, list(self.book.addresses(joiner)), ttl - 1,
                                         self.book.record(joiner)))]

    @property
    def _walk_ttl(self) -> int:
        """The FORWARDJOIN walk length: ARWL, at most what receivers accept."""
        return min(self.config.active_random_walk, MAX_WALK_TTL)

    def _invite(self, joiner: NodeId, now: float) -> list[HvOut]:
        """The end of a FORWARDJOIN walk: the joiner enters the active view and is sent
        NEIGHBOR(high)."""
        out = self._add_active(joiner, now)
        out.append(HvSend(joiner, MNeighbor(self.swarm, True, list(self.addresses))))
        return out

    def _on_neighbor(self, sender: NodeId, msg: MNeighbor, now: float) -> list[HvOut]:
        self.book.add(sender, msg.addrs, now, own=True)
        if sender in self.active:
            return [HvSend(sender, MNeighborReply(self.swarm, True))]
        if msg.high or len(self.active) < self.config.active_view:
            out = self._add_active(sender, now)
            out.append(HvSend(sender, MNeighborReply(self.swarm, True)))
            return out
        self._add_passive(sender)
        return [HvSend(sender, MNeighborReply(self.swarm, False))]

    def _on_neighbor_reply(self, sender: NodeId, msg: MNeighborReply, now: float) -> list[HvOut]:
        was_pending = self.pending.pop(sender) is not None
        if msg.ok:
            self.lost.pop(sender)
            if sender in self.active:
                return []
            if not was_pending:
                # an answer we no longer wait for: tell the peer we do not hold it
                return [HvSend(sender, MLeave(self.swarm, True))]
            self.counters["promotions"] += 1
            return self._add_active(sender, now)
        self._add_passive(sender)
        self._refused = len(self.active) <= 1
        return []

    def _on_leave(self, sender: NodeId, msg: MLeave, now: float) -> list[HvOut]:
        out: list[HvOut] = []
        self.pending.pop(sender)
        if sender in self.active:
            self.active.pop(sender)
            out.append(NeighborDown(sender))
        if msg.alive:
            self._add_passive(sender)
        else:
            self.passive.pop(sender)
        out += self._fill(now)
        return out

    def _on_shuffle(self, sender: NodeId, msg: MShuffle, now: float) -> list[HvOut]:
        origin = peer_id(msg.origin)
        if origin is None or origin == self.me:
            return []
        self._learn(origin, msg.addrs, msg.rec, sender, now)
        ttl = max(0, min(msg.ttl, self.config.shuffle_random_walk, MAX_WALK_TTL))
        if ttl > 0 and len(self.active) > 1:
            nxt = self._random_active(exclude=(sender, origin))
            if nxt is not None:
                return [HvSend(nxt, MShuffle(self.swarm, msg.origin, list(msg.addrs), ttl - 1, msg.peers,
                                             msg.rec))]
        received = self._peers_from(msg.peers[:MAX_SHUFFLE_PEERS], now, sender)
        sample = self._sample(self.passive_peers(), len(received))
        reply = MShuffleReply(self.swarm, [self.info(p) for p in sample])
        self._merge(received, sample)
        self._add_passive(origin)
        return [HvSend(origin, reply)]

    # -- timers ----------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> list[HvOut]:
        """Expire neighbour requests, shuffle and refill when due."""
        out: list[HvOut] = []
        self.lost.expire(now)  # at its own deadline (below), not only at the next reconnect round
        expired = self.pending.expire(now)
        for peer, _ in expired:
            # unanswered: treat the candidate as unreachable
            self.passive.pop(peer)
        if expired:
            out += self._fill(now)
        if now >= self.next_shuffle:
            self.next_shuffle = now + self.config.shuffle_interval * (0.75 + 0.5 * self.rng.random())
            out += self._shuffle(now)
        if now >= self.next_reconnect:
            self.next_reconnect = now + RECONNECT_INTERVAL * (0.75 + 0.5 * self.rng.random())
            out += self._reconnect(now)
        if now >= self.next_sync:
            self.next_sync = now + VIEW_SYNC_INTERVAL * (0.75 + 0.5 * self.rng.random())
            out += [HvSend(p, MNeighborReply(self.swarm, True)) for p in self.active.keys()]
        if now >= self.next_repair:
            self.next_repair = now + REPAIR_INTERVAL
            out += self._fill(now)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` has work."""
        d = min(self._next_shuffle, self._next_repair, self._next_reconnect, self._next_sync)
        for t in (self.pending.next_deadline(), self.lost.next_deadline()):
            if t is not None and t < d:
                d = t
        return d

    # -- internals -------------------------------------------------------------------------------

    def _random_active(self, exclude: Iterable[NodeId] = ()) -> NodeId | None:
        ex = set(exclude)
        cands = [p for p in self.active.keys() if p not in ex]
        return self.rng.choice(cands) if cands else None

    def _sample(self, peers: list[NodeId], k: int) -> list[NodeId]:
        return self.rng.sample(peers, min(k, len(peers)))

    def _add_active(self, peer: NodeId, now: float) -> list[HvOut]:
        if peer == self.me or peer in self.active:
            return []
        out: list[HvOut] = []
        self.pending.pop(peer)
        self.passive.pop(peer)
        while len(self.active) >= self.config.active_view:
            victim = self._random_active(exclude=(peer,))
            if victim is None:
                break
            self.active.pop(victim)
            out.append(HvSend(victim, MLeave(self.swarm, True)))
            out.append(NeighborDown(victim))
            self._add_passive(victim)
        self.active.set(peer, None)
        if len(self.active) > 1:
            self._refused = False  # out of the one-peer state: a later one starts low again
        out.append(NeighborUp(peer))
        return out

    def _add_passive(self, peer: NodeId) -> None:
        if peer == self.me or peer in self.active or peer in self.passive:
            return
        if not self.book.addresses(peer):
            return  # unreachable: no address known
        if len(self.passive) >= self.config.passive_view:
            keys = list(self.passive.keys())
            self.passive.pop(keys[self.rng.randrange(len(keys))])
        self.passive.set(peer, None)

    def _fill(self, now: float) -> list[HvOut]:
        out: list[HvOut] = []
        want = self.config.active_view - len(self.active) - len(self.pending)
        if want <= 0:
            return out
        cands = [p for p in self.passive.keys() if p not in self.pending]
        for p in self._sample(cands, want):
            high = self._urgent()
            self.pending.set(p, False, now)
            out.append(HvSend(p, MNeighbor(self.swarm, high, list(self.addresses))))
        return out

    def _urgent(self) -> bool:
        """Whether this node's NEIGHBOR requests are ``high`` (must be accepted): while its active
        view is empty (the paper), and while it holds one active peer once a request of low
        priority was refused. Two survivors of a massive failure linked only to each other were
        otherwise refused by every full view for as long as their passive candidates were full
        nodes: an island of two for 20 s (simulator, 150 nodes, 80 % failed, seed 18). Asking
        high only after a refusal spares full views the evictions when others would accept."""
        n = len(self.active)
        return n == 0 or (n == 1 and self._refused)

    def _reconnect(self, now: float) -> list[HvOut]:  # lost expired by handle_timer just before
        cands = [p for p in self.lost.keys() if p not in self.active and p not in self.pending]
        if not cands:
            return []
        p = self.rng.choice(cands)
        if not self.book.addresses(p):
            self.lost.pop(p)
            return []
        self.counters["reconnects"] += 1
        self.pending.set(p, False, now)
        return [HvSend(p, MNeighbor(self.swarm, True, list(self.addresses)))]

    def _shuffle(self, now: float) -> list[HvOut]:
        target = self._random_active()
        if target is None:
            return []
        self.counters["shuffles"] += 1
        act = self._sample([p for p in self.active.keys() if p != target], self.config.shuffle_active)
        pas = self._sample(self.passive_peers(), self.config.shuffle_passive)
        peers = [self.info(p) for p in (*act, *pas)]
        walk = min(self.config.shuffle_random_walk, MAX_WALK_TTL)
        msg = MShuffle(self.swarm, self.me.raw, list(self.addresses), walk, peers[:MAX_SHUFFLE_PEERS],
                       self.book.own_record)
        return [HvSend(target, msg)]

    def _peers_from(self, infos: list[PeerInfo], now: float, sender: NodeId | None = None) -> list[NodeId]:
        out: list[NodeId] = []
        for info in infos[:MAX_SHUFFLE_PEERS]:
            p = peer_id(info.id)
            if p is None or p == self.me:
                continue
            self._learn(p, info.addrs, info.rec, sender, now)
            out.append(p)
        return out

    def info(self, p: NodeId) -> PeerInfo:
        """What this node tells others about ``p``: the addresses it holds, and ``p``'s signed record."""
        return PeerInfo(p.raw, list(self.book.addresses(p)), self.book.record(p))

    def _learn(self, p: NodeId, addrs: list[str], rec: SelfRecord | None, sender: NodeId | None, now: float) -> None:
        """#13: ``p``'s signed record when it verifies (its own word), else the message's claim."""
        if rec is None or not self.book.add_record(rec, now, subject=p):
            self.book.add(p, addrs, now, own=p == sender)

    def _merge(self, received: list[NodeId], sent: list[NodeId]) -> None:
        sent_left = [p for p in sent if p in self.passive]
        for p in received:
            if p == self.me or p in self.active or p in self.passive:
                continue
            if len(self.passive) >= self.config.passive_view and sent_left:
                self.passive.pop(sent_left.pop())
            self._add_passive(p)
