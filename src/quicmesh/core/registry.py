"""The service registry: signed, leased advertisements of procedure names, realm-wide.

Theory of operation
-------------------
**Advertising.** ``advertise(name, now, ttl=..., metadata=...)`` signs an :class:`RAdvert` (the
provider's node id and addresses, the name, bounded metadata, issued-at, the lease ``ttl`` and a
version) and returns a :class:`Broadcast` effect: the driver publishes its payload on the mesh
topic :data:`REGISTRY_TOPIC` (``$svc``, a realm-wide swarm every node subscribes to). Every node,
this one included, hands each mesh ``Deliver`` on that topic to :meth:`Registry.handle_advert`.
The advertisement is also applied locally at once, so the provider need not wait for its echo.

**Leases.** An advert is valid until ``issued + ttl`` on the *wall clock* (both signed). The
machine's ``now`` is the driver's monotonic clock; the driver gives ``wall_offset`` (wall clock
minus ``now``, e.g. ``time.time() - loop.time()``, updated if the wall clock steps). A receiver
keeps an entry until ``now + min(issued + ttl - wall_now, ttl, max_lease)``, so an advert that
arrives late (repaired by the broadcast tree, relayed in a lookup answer, replayed) lives no
longer than its provider meant, and one already past its expiry is dropped (counted). Clock skew
only shifts leases: a receiver whose clock is ahead by d sees leases d shorter (refreshes every
``ttl / 3`` absorb up to ``2 ttl / 3``), one behind never more than ``ttl``.
The provider re-signs every own name each ``ttl / 3`` (a timer of this machine:
:meth:`next_deadline` / :meth:`handle_timer`), with a higher version, and a *newer* advert
replaces the entry *and its deadline* -- the Erlang mesh refreshed the value but not the
timestamp and dropped live services. Two refreshes may be lost before a live service lapses.
``unadvertise`` and :meth:`close` (node shutdown) sign a withdrawal (``w=True``) that removes the
entry everywhere at once.

**Versions.** Each provider numbers everything it signs with one increasing counter, seeded by
the driver (``version_base``, e.g. wall-clock microseconds) so that it keeps increasing across
restarts. Per (provider, name) the highest version seen is remembered (in the entry, and in a
TTL map that outlives the entry by ``max_lease + sweep_interval``): an advert or withdrawal whose
version is not higher is stale and dropped (counted) *before* its signature is checked, so a
replayed old advert never overwrites a newer one and costs no signature check. A newer advert
whose signature does not verify is dropped and counted. (The version memory holds
``2 * max_entries`` keys; past that, the soonest to expire is forgotten, and a replay of that
key is then stopped only by its signed expiry.)

**Sweeps and caps.** Entries expire only in sweeps, every ``sweep_interval`` seconds (armed while
anything is held), so a provider that stops refreshing vanishes within ``lease + sweep_interval``;
:meth:`providers` never returns an entry past its deadline even between sweeps. The table holds
at most ``max_entries`` foreign entries and ``max_per_provider`` per provider; a new entry beyond
either is refused and counted (a refresh of an existing entry always fits). This node's own
adverts are held apart from that total: Sybil providers filling the table never push out or
refuse the node's own (#11).

**Permissions** of providers are checked as :mod:`quicmesh.core.advert_checks` explains.

**Lookups.** A node with no entry for a name (it joined after the last refresh) asks up to
``lookup_fanout`` neighbours with :class:`RQuery`; they answer (:class:`RAnswer`) with at most
``max_answer_entries`` signed adverts and the lease left on each, which is accepted through the
same checks (and can only shorten the lease). Pending lookups live in a TTL map keyed by the
*name*: identical concurrent lookups coalesce into one query. Their *waiters* live in a separate
TTL map keyed by ``(name, waiter id)``, so concurrent lookups never overwrite each other's
waiter. A lookup ends with one :class:`LookupDone` listing all its waiters: when an advert for
the name is accepted (from an answer or from the mesh), when every asked neighbour answered, or
after ``lookup_timeout``. ``cancel_lookup`` removes one waiter; the last one removes the lookup.

**Suspects.** The driver (through the caller planner) reports providers it could not reach:
:meth:`suspect` takes them out of this node's choices at once for ``suspect_ttl`` seconds,
without touching their lease; :meth:`unsuspect` (a connection came up) puts them back. Only
providers of entries held are marked; a mark ends with the provider's last entry.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from random import Random
from typing import Any

from ..bounded import ContainerRegistry, LruMap, Overflow, TtlMap
from ..config import RegistryConfig
from ..errors import DecodeError, LimitExceeded, SignatureMismatch
from ..identity import KeyPair, NodeId
from .advert_checks import MAX_ADDRESSES, MAX_NAME, Offence, advert_denial, check_name, reserved_batch_ok, valid_advert
from .effects import Send
from .permissions import Permissions
from .registry_messages import (
    REGISTRY_MESSAGES,
    REGISTRY_PATTERN,
    REGISTRY_TOPIC,
    RAdvert,
    RAnswer,
    RQuery,
    advert_signing_bytes,
)
from .registry_types import Broadcast, Entry, LookupDone, RegistryOutcome, _Lookup, _Own
from .trust import Trust
from .wire import Codec, Message

__all__ = [
    "MAX_ADDRESSES",
    "MAX_NAME",
    "REGISTRY_PATTERN",
    "REGISTRY_TOPIC",
    "Broadcast",
    "Entry",
    "LookupDone",
    "Registry",
    "RegistryOutcome",
]

_MIN_TTL = 0.001
_raw = operator.attrgetter("raw")  # providers in node-id order: the choice among them is seeded


class Registry:
    """One node's service registry (see the module docstring for the theory of operation)."""

    def __init__(
        self,
        keypair: KeyPair,
        addresses: Sequence[str],
        config: RegistryConfig,
        *,
        realm: str,
        rng: Random,
        version_base: int = 0,
        wall_offset: float = 0.0,
        registry: ContainerRegistry | None = None,
        trust: Trust | None = None,
    ) -> None:
        self._key = keypair
        self.trust = trust
        """Certificates and permissions of providers (None or an open realm: not checked)."""
        self.offence: Offence | None = None
        """Counts an offence of the peer whose lookup answer held an invalid advert (set by the
        core: the guard's)."""
        self._fault = False  # the advert just refused by _accept was the relaying peer's fault
        self.wall_offset = float(wall_offset)
        """Wall-clock seconds minus the driver's ``now``; the driver may update it."""
        self.me = keypair.node_id
        self.addresses = tuple(str(a) for a in addresses)[:MAX_ADDRESSES]
        self.config = config
        self.realm = realm
        self._rng = rng
        self._version = int(version_base)
        self._codec = Codec(REGISTRY_MESSAGES)
        cap = config.max_entries + config.max_per_provider  # foreign entries, plus room for our own
        self._entries: TtlMap[tuple[NodeId, str], Entry] = TtlMap(
            "registry.entries", cap, config.lease_ttl, Overflow.DROP_NEWEST, registry=registry
        )
        self._by_name: LruMap[str, dict[NodeId, None]] = LruMap(
            "registry.names", cap, Overflow.DROP_NEWEST, registry=registry
        )
        self._per_provider: LruMap[NodeId, int] = LruMap(
            "registry.providers", cap, Overflow.DROP_NEWEST, registry=registry
        )
        self._versions: TtlMap[tuple[NodeId, str], int] = TtlMap(
            "registry.versions", 2 * cap, config.max_lease + config.sweep_interval, registry=registry
        )
        self._own: LruMap[str, _Own] = LruMap(
            "registry.own", config.max_per_provider, Overflow.REJECT, registry=registry
        )
        self._refresh: TtlMap[str, None] = TtlMap(
            "registry.refresh_timers", config.max_per_provider, config.lease_ttl / 3, registry=registry
        )
        self._suspects: TtlMap[NodeId, None] = TtlMap(
            "registry.suspects", cap, config.suspect_ttl, registry=registry
        )
        self._lookups: TtlMap[str, _Lookup] = TtlMap(
            "registry.lookups", config.max_lookups, config.lookup_timeout, Overflow.DROP_NEWEST, registry=registry
        )
        self._waiters: TtlMap[tuple[str, int], None] = TtlMap(
            "registry.lookup_waiters", config.max_lookup_waiters, config.lookup_timeout + config.sweep_interval,
            Overflow.DROP_NEWEST, registry=registry,
        )
        self._next_rid = 0
        self._choices: dict[str, tuple[float, tuple[Entry, ...]]] = {}  # bounded: one per name, cleared at capacity
        """:meth:`choices` per name with the time it stays right; emptied at every change."""
        self._next_sweep: float | None = None
        self.counters = {  # bounded: fixed keys
            "adverts_sent": 0, "withdrawals_sent": 0, "accepted": 0, "refreshed": 0, "withdrawn": 0,
            "stale": 0, "duplicate": 0, "invalid_signature": 0, "malformed": 0, "rejected_full": 0, "denied": 0,
            "rejected_per_provider": 0, "expired": 0, "expired_on_arrival": 0, "suspected": 0, "lookups": 0,
            "lookups_coalesced": 0,
            "lookups_refused": 0, "lookups_timed_out": 0, "queries_answered": 0, "stray_answers": 0,
            "faulty_answers": 0,
        }

    # -- introspection ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending_lookups(self) -> int:
        """Lookups awaiting answers."""
        return len(self._lookups)

    @property
    def lookup_waiters(self) -> int:
        """Waiters registered on pending lookups."""
        return len(self._waiters)

    @property
    def own_names(self) -> list[str]:
        """Names this node advertises."""
        return sorted(self._own.keys())

    def entry(self, provider: NodeId, name: str) -> Entry | None:
        """The entry held for (``provider``, ``name``), expired or not (until the next sweep)."""
        return self._entries.get((provider, name))

    def deadline(self, provider: NodeId, name: str) -> float | None:
        """When the entry for (``provider``, ``name``) lapses, or ``None``."""
        return self._entries.deadline((provider, name))

    def providers(self, name: str, now: float) -> list[Entry]:
        """Live, unsuspected entries of ``name`` (this node's own included), by provider id."""
        return list(self.choices(name, now))

    def choices(self, name: str, now: float) -> tuple[Entry, ...]:
        """:meth:`providers` as a tuple, kept until the table changes or one of them (or a
        suspicion that left one out) expires (#14: the caller planner asks once per call; it
        took ~0.5 µs to work out, a cache hit ~0.1)."""
        hit = self._choices.get(name)
        if hit is not None and now < hit[0]:
            return hit[1]
        until = math.inf
        kept: list[Entry] = []
        for e in self._live(name, now):
            suspected = self._suspects.deadline(e.provider) if self._suspects else None
            if suspected is not None and suspected > now:
                until = min(until, suspected)  # left out until its suspicion ends
            else:
                kept.append(e)
                until = min(until, self._entries.deadline((e.provider, name)) or now)
        if len(self._choices) >= self._by_name.capacity:
            self._choices.clear()
        out = tuple(kept)
        self._choices[name] = (until, out)
        return out

    def names(self) -> list[str]:
        """The names this node holds entries for (expired ones included until the next sweep)."""
        return list(self._by_name.keys())

    def has_entries(self, name: str, now: float) -> bool:
        """Whether any live entry of ``name`` is held, suspected providers included."""
        return bool(self._live(name, now))

    def is_suspect(self, provider: NodeId, now: float | None = None) -> bool:
        """Whether ``provider`` is out of this node's choices (at ``now``; default: until swept)."""
        d = self._suspects.deadline(provider)
        return d is not None and (now is None or d > now)

    def stats(self) -> dict[str, Any]:
        """A snapshot for /health and metrics."""
        return {
            "entries": len(self._entries), "names": len(self._by_name), "own": len(self._own),
            "suspects": len(self._suspects), "lookups": len(self._lookups), "lookup_waiters": len(self._waiters),
            **self.counters,
        }

    def _live(self, name: str, now: float) -> list[Entry]:
        provs = self._by_name.peek(name)
        if not provs:
            return []
        entries = self._entries
        out: list[Entry] = []
        for p in sorted(provs, key=_raw) if len(provs) > 1 else provs:
            e = entries.live((p, name), now)
            if e is not None:
                out.append(e)
        return out

    # -- own advertisements ----------------------------------------------------------------------

    def advertise(
        self, name: str, now: float, *, ttl: float | None = None, metadata: bytes | None = None
    ) -> list[RegistryOutcome]:
        """Advertise ``name`` realm-wide for a lease of ``ttl`` seconds (default ``lease_ttl``),
        refreshed every ``ttl / 3`` until :meth:`unadvertise` or :meth:`close`. Advertising a name
        again replaces its metadata and ttl. Raises ``ValueError`` for a bad name, ttl or
        metadata and :class:`LimitExceeded` past ``max_per_provider`` names."""
        check_name(name)
        life = self.config.lease_ttl if ttl is None else float(ttl)
        if not _MIN_TTL <= life <= self.config.max_lease:
            raise ValueError(f"ttl must be within [{_MIN_TTL}, {self.config.max_lease}] s, got {ttl!r}")
        meta = bytes(metadata or b"")
        if len(meta) > self.config.max_metadata_bytes:
            raise ValueError(f"metadata of {len(meta)} bytes exceeds {self.config.max_metadata_bytes}")
        if name not in self._own and len(self._own) >= self._own.capacity:
            raise LimitExceeded("registry.max_per_provider", self._own.capacity)
        self._own.set(name, _Own(life, meta))
        return self._sign_and_send(name, now, withdraw=False)

    def unadvertise(self, name: str, now: float) -> list[RegistryOutcome]:
        """Withdraw ``name`` at once (a signed withdrawal, realm-wide). Unknown names: no effect."""
        if self._own.pop(name) is None:
            return []
        self._refresh.pop(name)
        return self._sign_and_send(name, now, withdraw=True)

    def close(self, now: float) -> list[RegistryOutcome]:
        """Node shutdown: withdraw every own name. Publish the effects before closing connections."""
        out: list[RegistryOutcome] = []
        for name in list(self._own.keys()):
            out += self.unadvertise(name, now)
        return out

    def _sign_and_send(self, name: str, now: float, *, withdraw: bool) -> list[RegistryOutcome]:
        own = self._own.peek(name)
        ttl = own.ttl if own is not None else self.config.lease_ttl
        self._version += 1
        ad = RAdvert(
            p=self.me.raw, a=list(self.addresses), n=name, m=own.metadata if own is not None else b"",
            v=self._version, i=int((now + self.wall_offset) * 1000), l=max(1, int(ttl * 1000)), w=withdraw,
            g=b"",
        )
        ad.g = self._key.sign(advert_signing_bytes(self.realm, ad))
        if self.trust is not None:
            ad.c = self.trust.own_certificate
        if withdraw:
            self.counters["withdrawals_sent"] += 1
        else:
            self.counters["adverts_sent"] += 1
            self._refresh.set(name, None, now, ttl=ttl / 3)
        out: list[RegistryOutcome] = list(self._accept(ad, now, None))
        out.insert(0, Broadcast(REGISTRY_TOPIC, self._codec.encode(ad)))
        return out

    # -- received advertisements -----------------------------------------------------------------

    def handle_advert(self, payload: bytes, now: float) -> list[RegistryOutcome]:
        """An advert delivered by the mesh on :data:`REGISTRY_TOPIC` (encoded :class:`RAdvert`)."""
        try:
            msg = self._codec.decode(payload)
        except DecodeError:
            self.counters["malformed"] += 1
            return []
        if not isinstance(msg, RAdvert):
            self.counters["malformed"] += 1
            return []
        return self._accept(msg, now, None)

    def _accept(self, ad: RAdvert, now: float, lease_cap: float | None) -> list[RegistryOutcome]:
        provider = valid_advert(ad, self.config.max_metadata_bytes)
        if provider is None:
            self.counters["malformed"] += 1
            self._fault = True
            return []
        key = (provider, ad.n)
        current = self._entries.get(key)
        known = self._versions.get(key)
        if current is not None and (known is None or current.version > known):
            known = current.version
        if known is not None and ad.v <= known:
            self.counters["duplicate" if ad.v == known else "stale"] += 1
            return []
        try:
            provider.verify(ad.g, advert_signing_bytes(self.realm, ad))
        except SignatureMismatch:
            self.counters["invalid_signature"] += 1
            self._fault = True
            return []
        denial = None if ad.w else advert_denial(self.trust, provider, ad, now + self.wall_offset)
        if denial is not None:
            self.counters["denied"] += 1
            self._fault = denial[1]
            return []
        self._versions.set(key, ad.v, now)
        self._arm_sweep(now)
        if ad.w:
            if current is not None:
                self._remove(key)
            self.counters["withdrawn"] += 1
            return []
        lease = min((ad.i + ad.l) / 1000.0 - (now + self.wall_offset), ad.l / 1000.0, self.config.max_lease)
        if lease_cap is not None:
            lease = min(lease, lease_cap)
        if lease <= 0:
            self.counters["expired_on_arrival"] += 1
            return []
        if current is None:
            count = self._per_provider.peek(provider) or 0
            if count >= self.config.max_per_provider:
                self.counters["rejected_per_provider"] += 1
                return []
            # foreign entries fill at most max_entries; our own (at most max_per_provider) always fit
            if provider != self.me and len(self._entries) - self._own_held() >= self.config.max_entries:
                self.counters["rejected_full"] += 1
                return []
        addrs = tuple(ad.a[:MAX_ADDRESSES])
        self._entries.set(key, Entry(provider, ad.n, addrs, bytes(ad.m), ad.v, ad), now, ttl=lease)
        self._choices.clear()
        if current is None:
            provs = self._by_name.get(ad.n)
            if provs is None:
                provs = {}  # bounded: providers of one name, at most max_entries in all
                self._by_name.set(ad.n, provs)
            provs[provider] = None
            self._per_provider.set(provider, (self._per_provider.peek(provider) or 0) + 1)
            self.counters["accepted"] += 1
        else:
            self.counters["refreshed"] += 1
        if ad.n in self._lookups and self.providers(ad.n, now):
            return [self._complete(ad.n, now)]
        return []

    def _own_held(self) -> int:
        """Entries of this node's own adverts in the table."""
        return self._per_provider.peek(self.me) or 0
    def reserved_batch_ok(self, publisher: NodeId, topic: str, payloads: list[bytes], perms: Permissions) -> bool:
        """See :func:`quicmesh.core.advert_checks.reserved_batch_ok`."""
        return reserved_batch_ok(self._codec, publisher, topic, payloads, perms)

    def _remove(self, key: tuple[NodeId, str]) -> None:
        if self._entries.pop(key) is None:
            return
        self._unindex(key)

    def _unindex(self, key: tuple[NodeId, str]) -> None:
        self._choices.clear()
        provider, name = key
        provs = self._by_name.peek(name)
        if provs is not None:
            provs.pop(provider, None)
            if not provs:
                self._by_name.pop(name)
        count = (self._per_provider.peek(provider) or 0) - 1
        if count > 0:
            self._per_provider.set(provider, count)
        else:
            self._per_provider.pop(provider)
            self._suspects.pop(provider)

    def forget(self, provider: NodeId, name: str) -> None:
        """Drop the entry locally (the provider said it has no such handler). Its version stays
        remembered, so only a newer advert brings it back."""
        self._remove((provider, name))

    # -- suspects --------------------------------------------------------------------------------

    def suspect(self, provider: NodeId, now: float) -> None:
        """Take ``provider`` out of this node's choices for ``suspect_ttl`` seconds; only a
        provider of entries held is marked (a failed dial to another peer is no news here)."""
        if provider == self.me or self._per_provider.peek(provider) is None:
            return
        self._suspects.set(provider, None, now)
        self._choices.clear()
        self.counters["suspected"] += 1
        self._arm_sweep(now)

    def unsuspect(self, provider: NodeId) -> None:
        """``provider`` is reachable again (a connection to it came up)."""
        if self._suspects.pop(provider, False) is not False:
            self._choices.clear()

    # -- lookups ---------------------------------------------------------------------------------

    def lookup(self, name: str, waiter: int, now: float, peers: Sequence[NodeId]) -> list[RegistryOutcome]:
        """Find providers of ``name`` for ``waiter`` (an id of the caller's choosing, unique among
        its pending lookups): at once when known, else by asking up to ``lookup_fanout`` of
        ``peers``. Always ends with exactly one :class:`LookupDone` naming ``waiter`` (possibly in
        the returned list), unless :meth:`cancel_lookup` removes it first."""
        if self.providers(name, now):
            return [LookupDone(name, (waiter,), True)]
        wkey = (name, waiter)
        if wkey in self._waiters:
            return []
        if not self._waiters.set(wkey, None, now):
            self.counters["lookups_refused"] += 1
            return [LookupDone(name, (waiter,), False)]
        if name in self._lookups:
            self.counters["lookups_coalesced"] += 1
            return []
        cands = sorted({p for p in peers if p != self.me}, key=lambda p: p.raw)
        asked = tuple(self._rng.sample(cands, min(self.config.lookup_fanout, len(cands))))
        self._next_rid += 1
        if not asked or not self._lookups.set(name, _Lookup(self._next_rid, asked, ()), now):
            self._waiters.pop(wkey)
            self.counters["lookups_refused"] += 1
            return [LookupDone(name, (waiter,), False)]
        self.counters["lookups"] += 1
        return [Send(p, RQuery(self._next_rid, name)) for p in asked]

    def cancel_lookup(self, name: str, waiter: int) -> None:
        """``waiter`` no longer waits (its call ended); the last waiter drops the lookup."""
        if (name, waiter) not in self._waiters:
            return
        self._waiters.pop((name, waiter))
        if not any(n == name for n, _ in self._waiters.keys()):
            self._lookups.pop(name)

    def _complete(self, name: str, now: float) -> LookupDone:
        self._lookups.pop(name)
        waiters = tuple(w for n, w in self._waiters.keys() if n == name)
        for w in waiters:
            self._waiters.pop((name, w))
        return LookupDone(name, waiters, bool(self.providers(name, now)))

    # -- messages --------------------------------------------------------------------------------

    def handle_message(self, peer: NodeId, msg: Message, now: float) -> list[RegistryOutcome]:
        """An :class:`RQuery`, :class:`RAnswer` or :class:`RAdvert` received directly from ``peer``."""
        if isinstance(msg, RQuery):
            if not isinstance(msg.n, str) or not 0 < len(msg.n) <= MAX_NAME:
                self.counters["malformed"] += 1
                return []
            live = self._live(msg.n, now)
            if len(live) > self.config.max_answer_entries:
                live = self._rng.sample(live, self.config.max_answer_entries)
            rem = [max(1, int(((self._entries.deadline((e.provider, e.name)) or now) - now) * 1000)) for e in live]
            self.counters["queries_answered"] += 1
            return [Send(peer, RAnswer(msg.id, msg.n, [e.advert for e in live], rem))]
        if isinstance(msg, RAnswer):
            lk = self._lookups.get(msg.n) if isinstance(msg.n, str) else None
            if lk is None or lk.rid != msg.id or peer not in lk.asked:
                self.counters["stray_answers"] += 1
                return []
            out: list[RegistryOutcome] = []
            limit = self.config.max_answer_entries
            faulty = False  # forged, unsigned, unpermitted or malformed: an offence of ``peer``
            for ad, left in zip(msg.ads[:limit], msg.rem[:limit], strict=False):
                self._fault = not (isinstance(left, int) and left > 0 and ad.n == msg.n)
                if not self._fault:
                    out += self._accept(ad, now, left / 1000.0)
                faulty = faulty or self._fault
            if faulty and self.offence is not None:
                self.counters["faulty_answers"] += 1
                self.offence(peer, now)
            if msg.n in self._lookups and peer not in lk.answered:
                lk.answered += (peer,)
                if len(lk.answered) >= len(lk.asked):
                    out.append(self._complete(msg.n, now))
            return out
        if isinstance(msg, RAdvert):
            return self._accept(msg, now, None)
        return []

    # -- timers ----------------------------------------------------------------------------------

    def _arm_sweep(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self.config.sweep_interval

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` must run, or ``None``."""
        best = self._next_sweep
        for d in (self._refresh.next_deadline(), self._lookups.next_deadline(), self._waiters.next_deadline(),
                  self._suspects.next_deadline()):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def handle_timer(self, now: float) -> list[RegistryOutcome]:
        """Refresh own adverts that are due, end timed-out lookups, and sweep when due."""
        out: list[RegistryOutcome] = []
        for name, _ in self._refresh.expire(now):
            if name in self._own:
                out += self._sign_and_send(name, now, withdraw=False)
        for name, _lk in self._lookups.expire(now):
            self.counters["lookups_timed_out"] += 1
            out.append(self._complete(name, now))
        for (name, w), _ in self._waiters.expire(now):  # orphans (should not happen): end them
            out.append(LookupDone(name, (w,), bool(self.providers(name, now))))
        if self._suspects.expire(now):  # a suspect mark ends after suspect_ttl, sweep or not
            self._choices.clear()
        if self._next_sweep is not None and now >= self._next_sweep:
            self.sweep(now)
        return out

    def sweep(self, now: float) -> int:
        """Drop every expired entry, version memory and suspicion; returns entries dropped."""
        dropped = self._entries.expire(now)
        for key, _ in dropped:
            self._unindex(key)
        self.counters["expired"] += len(dropped)
        self._versions.expire(now)
        if self._suspects.expire(now):
            self._choices.clear()
        held = len(self._entries) + len(self._versions) + len(self._suspects)
        self._next_sweep = now + self.config.sweep_interval if held else None
        return len(dropped)

