"""The address book: the peers a node knows and how to reach them.

Theory of operation
-------------------
One entry per peer: the peer's *current* address set (a new set replaces the old one; sets that
differ only in order or duplicates are the same set, stored sorted and de-duplicated), when it was
last seen, and whether we hold a connection to it. Entries are learned from bootstrap, overlay
messages (JOIN, FORWARDJOIN, SHUFFLE, NEIGHBOR, swarm discovery) and the API (``add``).

All entries live in one :class:`~quicmesh.bounded.TtlMap` (capacity ``AddressBookConfig.capacity``,
default 10,000). An unconnected entry expires ``ttl`` seconds (default 1 h) after it was last seen.
A connected entry is stored with a deadline far in the future, so it never expires while the
connection lives, and when the map is full the victim is always the entry closest to its deadline:
the stalest *unconnected* peer. When the connection ends the entry is re-armed with the normal TTL
from that moment. Expiry happens only in :meth:`AddressBook.expire`, called from the owner's timer.

**Whose word counts.** What a peer says about itself (its JOIN, NEIGHBOR, a walk it started and
sent us itself, the address we reached it at: ``own=True``) outranks what others claim about it
(addresses relayed in FORWARDJOIN, SHUFFLE, FIND and FOUND: ``own=False``). A third-party claim
never replaces self-claimed addresses and does not refresh their last-seen time, so it only fills
in when nothing self-claimed is known, or once the self-claimed entry expired (``ttl`` after the
peer last spoke for itself, unless connected). Refused claims are counted (``overruled``).

**Signed self-records** (#13, :mod:`quicmesh.core.selfrecord`): a peer's record of its own
addresses, signed with its key, reaches us through relays. :meth:`AddressBook.add_record` verifies
it (for :attr:`AddressBook.realm`) and takes it as the peer's own word, unless the book already
holds a record of that peer with the same or a newer ``at`` (a replayed old record changes
nothing). The latest verified record is kept with the entry so that it can be relayed on
(:meth:`AddressBook.record`); :attr:`AddressBook.own_record` is this node's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..bounded import ContainerRegistry, TtlMap, Watch
from ..config import AddressBookConfig
from ..identity import NodeId
from .mesh_messages import SelfRecord
from .selfrecord import verify_record

__all__ = ["AddressBook", "PeerEntry", "normalize_addresses"]

_CONNECTED_TTL = 1e12
"""Deadline offset for connected peers: they never expire and are evicted last."""

MAX_ADDRESSES = 8
"""Addresses kept per peer; a peer announcing more is truncated (after sorting)."""

MAX_ADDRESS_LEN = 255
"""Longest address string accepted; longer ones are ignored."""


def normalize_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """The canonical form of an address set: de-duplicated, sorted, capped in count and length."""
    clean = sorted({a for a in addresses if isinstance(a, str) and 0 < len(a) <= MAX_ADDRESS_LEN})
    return tuple(clean[:MAX_ADDRESSES])


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What the book knows about one peer."""

    addresses: tuple[str, ...]
    last_seen: float
    connected: bool
    own: bool = False
    """The addresses are what the peer said about itself (or where we reached it)."""
    record: SelfRecord | None = None
    """#13: the newest verified signed record of the peer (relayed on as it is)."""


