"""Finding peers: joining the realm through bootstrap contacts, and swarm members by walks.

Theory of operation
-------------------
:class:`Discovery` is one part of :class:`~quicmesh.core.mesh.Mesh` (which owns one and is the
only caller). It sends nothing itself: messages go out through the ``send`` and ``route``
callables the mesh gives it (which dial when needed), and it reads the realm overlay, the
address book and the joined swarms without changing their membership except through their own
``join_via`` / ``add_candidate``.

**Realm join.** ``join(bootstrap)`` remembers up to :data:`MAX_BOOTSTRAP` contacts. While the
realm active view is empty, a JOIN goes to one contact (round robin; the first attempt goes to
every contact, so overlays started apart merge), by id, or for a contact whose id is unknown by
:class:`~quicmesh.core.effects.DialAddress` (``addr_dials``, one per address set, forgotten after
``DIAL_TIMEOUT``; :meth:`address_answered` turns the answering connection into a JOIN). The next
attempt comes ``join_timeout * 2**attempt`` seconds later, capped at ``join_backoff_max``,
jittered by +-25 %, never sooner than ``join_timeout / 2``; it never gives up.

**Thin view top-up.** A node linked to some peers but knowing no others (active view not full,
passive view empty) has nothing to refill from: shuffles only bring what other passive views
hold, which in a small realm is nothing, and a NATed node cannot be invited by a peer it never
reached. So while the view is thin, a bootstrap contact the node is not linked to is asked
for a link (NEIGHBOR, low priority: a full contact refuses and both keep each other passive,
ending the thin state), one contact at a time, round robin, first ``join_timeout`` after the
view became thin, then on the same backoff as joins, kept across thin spells until the active
view was full once (``top_ups`` counts them). A contact with one of this node's own
addresses is never asked, nor one whose address a linked peer answered (a name such as
``bootstrap:4433`` that the peer does not announce). A contact
known only by address is dialled, and its answer becomes that request (a JOIN while the active
view is empty).

**Replenishing an empty passive view.** After a massive failure a node can lose its whole
realm view: its active peers died, and every passive peer it then asked was dead too and left
the view, so HyParView has nothing to refill from, and the bootstrap contacts may be dead as
well. What the node still has is its swarms' active views (linked peers, so alive; every swarm
member is a realm member) and the peers it is connected to. So at each of the realm's repairs
(every ``REPAIR_INTERVAL``) while its view is not full and its passive view empty, up to
``active_view`` peers from those swarm views become passive candidates, which the repair then
asks (``replenished`` counts them); when the swarm views hold none, connected peers whose
addresses the book holds, on the join backoff (one may not be a member that answers). An
unanswered candidate leaves the view as any passive peer does. Nothing here dials: every
candidate is linked or connected already, so addresses others told the node (walk origins,
shuffles) never make it dial more.

**Swarm members.** To find members of a swarm, :meth:`discover` sends walks (``MFind``, ARWL hops)
over the realm overlay to up to :data:`FIND_FANOUT` realm neighbours. A node on the walk that is a
member answers the origin with itself and some of its swarm neighbours (``MFound``) and ends the
walk; a non-member answers with members it remembers (*hints*) and remembers the origin as a
member, then forwards the walk. Hints are realm-level routing state (``hints``: :data:`HINT_SWARMS`
swarms x :data:`HINT_PEERS` peers, each expiring after ``membership.hint_ttl``). Found members are joined
through the swarm's own HyParView: with JOIN while its active view is empty, else asked for a link
(NEIGHBOR, low priority; a full view refuses and keeps the asker passive). A JOIN forces the contact
and the ends of its walks to take the joiner in, each evicting a neighbour that then refills its
view: from a member that only lost a neighbour it started a cascade (#14: in the 1,000-node
broadcast 140 swarm links were dropped from 5 s before publishing to its end, each re-grafting
part of a tree; with links asked for, none after the joins settled). Walks are repeated while
the swarm's active view is not full: after 1 s, doubling to 30 s while it is empty; every 30 s
while partly full; every 120 s when full.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from random import Random

from ..bounded import ContainerRegistry, LruMap, TtlMap, Watch
from ..config import NodeConfig
from ..identity import NodeId
from .addressbook import AddressBook, normalize_addresses
from .connections import DIAL_TIMEOUT
from .effects import DialAddress, Effect
from .membership import HvOut, HyParView, peer_id
from .mesh_messages import MAX_WALK_TTL, MFind, MFound, PeerInfo
from .swarm import Swarm
from .wire import Message

__all__ = ["FIND_FANOUT", "FOUND_PEERS", "HINT_PEERS", "HINT_SWARMS", "HINT_TTL", "MAX_BOOTSTRAP", "Discovery"]

MAX_BOOTSTRAP = 64
"""Bootstrap contacts remembered."""
FIND_FANOUT = 3
"""Discovery walks started per round."""
HINT_SWARMS = 1024
"""Swarms for which member hints are remembered."""
HINT_PEERS = 8
"""Member hints remembered per swarm."""
HINT_TTL = 300.0
"""Seconds a member hint is kept by default (``membership.hint_ttl``)."""
FOUND_PEERS = 4
"""Peers sent in one MFound."""

Contact = tuple[NodeId | None, tuple[str, ...]]
SendFn = Callable[[NodeId, Message, float], list[Effect]]
RouteFn = Callable[[str, Sequence[HvOut], float], list[Effect]]


class Discovery:
    """Realm join with backoff, address dials, member hints and swarm discovery walks.

    ``send(peer, message, now)`` and ``route(swarm, overlay_outputs, now)`` are the mesh's ways
    out; ``counters`` is its counter dict (``join_attempts``, ``top_ups``).
    """

    def __init__(
        self,
        me: NodeId,
        config: NodeConfig,
        book: AddressBook,
        realm: HyParView,
        swarms: LruMap[str, Swarm],
        rng: Random,
        registry: ContainerRegistry,
        counters: dict[str, int],
        send: SendFn,
        route: RouteFn,
    ) -> None:
        self.me = me
        self.addresses = realm.addresses
        """This node's own addresses, as sent in walks (the mesh keeps them up to date)."""
        self.config = config
        self.book = book
        self.realm = realm
        self.swarms = swarms
        self.rng = rng
        self.counters = counters
        self.send = send
        self.route = route
        self.addr_dials: TtlMap[tuple[str, ...], None] = TtlMap(
            "mesh.address_dials", MAX_BOOTSTRAP, DIAL_TIMEOUT, registry=registry
        )
        self.hints: TtlMap[str, tuple[tuple[NodeId, float], ...]] = TtlMap(
            "mesh.swarm_hints", HINT_SWARMS, config.membership.hint_ttl, registry=registry
        )
        self.bootstrap: tuple[Contact, ...] = ()
        self.contact_ids: dict[tuple[str, ...], NodeId | None] = {}  # bounded: one per bootstrap contact
        """The peer that last answered each contact known only by address (a name may resolve
        to another node later: joins still dial the address; the top-up reads it to skip a
        contact it is linked to)."""
        self.join_attempt = 0
        self.next_join: float | None = None
        self.top_up_attempt = 0
        self.top_up_after = 0.0
        """No thin-view top-up before this time (the backoff, kept across thin states)."""
        self.next_book = 0.0
        self.replenish_attempt = 0
        """Replenishing from connected peers in the book (after ``next_book``) backs off as joins
        do; the attempts start again once the view was full."""
        self.next_top_up: float | None = None

    # -- realm join ------------------------------------------------------------------------------

    def join(self, bootstrap: Sequence[Contact], now: float) -> list[Effect]:
        """Remember ``bootstrap`` contacts and contact them all (see the module docstring)."""
        entries: list[Contact] = []
        for pid, addrs in list(bootstrap)[:MAX_BOOTSTRAP]:
            norm = normalize_addresses(addrs)
            if pid == self.me or (pid is None and not norm):
                continue
            if pid is not None and norm:
                self.book.add(pid, norm, now)
            entries.append((pid, norm))
        self.bootstrap = tuple(entries)
        self.contact_ids = {addrs: None for pid, addrs in entries if pid is None}  # bounded: one per contact
        self.join_attempt = self.top_up_attempt = 0
        self.top_up_after = 0.0
        self.next_join = now
        # The first attempt goes to every contact, so overlays started apart merge; retries
        # (while the active view stays empty) go to one contact at a time, round robin.
        out: list[Effect] = []
        for pid, addrs in entries[1:]:
            out += self._contact(pid, addrs, now)
        return self.maybe_join(now) + out

    def maybe_join(self, now: float) -> list[Effect]:
        """Contact the next bootstrap contact when the realm active view is empty and it is time;
        while the view is thin, ask one for a link when that is due (see the module docstring)."""
        if len(self.realm.active) > 0:
            self.join_attempt = 0
            self.next_join = None
            return self._top_up(now)
        if not self.bootstrap:
            return []
        if self.next_join is None:
            self.next_join = now
        if now < self.next_join:
            return []
        pid, addrs = self.bootstrap[self.join_attempt % len(self.bootstrap)]
        self.next_join = now + self._backoff(self.join_attempt)
        self.join_attempt += 1
        self.counters["join_attempts"] += 1
        return self._contact(pid, addrs, now)

    def replenish(self, now: float) -> None:
        """Give an unfull realm view with an empty passive view candidates from the swarms'
        active views, else from connected peers in the address book (module docstring). The
        mesh calls this just before the realm's repair, which then asks them."""
        realm, want = self.realm, self.config.membership.active_view
        if len(realm.active) >= want:
            self.replenish_attempt = 0
            return
        if len(realm.passive) > 0:
            return
        linked = {p: None for sw in self.swarms.values() for p in sw.hv.active_peers()}  # bounded: swarms x view
        cands = [p for p in linked if p != self.me and not realm.knows(p)]
        if not cands and now >= self.next_book:  # a peer may not answer: back off as joins do
            cands = [p for p in self.book.peers() if p != self.me and not realm.knows(p)
                     and (e := self.book.get(p)) is not None and e.connected and e.addresses]
            if cands:
                self.next_book = now + self._backoff(self.replenish_attempt)
                self.replenish_attempt += 1
        for p in self.rng.sample(cands, min(want, len(cands))):
            realm.add_candidate(p)
        self.counters["replenished"] += len(realm.passive)  # it was empty: what was taken

    def _backoff(self, attempt: int) -> float:
        """``join_timeout * 2**attempt`` capped at ``join_backoff_max``, jittered by +-25 %,
        never below ``join_timeout / 2``."""
        cfg = self.config.membership
        delay = min(cfg.join_backoff_max, cfg.join_timeout * 2.0 ** min(attempt, 30))
        return max(delay * (0.75 + 0.5 * self.rng.random()), cfg.join_timeout / 2)

    def _thin(self) -> bool:
        """Whether the realm view is linked but has nothing to refill from (bootstrap contacts
        known, active view neither empty nor full, passive view empty)."""
        return (bool(self.bootstrap) and len(self.realm.passive) == 0
                and 0 < len(self.realm.active) < self.config.membership.active_view)

    def _top_up(self, now: float) -> list[Effect]:
        """Ask one unlinked bootstrap contact for a link when the view is thin and it is time.

        The backoff outlives a thin state that ends (a refusal, an answer that came late and
        timed out later), so a view flapping between thin and not is not topped up faster than
        the backoff; it starts again from ``join_timeout`` once the active view was full."""
        if len(self.realm.active) >= self.config.membership.active_view:
            self.top_up_attempt = 0
        if not self._thin():
            self.next_top_up = None
            return []
        if self.next_top_up is None:
            self.next_top_up = max(now + self.config.membership.join_timeout, self.top_up_after)
            return []
        if now < self.next_top_up:
            return []
        self.top_up_after = self.next_top_up = now + self._backoff(self.top_up_attempt)
        self.top_up_attempt += 1
        me = set(self.addresses)
        unlinked = [c for c in self.bootstrap if not self._linked(c) and not me & set(c[1])]
        if not unlinked:
            return []
        contact = unlinked[self.top_up_attempt % len(unlinked)]
        self.counters["top_ups"] += 1
        pid, addrs = self._contact_id(contact), contact[1]
        if pid is not None and self.book.addresses(pid):
            return self.route("", self.realm.request_link(pid, now), now)
        return self._contact(None, addrs, now)

    def _linked(self, contact: Contact) -> bool:
        """Whether ``contact`` is in the realm active view or has a request pending (a contact
        known only by address: whether an active peer has one of its addresses)."""
        pid = self._contact_id(contact)
        if pid is not None:
            return self.realm.knows(pid)
        return any(set(contact[1]) & set(self.book.addresses(p)) for p in self.realm.active_peers())

    def _contact_id(self, contact: Contact) -> NodeId | None:
        """A contact's node id: given, or the peer that last answered its addresses."""
        pid, addrs = contact
        return pid if pid is not None else self.contact_ids.get(addrs)

    def contact_answered(self, peer: NodeId, now: float) -> list[Effect]:
        """A bootstrap contact dialled by address answered as ``peer``: JOIN through it while the
        realm active view is empty, else ask it for a link (a thin view's top-up)."""
        if len(self.realm.active) == 0:
            return self.route("", self.realm.join_via(peer, now), now)
        return self.route("", self.realm.request_link(peer, now), now)

    def _contact(self, pid: NodeId | None, addrs: tuple[str, ...], now: float) -> list[Effect]:
        """Send a JOIN to a bootstrap contact, dialling it by address when its id is unknown."""
        if pid is not None:
            return self.route("", self.realm.join_via(pid, now), now)
        if addrs in self.addr_dials:
            return []
        self.addr_dials.set(addrs, None, now)
        return [DialAddress(addrs)]

    def address_answered(self, addresses: tuple[str, ...], peer: NodeId | None = None) -> bool:
        """An outbound connection to ``addresses`` (normalized) came up (to ``peer``): whether it
        answers one of our address dials (then the caller joins the realm through that peer).
        The contact is remembered as that peer's, so a thin view's top-up knows it is linked."""
        matched = [k for k in self.addr_dials.keys() if set(k) & set(addresses)]
        for k in matched:
            self.addr_dials.pop(k)
            if peer is not None and k in self.contact_ids:
                self.contact_ids[k] = peer
        return bool(matched)

    def address_failed(self, addresses: tuple[str, ...]) -> None:
        """A :class:`DialAddress` failed; the join timer tries the next contact."""
        self.addr_dials.pop(normalize_addresses(addresses))

    def join_due(self) -> float | None:
        """When the next join attempt is due (while the realm active view is empty) or the next
        top-up of a thin view (while it is thin)."""
        if not self.bootstrap:
            return None
        if len(self.realm.active) == 0:
            return self.next_join
        return self.next_top_up

    # -- swarm members ---------------------------------------------------------------------------

    def discover(self, sw: Swarm, now: float) -> list[Effect]:
        """Start discovery walks for ``sw`` and schedule the next round."""
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
            out += self.send(p, MFind(sw.hv.swarm, self.me.raw, list(self.addresses),
                                          min(cfg.active_random_walk, MAX_WALK_TTL), self.book.own_record), now)
        return out

    def take_hints(self, swarm: str, now: float) -> list[NodeId]:
        """Forget and return the live member hints of ``swarm`` (a head start for joining it)."""
        return [p for p, exp in self.hints.pop(swarm) or () if exp > now]

    def on_find(self, sender: NodeId, msg: MFind, now: float) -> list[Effect]:
        """A discovery walk reached this node (see the module docstring)."""
        origin = peer_id(msg.origin)
        if origin is None or origin == self.me or not msg.s:
            return []
        if msg.rec is None or not self.book.add_record(msg.rec, now, subject=origin):  # #13
            self.book.add(origin, msg.addrs, now, own=origin == sender)
        sw = self.swarms.peek(msg.s)
        out: list[Effect] = []
        if sw is not None:
            peers = [self.me, *self.rng.sample(sw.hv.active_peers(), min(FOUND_PEERS - 1, len(sw.hv.active)))]
            infos = [PeerInfo(p.raw, list(self.addresses), self.book.own_record) if p == self.me else
                     PeerInfo(p.raw, list(self.book.addresses(p)), self.book.record(p)) for p in peers if p != origin]
            out += self.send(origin, MFound(msg.s, infos), now)
            return out
        hints = [(p, exp) for p, exp in (self.hints.get(msg.s) or ()) if exp > now and p != origin]
        if hints:
            infos = [PeerInfo(p.raw, list(self.book.addresses(p)), self.book.record(p)) for p, _ in hints[-FOUND_PEERS:]
                     if self.book.addresses(p)]
            if infos:
                out += self.send(origin, MFound(msg.s, infos), now)
        kept = [(p, e) for p, e in hints if p != origin][-(HINT_PEERS - 1):]
        self.hints.set(msg.s, (*kept, (origin, now + self.config.membership.hint_ttl)), now)
        ttl = min(msg.ttl, self.config.membership.active_random_walk)
        if ttl > 0:
            cands = [p for p in self.realm.active.keys() if p not in (sender, origin)]
            if cands:
                nxt = self.rng.choice(cands)
                out += self.send(nxt, MFind(msg.s, msg.origin, list(self.book.addresses(origin)), ttl - 1,
                                            self.book.record(origin)), now)
        return out

    def on_found(self, msg: MFound, now: float) -> list[Effect]:
        """Members of a swarm we belong to were found: join through them (a view not empty asks
        them for links instead), or keep them as candidates."""
        sw = self.swarms.peek(msg.s)
        if sw is None:
            return []
        hv = sw.hv
        out: list[Effect] = []
        for info in msg.peers[:FOUND_PEERS * 2]:
            p = peer_id(info.id)
            if p is None or p == self.me:
                continue
            if info.rec is None or not self.book.add_record(info.rec, now, subject=p):  # #13
                self.book.add(p, info.addrs, now)
            if len(hv.active) + len(hv.pending) < self.config.membership.active_view:
                out += self.route(msg.s, hv.request_link(p, now) if hv.active else hv.join_via(p, now), now)
            else:
                hv.add_candidate(p)
        return out

    # -- timers ----------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Forget address dials past ``DIAL_TIMEOUT`` and hints past ``membership.hint_ttl``."""
        self.addr_dials.expire(now)
        self.hints.expire(now)

    def timers(self) -> tuple[Callable[[], float | None], ...]:
        """The ``next_deadline`` of the containers kept here (address dials, hints); the join
        timer is :meth:`join_due`."""
        return (self.addr_dials.next_deadline, self.hints.next_deadline)

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever one of :meth:`timers` may change (not :meth:`join_due`) may change."""
        for c in (self.addr_dials, self.hints,):
            c.watch(w)

    def next_deadline(self) -> float | None:
        """The earliest of: an address dial timing out, a hint expiring, the next join attempt."""
        best = self.join_due()
        for d in (self.addr_dials.next_deadline(), self.hints.next_deadline()):
            if d is not None and (best is None or d < best):
                best = d
        return best
