"""Work-queue groups: each message on a matching topic goes to exactly one live member.

Theory of operation
-------------------
**Membership.** ``subscribe(pattern, group="workers")`` makes the node a member of the group
key ``(group, pattern)`` (as in NATS queue groups, the same group name on two patterns is two
groups). The first local member of a key advertises the registry name
``$grp:<group>:<pattern>`` (:func:`group_name`) through the service registry: a signed, leased,
refreshed advert on the realm-wide ``$svc`` topic, withdrawn when the last local member leaves or
the node stops (:mod:`quicmesh.core.registry`). In an authority realm such an advert is accepted
only when the member's certificate allows ``subscribe`` on the pattern
(:mod:`quicmesh.core.advert_checks`). Every node thus knows the member *nodes* of every key;
which local subscription takes a message is the member node's business (its driver spreads
round-robin).

**Publishing.** Ordinary subscribers get every message by gossip, as before. In addition, for
each key whose pattern matches the topic, the publishing node (:meth:`Groups.route`) keeps the
message in its unacked table (``groups.unacked``, ``group_max_unacked``; full: ``publish``
raises ``Overloaded`` before anything is sent; a key with no live member at all is skipped) and
picks one member node: itself first when it
has a member with room, else the next remote member round-robin among those that are connected,
not suspected and hold fewer than ``group_window`` messages not yet taken (a slower member gets
fewer, so work follows consumption speed; equal members get an even share). A remote member
gets a :class:`~quicmesh.core.groups_messages.GPush`; a local one a :class:`GroupDeliver`
output. A member not yet connected is dialled (at most every few seconds) and skipped meanwhile.
A message with no member to take it waits (per key, in publish order) until one has room, at
most ``group_hold_timeout`` seconds, then it is dropped and counted (``expired``).

**Taking.** A member node hands a pushed message to one local member (:class:`GroupDeliver`);
when the application *takes* it (reads it from its subscription) the driver calls
:meth:`Groups.taken` and the node acks (:class:`~quicmesh.core.groups_messages.GAck`, coalesced
per publisher until the driver's :meth:`flush`). A member that cannot take it (no local member
left, ``group_max_inbound`` reached, the subscription closed with it unread) sends a nack.

**Redelivery.** The publishing node moves a message to another member when the chosen one
nacks it, when the connection to it is lost (:meth:`Groups.peer_lost`), when the local member
leaves, or when a remote member with messages in flight took none for ``group_ack_timeout``
seconds (a node killed without closing its connections, a stuck application; a local member
is in this process and leaves by closing, which gives its unread messages back at once). Such a member is left out
of the choices for ``group_suspect_ttl`` seconds (until it reconnects, for a connection loss).
A message is thus taken within a bounded time while any member lives.

**Trade-offs.** Delivery is at-least-once: a member that took a message and vanished before its
ack arrived, or that was slower than ``group_ack_timeout``, may see the message again elsewhere.
A member node remembers every (publisher, id) it took for ``group_dedup_ttl`` seconds
(``groups.taken``) and never hands one twice to its application, so a message redelivered to
the same node is taken once: exactly once to the application within the dedup window, as long
as no member node dies holding an unacknowledged taken message. Payloads are held by the
publisher until taken (memory ``group_max_unacked`` x message size); there is no persistence: a
publisher that dies loses its untaken messages (as NATS core queue groups).

**Bounds.** ``groups.unacked`` (publisher's messages not taken), ``groups.inbound`` (messages
handed to local members and not taken), ``groups.taken`` (dedup window), ``groups.acks``
(publishers owed an ack), ``groups.members`` (member nodes with messages in flight),
``groups.suspects``, ``groups.dialled``, ``groups.local`` and ``groups.routes`` (topic -> keys
cache): all bounded containers visible in metrics; counters in :meth:`Groups.stats`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec

from ..bounded import BoundedDict, ContainerRegistry, Overflow, TtlMap
from ..config import PubSubConfig
from ..errors import ContainerFull, Overloaded
from ..identity import NodeId
from .effects import Dial, Send
from .grammar import Pattern, parse_pattern
from .groups_messages import GAck, GPush
from .topics import GROUP_NAME, check_group

__all__ = ["GROUP_PREFIX", "GroupDeliver", "GroupSink", "Groups", "check_group", "group_name", "parse_group_name"]

GROUP_PREFIX = "$grp:"
"""Registry names of group memberships start with this."""
_DIAL_EVERY = 5.0
"""Seconds between dials of one unconnected member."""
_ROUTES = 4096
"""Topics whose matching group keys are cached."""

Key = tuple[str, str]
"""(group, pattern)."""
Members = Callable[[str, float], list[tuple[NodeId, tuple[str, ...]]]]
"""Registry name, now -> live member nodes and their addresses (this node included)."""


def group_name(group: str, pattern: str) -> str:
    """The registry name advertising membership of ``(group, pattern)``."""
    return f"{GROUP_PREFIX}{group}:{pattern}"


def parse_group_name(name: str) -> Key | None:
    """``(group, pattern)`` of a registry name made by :func:`group_name`, else ``None``."""
    if not name.startswith(GROUP_PREFIX):
        return None
    group, sep, pattern = name[len(GROUP_PREFIX):].partition(":")
    if not sep or not GROUP_NAME.fullmatch(group) or not pattern:
        return None
    return group, pattern


class GroupDeliver(msgspec.Struct, frozen=True, gc=False):
    """Output: hand ``payload`` to one local member of ``(group, pattern)``; when the application
    takes it, call ``taken(origin, id)``; if it cannot, ``released(origin, id)``."""

    topic: str
    payload: bytes
    group: str
    pattern: str
    origin: NodeId
    id: int


class GroupSink(Protocol):
    """What a driver hands :class:`GroupDeliver` outputs to (its local member subscriptions)."""

    def deliver(self, eff: GroupDeliver) -> None:
        """Queue ``eff`` for one local member, or report it released."""


class _Pending:
    __slots__ = ("born", "key", "member", "payload", "topic", "tried")

    def __init__(self, topic: str, payload: bytes, key: Key, born: float) -> None:
        self.topic = topic
        self.payload = payload
        self.key = key
        self.born = born
        self.member: NodeId | None = None
        self.tried: tuple[NodeId, ...] = ()  # bounded: members this message was given to (a few)


class _Member:
    __slots__ = ("inflight", "progress")

    def __init__(self, now: float) -> None:
        self.inflight = 0
        self.progress = now


class Groups:
    """One node's work-queue groups, both sides (see the module docstring)."""

    def __init__(
        self,
        me: NodeId,
        config: PubSubConfig,
        registry: ContainerRegistry,
        *,
        members: Members,
        names: Callable[[], Iterable[str]],
        connected: Callable[[NodeId], bool],
        may_publish: Callable[[NodeId, str, float], bool] = lambda _p, _t, _n: True,
    ) -> None:
        self.me = me
        self.config = config
        self._members_of = members
        self._names = names
        self._connected = connected
        self._may_publish = may_publish
        c = config
        self.local: BoundedDict[Key, int] = BoundedDict("groups.local", c.max_subscriptions, registry=registry)
        """Local member subscriptions per key."""
        self.unacked: BoundedDict[int, _Pending] = BoundedDict("groups.unacked", c.group_max_unacked,
                                                              registry=registry)
        """Own messages not taken yet, by id."""
        self.waiting: dict[Key, deque[int]] = {}  # bounded: ids of self.unacked entries, per known key
        self.members: BoundedDict[NodeId, _Member] = BoundedDict("groups.members", c.group_max_unacked,
                                                                registry=registry)
        """Member nodes with messages in flight (one entry per node holding at least one)."""
        self.suspects: TtlMap[NodeId, None] = TtlMap("groups.suspects", 1024, c.group_suspect_ttl,
                                                     registry=registry)
        self.dialled: TtlMap[NodeId, None] = TtlMap("groups.dialled", 1024, _DIAL_EVERY, registry=registry)
        self.inbound: BoundedDict[tuple[NodeId, int], None] = BoundedDict(
            "groups.inbound", c.group_max_inbound, registry=registry)
        """(publisher, id) handed to local members and not taken yet."""
        self.taken_ids: TtlMap[tuple[NodeId, int], None] = TtlMap(
            "groups.taken", c.group_dedup_size, c.group_dedup_ttl, Overflow.EVICT_OLDEST, registry=registry)
        """(publisher, id) taken here: the dedup window."""
        self.acks: BoundedDict[NodeId, list[int]] = BoundedDict("groups.acks", 4096, registry=registry)
        """Publisher -> ids to ack at the next :meth:`flush` (each list at most the inbound cap)."""
        self.routes: BoundedDict[str, list[Key]] = BoundedDict("groups.routes", _ROUTES, registry=registry)
        self._keys: dict[Key, Pattern] = {}  # bounded: keys advertised in the registry (capped there)
        self._cursor: dict[Key, int] = {}  # bounded: one per key of self._keys
        self._dirty = True
        self.keyless = False
        """Whether the key index is built and holds no key: then no topic has a group route and
        the publish short path (:meth:`quicmesh.core.node.NodeCore.append_to_batch`) skips
        :meth:`keys_for`."""
        self._next_id = 1
        self.counters = {  # bounded: fixed keys
            "published": 0, "delivered_local": 0, "pushed": 0, "acked": 0, "nacked": 0, "redelivered": 0,
            "expired": 0, "duplicates": 0, "refused": 0, "timeouts": 0, "taken": 0,
        }

    # -- membership ------------------------------------------------------------------------------

    def changed(self) -> None:
        """The registry's adverts changed: rebuild the key index before the next route."""
        self._dirty = True
        self.keyless = False

    def _index(self) -> None:
        self._dirty = False
        keys: dict[Key, Pattern] = {}  # bounded: as self._keys
        for name in self._names():
            key = parse_group_name(name)
            if key is None:
                continue
            try:
                keys[key] = self._keys.get(key) or parse_pattern(key[1])
            except ValueError:
                continue
        self._keys = keys
        self.keyless = not keys
        self._cursor = {k: v for k, v in self._cursor.items() if k in keys}  # bounded: one per key of self._keys
        self.routes.clear()

    def keys_for(self, topic: str) -> list[Key]:
        """Group keys whose pattern matches ``topic`` (cached per topic)."""
        if self._dirty:
            self._index()
        if not self._keys:
            return []
        keys = self.routes.get(topic)
        if keys is None:
            keys = [k for k, p in self._keys.items() if p.matches(topic)]
            if len(self.routes) >= _ROUTES:
                self.routes.clear()
            self.routes[topic] = keys
        return keys

    def join(self, group: str, pattern: str) -> bool:
        """A local member of ``(group, pattern)`` opened; ``True``: the first (advertise)."""
        check_group(group)
        key = (group, pattern)
        n = self.local.get(key, 0)
        self.local[key] = n + 1
        return n == 0

    def leave(self, group: str, pattern: str, now: float) -> tuple[bool, list[object]]:
        """A local member closed; returns whether it was the last (withdraw) and the outputs
        (own messages given to this node for the key go to other members)."""
        key = (group, pattern)
        n = self.local.get(key, 0)
        if n > 1:
            self.local[key] = n - 1
            return False, []
        self.local.pop(key, None)
        out: list[object] = []
        mine = [i for i, p in self.unacked.items() if p.member == self.me and p.key == key]
        for i in mine:
            out += self._retry(i, now)
        return n == 1, out

    # -- publisher side --------------------------------------------------------------------------

    def route(self, topic: str, payload: bytes, now: float) -> list[object]:
        """A message published here: one copy per matching key to one member each. Raises
        ``Overloaded`` when the unacked table has no room for them."""
        keys = [k for k in self.keys_for(topic) if self.local.get(k) or self._members_of(group_name(*k), now)]
        if not keys:  # no live member anywhere: nothing to hold the message for (as NATS)
            return []
        if len(self.unacked) + len(keys) > self.unacked.capacity:
            raise Overloaded(f"groups.unacked full ({self.unacked.capacity} messages not taken yet)")
        out: list[object] = []
        for key in keys:
            mid = self._next_id
            self._next_id += 1
            self.unacked[mid] = _Pending(topic, payload, key, now)
            self.counters["published"] += 1
            out += self._assign(mid, now)
        return out

    def _assign(self, mid: int, now: float, exclude: NodeId | None = None) -> list[object]:
        p = self.unacked[mid]
        out: list[object] = []
        member = self._choose(p.key, now, exclude, out)
        if member is None:
            q = self.waiting.get(p.key)
            if q is None:
                q = self.waiting[p.key] = deque()
            q.append(mid)
            return out
        return out + self._place(mid, p, member, now)

    def _place(self, mid: int, p: _Pending, member: NodeId, now: float) -> list[object]:
        """Give message ``mid`` to ``member`` (chosen by :meth:`_choose`)."""
        out: list[object] = []
        p.member = member
        if member not in p.tried:
            p.tried = (*p.tried[-3:], member)
        m = self.members.get(member)
        if m is None:
            m = self.members[member] = _Member(now)
        if m.inflight == 0:
            m.progress = now
        m.inflight += 1
        if member == self.me:
            self.counters["delivered_local"] += 1
            out.append(GroupDeliver(p.topic, p.payload, p.key[0], p.key[1], self.me, mid))
        else:
            self.counters["pushed"] += 1
            out.append(Send(member, GPush(mid, p.topic, p.key[0], p.key[1], p.payload)))
        return out

    def _room(self, node: NodeId) -> bool:
        m = self.members.get(node)
        return m is None or m.inflight < self.config.group_window

    def _choose(self, key: Key, now: float, exclude: NodeId | None, out: list[object]) -> NodeId | None:
        if self.local.get(key) and self._room(self.me) and exclude != self.me:
            return self.me
        cands = self._members_of(group_name(*key), now)
        if not cands:
            return None
        n = len(cands)
        start = self._cursor.get(key, 0) % n
        for k in range(n):
            node, addrs = cands[(start + k) % n]
            if node == self.me or node == exclude:
                continue
            d = self.suspects.deadline(node)
            if d is not None and d > now:
                continue
            if not self._connected(node):
                if node not in self.dialled and addrs:
                    self.dialled.set(node, None, now)
                    out.append(Dial(node, addrs))
                continue
            if not self._room(node):
                continue
            self._cursor[key] = (start + k + 1) % n
            return node
        return None

    def _release_member(self, node: NodeId | None, now: float, *, progress: bool) -> None:
        if node is None:
            return
        m = self.members.get(node)
        if m is None:
            return
        m.inflight -= 1
        if progress:
            m.progress = now
        if m.inflight <= 0:
            del self.members[node]

    def _retry(self, mid: int, now: float) -> list[object]:
        """Give message ``mid`` to another member (or make it wait)."""
        p = self.unacked.get(mid)
        if p is None:
            return []
        prev = p.member
        self._release_member(prev, now, progress=False)
        p.member = None
        self.counters["redelivered"] += 1
        return self._assign(mid, now, exclude=prev)

    def handle_ack(self, peer: NodeId, msg: GAck, now: float) -> list[object]:
        """Acks (or nacks) from member node ``peer``."""
        out: list[object] = []
        for mid in msg.i:
            p = self.unacked.get(mid)
            if p is None or peer not in p.tried:
                continue
            if msg.n:
                if p.member == peer:
                    self.counters["nacked"] += 1
                    out += self._retry(mid, now)
                continue
            self._done(mid, p, now)
        return out + self.drain(now)

    def _done(self, mid: int, p: _Pending, now: float) -> None:
        del self.unacked[mid]
        self.counters["acked"] += 1
        self._release_member(p.member, now, progress=True)  # (a waiting one leaves its queue lazily)

    def drain(self, now: float) -> list[object]:
        """Give waiting messages to members that have room now."""
        out: list[object] = []
        for key, q in list(self.waiting.items()):
            while q:
                mid = q[0]
                p = self.unacked.get(mid)
                if p is None or p.member is not None:
                    q.popleft()
                    continue
                member = self._choose(key, now, None, out)
                if member is None:
                    break
                q.popleft()
                out += self._place(mid, p, member, now)
            if not q:
                del self.waiting[key]
        return out

    def peer_lost(self, peer: NodeId, now: float) -> list[object]:
        """The connection to ``peer`` ended: its messages not taken go to other members."""
        out: list[object] = []
        m = self.members.get(peer)
        if m is not None:
            self.suspects.set(peer, None, now)
            for mid in [i for i, p in self.unacked.items() if p.member == peer]:
                out += self._retry(mid, now)
        return out

    def peer_connected(self, peer: NodeId, now: float) -> list[object]:
        """A connection to ``peer`` came up: it may take messages again."""
        self.suspects.pop(peer)
        return self.drain(now) if self.waiting else []

    def uses(self, peer: NodeId) -> bool:
        """Whether the connection to ``peer`` must stay: it holds own messages not taken, is owed
        acks, or local members hold pushed messages not taken yet (of any publisher)."""
        return peer in self.members or peer in self.acks or bool(self.inbound)

    # -- member side -----------------------------------------------------------------------------

    def handle_push(self, peer: NodeId, msg: GPush, now: float) -> list[object]:
        """A message pushed to this node by publisher ``peer``."""
        key = (msg.g, msg.q)
        ident = (peer, msg.i)
        if ident in self.taken_ids:
            self.counters["duplicates"] += 1
            return [Send(peer, GAck([msg.i]))]
        if ident in self.inbound:
            return []
        ok = bool(self.local.get(key))
        if ok:
            try:
                ok = parse_pattern(msg.q).matches(msg.s) and self._may_publish(peer, msg.s, now)
            except ValueError:
                ok = False
        if ok:
            try:
                self.inbound[ident] = None
            except ContainerFull:
                ok = False
        if not ok:
            self.counters["refused"] += 1
            return [Send(peer, GAck([msg.i], True))]
        return [GroupDeliver(msg.s, msg.d, msg.g, msg.q, peer, msg.i)]

    def taken(self, origin: NodeId, mid: int, now: float) -> list[object]:
        """The application took message ``mid`` of ``origin`` (ack it)."""
        self.counters["taken"] += 1
        if origin == self.me:
            p = self.unacked.get(mid)
            if p is not None and self.me in p.tried:
                self._done(mid, p, now)
                return self.drain(now)
            return []
        self.inbound.pop((origin, mid), None)
        self.taken_ids.set((origin, mid), None, now)
        ids = self.acks.get(origin)
        if ids is None:
            try:
                ids = self.acks[origin] = []
            except ContainerFull:
                return [Send(origin, GAck([mid]))]
        ids.append(mid)
        return []

    def released(self, origin: NodeId, mid: int, now: float) -> list[object]:
        """A local member could not take message ``mid`` (closed with it unread, queue full)."""
        if origin == self.me:
            p = self.unacked.get(mid)
            return self._retry(mid, now) if p is not None and p.member == self.me else []
        if self.inbound.pop((origin, mid), 0) is None:
            return [Send(origin, GAck([mid], True))]
        return []

    def is_taken(self, origin: NodeId, mid: int) -> bool:
        """Whether ``(origin, mid)`` was already taken here (a duplicate not to hand out)."""
        return (origin, mid) in self.taken_ids

    @property
    def has_acks(self) -> bool:
        """Whether acks wait for :meth:`flush`."""
        return bool(self.acks)

    def flush(self) -> list[object]:
        """Send the coalesced acks (one :class:`GAck` per publisher)."""
        out: list[object] = [Send(peer, GAck(ids)) for peer, ids in self.acks.items()]
        self.acks.clear()
        return out

    # -- time ------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next, or ``None``."""
        ds: list[float] = []
        t = self.config.group_ack_timeout
        ds += [m.progress + t for node, m in self.members.items() if node != self.me]
        for q in self.waiting.values():
            p = self.unacked.get(q[0]) if q else None
            if p is not None:
                ds.append(p.born + self.config.group_hold_timeout)
        d = self.suspects.next_deadline()  # (the dedup window expires with the others: no own wakeups)
        if d is not None:
            ds.append(d)
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> list[object]:
        """Move messages off members that took none for ``group_ack_timeout``; drop messages
        that waited ``group_hold_timeout``; expire suspects and the dedup window."""
        out: list[object] = []
        self.suspects.expire(now)
        self.dialled.expire(now)
        self.taken_ids.expire(now)
        t = self.config.group_ack_timeout
        for node, m in list(self.members.items()):
            if node != self.me and m.progress + t <= now:  # a local member leaves by closing
                self.counters["timeouts"] += 1
                self.suspects.set(node, None, now)
                for mid in [i for i, p in self.unacked.items() if p.member == node]:
                    out += self._retry(mid, now)
        hold = self.config.group_hold_timeout
        for key, q in list(self.waiting.items()):
            while q:
                p = self.unacked.get(q[0])
                if p is not None and p.member is None and p.born + hold > now:
                    break
                mid = q.popleft()
                if p is not None and p.member is None:
                    del self.unacked[mid]
                    self.counters["expired"] += 1
            if not q:
                del self.waiting[key]
        return out + self.drain(now)

    def stats(self) -> dict[str, Any]:
        """Counters and sizes for /health and metrics."""
        return {"keys": len(self._keys), "local": len(self.local), "unacked": len(self.unacked),
                "inbound": len(self.inbound), "waiting": sum(len(q) for q in self.waiting.values()),
                **self.counters}