class AddressBook:
    """Bounded peer -> addresses map with TTL and stale-first eviction (see module docstring)."""

    def __init__(self, me: NodeId, config: AddressBookConfig, registry: ContainerRegistry) -> None:
        self.me = me
        self.config = config
        self._entries: TtlMap[NodeId, PeerEntry] = TtlMap(
            "addressbook.peers", config.capacity, config.ttl, registry=registry
        )
        self.overruled = 0
        """Third-party claims ignored because the peer's own addresses are known."""
        self.realm = ""
        """The realm's wire id, which signed records must name (set by the mesh)."""
        self.own_record: SelfRecord | None = None
        """This node's own signed record (sent in JOIN, SHUFFLE, FIND; set by the mesh)."""
        self.direct_record: SelfRecord | None = None
        """#13: this node's signed record of its *direct* addresses (listen, interface, observed),
        when what it announces differs (a node reachable only through relays announces its
        relayed addresses): what a hole punch exchanges. ``None``: the same as ``own_record``."""
        self.records_accepted = 0
        self.records_refused = 0
        """Signed records that did not verify or named another peer than the message."""
        self.records_stale = 0
        """Verified records not newer than the one held (replays)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries

    def get(self, peer: NodeId) -> PeerEntry | None:
        """The entry for ``peer`` or ``None``."""
        return self._entries.get(peer)

    def addresses(self, peer: NodeId) -> tuple[str, ...]:
        """The current address set of ``peer`` (empty when unknown)."""
        entry = self._entries.get(peer)
        return () if entry is None else entry.addresses

    def add(self, peer: NodeId, addresses: Iterable[str], now: float, *, own: bool = False) -> None:
        """Learn or refresh ``peer``. A non-empty address set replaces the stored one; an empty
        one keeps the stored addresses and only refreshes last-seen. Our own id is ignored.

        ``own``: ``peer`` itself sent these addresses. A third-party claim (``own=False``) about a
        peer whose own addresses are known changes nothing (see the module docstring)."""
        if peer == self.me:
            return
        addrs = normalize_addresses(addresses)
        old = self._entries.get(peer)
        if old is None:
            if not addrs:
                return
            self._entries.set(peer, PeerEntry(addrs, now, False, own), now)
            return
        if old.own and not own:
            if addrs and addrs != old.addresses:
                self.overruled += 1
            return
        keep_own = old.own and not addrs
        entry = PeerEntry(addrs or old.addresses, now, old.connected, own or keep_own, old.record)
        self._entries.set(peer, entry, now, _CONNECTED_TTL if old.connected else None)

    def set_connected(self, peer: NodeId, addresses: Iterable[str], now: float) -> None:
        """Mark ``peer`` connected (never expires, evicted last); updates addresses if given."""
        if peer == self.me:
            return
        addrs = normalize_addresses(addresses)
        old = self._entries.get(peer)
        keep = addrs or (old.addresses if old is not None else ())
        own = bool(addrs) or (old is not None and old.own)  # we reached it there: as good as its word
        rec = old.record if old is not None else None
        self._entries.set(peer, PeerEntry(keep, now, True, own, rec), now, _CONNECTED_TTL)

    def set_disconnected(self, peer: NodeId, now: float) -> None:
        """The connection to ``peer`` ended: the entry expires ``ttl`` from now."""
        old = self._entries.get(peer)
        if old is None:
            return
        if not old.addresses:
            self._entries.pop(peer)
            return
        self._entries.set(peer, replace(old, last_seen=now, connected=False), now)

    def add_record(self, rec: SelfRecord, now: float, *, subject: NodeId | None = None) -> bool:
        """Take ``rec`` (a peer's signed record, about ``subject`` when given) as that peer's own
        word when it verifies and is newer than the record held; ``True`` when taken."""
        if subject is not None:  # not newer than the one held: no signature check spent on it
            held = self._entries.get(subject)
            if held is not None and held.record is not None and held.record.at >= rec.at and rec.id == subject.raw:
                self.records_stale += 1
                return False
        peer = verify_record(rec, self.realm, subject)
        if peer is None:
            self.records_refused += 1
            return False
        if peer == self.me:
            return False
        old = self._entries.get(peer)
        if old is not None and old.record is not None and old.record.at >= rec.at:
            self.records_stale += 1
            return False
        addrs = normalize_addresses(rec.addrs)
        if not addrs:
            return False
        self.records_accepted += 1
        connected = old is not None and old.connected
        self._entries.set(peer, PeerEntry(addrs, now, connected, True, rec), now,
                          _CONNECTED_TTL if connected else None)
        return True

    def record(self, peer: NodeId) -> SelfRecord | None:
        """The newest verified signed record of ``peer`` (``None`` when none is held)."""
        entry = self._entries.get(peer)
        return None if entry is None else entry.record

    def remove(self, peer: NodeId) -> bool:
        """Forget ``peer``; ``True`` when it was known."""
        return self._entries.pop(peer) is not None

    def expire(self, now: float) -> list[NodeId]:
        """Drop entries not seen for ``ttl``; returns the forgotten peers."""
        return [k for k, _ in self._entries.expire(now)]

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever :meth:`next_deadline` may change."""
        self._entries.watch(w)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has work next (connected entries excluded)."""
        d = self._entries.next_deadline()
        return d if d is not None and d < _CONNECTED_TTL / 2 else None

    def peers(self) -> list[NodeId]:
        """Every known peer (a copy)."""
        return self._entries.keys()

    def stats(self) -> dict[str, int]:
        """Counters for /health."""
        s = self._entries.stats()
        return {"size": s.size, "capacity": s.capacity, "peak": s.peak, "evictions": s.evictions,
                "expirations": s.expirations, "overruled": self.overruled,
                "records_accepted": self.records_accepted, "records_refused": self.records_refused,
                "records_stale": self.records_stale}
