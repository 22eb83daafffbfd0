"""The service registry state machine: signed leased adverts, refresh, withdrawal, versions,
caps, sweeps, lookups (coalesced, waiters kept apart) and local suspicion."""

from __future__ import annotations

import hashlib
from random import Random

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import RegistryConfig
from quicmesh.core.effects import Send
from quicmesh.core.registry import REGISTRY_TOPIC, Broadcast, LookupDone, Registry, RegistryOutcome
from quicmesh.core.registry_messages import RAdvert, RAnswer, RQuery
from quicmesh.core.wire import Codec
from quicmesh.errors import LimitExceeded
from quicmesh.identity import KeyPair, NodeId

REALM = "test"


def keypair(i: int) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(f"registry-test/{i}".encode()).digest())


def make(i: int, cfg: RegistryConfig | None = None, *, base: int = 0, realm: str = REALM) -> Registry:
    return Registry(keypair(i), (f"sim:{i}",), cfg or RegistryConfig(), realm=realm, rng=Random(i),
                    version_base=base, registry=ContainerRegistry(f"r{i}"))


def broadcasts(outs: list[RegistryOutcome]) -> list[bytes]:
    return [o.payload for o in outs if isinstance(o, Broadcast)]


def spread(payloads: list[bytes], nodes: list[Registry], now: float) -> list[RegistryOutcome]:
    out: list[RegistryOutcome] = []
    for p in payloads:
        for n in nodes:
            out += n.handle_advert(p, now)
    return out


def run_timers(reg: Registry, until: float, others: list[Registry], start: float = 0.0) -> float:
    """Fire ``reg``'s timer up to ``until``, spreading its adverts to ``others`` (and sweeping them)."""
    now = start
    while True:
        deadlines = [d for d in [reg.next_deadline(), *(o.next_deadline() for o in others)] if d is not None]
        if not deadlines or min(deadlines) > until:
            return until
        now = max(now, min(deadlines))
        spread(broadcasts(reg.handle_timer(now)), others, now)
        for o in others:
            o.handle_timer(now)


def test_advert_travels_as_a_broadcast_and_is_signed() -> None:
    a, b = make(1), make(2)
    outs = a.advertise("echo", 0.0, ttl=60.0, metadata=b"v=1")
    [payload] = broadcasts(outs)
    assert all(o.topic == REGISTRY_TOPIC for o in outs if isinstance(o, Broadcast))
    ad = Codec([RAdvert]).decode(payload)
    assert isinstance(ad, RAdvert) and ad.n == "echo" and ad.a == ["sim:1"] and ad.m == b"v=1" and ad.l == 60_000
    assert not ad.w and len(ad.g) == 64
    b.handle_advert(payload, 0.1)
    [entry] = b.providers("echo", 0.2)
    assert entry.provider == a.me and entry.addresses == ("sim:1",) and entry.metadata == b"v=1"
    assert b.deadline(a.me, "echo") == pytest.approx(60.0)  # issued at 0.0 + 60 s, not receipt + 60 s
    # the provider holds its own entry at once (no need to wait for its echo)
    assert [e.provider for e in a.providers("echo", 0.0)] == [a.me]
    assert b.counters["accepted"] == 1


def test_refresh_every_third_of_the_ttl_keeps_a_live_service_forever() -> None:
    """The Erlang mesh re-advertised without refreshing the timestamp and dropped live services."""
    cfg = RegistryConfig(sweep_interval=1.0)
    a, b = make(1, cfg), make(2, cfg)
    spread(broadcasts(a.advertise("svc", 0.0, ttl=9.0)), [b], 0.0)
    assert a.next_deadline() == pytest.approx(1.0)  # first sweep (own entry) before the 3 s refresh
    now = 0.0
    versions = set()
    while now < 200.0:
        now = run_timers(a, now + 0.5, [b], now)
        entry = b.entry(a.me, "svc")
        assert entry is not None and b.providers("svc", now), f"live service dropped at {now}"
        versions.add(entry.version)
        deadline = b.deadline(a.me, "svc")
        assert deadline is not None and deadline - now >= 9.0 - 3.0 - 1e-6
    assert len(versions) >= 60  # ~ one refresh every 3 s, each with a higher version
    assert a.counters["adverts_sent"] >= 66 and b.counters["expired"] == 0


def test_a_provider_that_stops_refreshing_vanishes_within_lease_plus_sweep() -> None:
    cfg = RegistryConfig(sweep_interval=2.0)
    a, b = make(1, cfg), make(2, cfg)
    spread(broadcasts(a.advertise("svc", 0.0, ttl=6.0)), [b], 0.0)
    # a dies: nobody fires its timer again; b keeps sweeping
    now = 0.0
    gone_at = None
    while now < 30.0:
        now += 0.25
        b.handle_timer(now)
        if now >= 6.0:
            assert not b.providers("svc", now)  # never chosen past its deadline
        if gone_at is None and b.entry(a.me, "svc") is None:
            gone_at = now
    assert gone_at is not None and 6.0 <= gone_at <= 6.0 + 2.0
    assert len(b) == 0 and b.counters["expired"] == 1


def test_unadvertise_and_close_withdraw_at_once() -> None:
    a, b = make(1), make(2)
    spread(broadcasts(a.advertise("x", 0.0) + a.advertise("y", 0.0) + a.advertise("z", 0.0)), [b], 0.0)
    assert len(b) == 3
    spread(broadcasts(a.unadvertise("x", 1.0)), [b], 1.0)
    assert b.entry(a.me, "x") is None and b.counters["withdrawn"] == 1
    assert a.unadvertise("x", 1.0) == []
    spread(broadcasts(a.close(2.0)), [b], 2.0)
    assert len(b) == 0 and a.own_names == [] and len(a) == 0
    assert a.next_deadline() is not None  # only the sweep of version memory is left
    a.handle_timer(1e6)
    assert a.next_deadline() is None  # no refresh of withdrawn names; version memory swept


def test_stale_advert_replayed_after_a_newer_one_never_wins() -> None:
    a, b = make(1), make(2)
    old = broadcasts(a.advertise("svc", 0.0, metadata=b"old"))[0]
    new = broadcasts(a.advertise("svc", 1.0, metadata=b"new"))[0]
    spread([new], [b], 1.0)
    spread([old], [b], 2.0)
    entry = b.entry(a.me, "svc")
    assert entry is not None and entry.metadata == b"new" and b.counters["stale"] == 1
    spread([new], [b], 2.0)  # a duplicate neither refreshes nor counts as accepted
    assert b.counters["duplicate"] == 1 and b.deadline(a.me, "svc") == pytest.approx(301.0)
    # after a withdrawal, the old advert cannot resurrect the entry either
    spread(broadcasts(a.unadvertise("svc", 3.0)), [b], 3.0)
    spread([old, new], [b], 4.0)
    assert b.entry(a.me, "svc") is None and b.counters["stale"] == 3
    # a restarted provider seeds its version from a later clock and is accepted again
    a2 = make(1, base=10**9)
    spread(broadcasts(a2.advertise("svc", 5.0)), [b], 5.0)
    assert b.entry(a.me, "svc") is not None


def test_a_late_or_replayed_advert_lives_only_what_its_provider_meant() -> None:
    a, b = make(1), make(2)
    payload = broadcasts(a.advertise("svc", 100.0, ttl=30.0))[0]
    b.handle_advert(payload, 120.0)  # arrives 20 s late (tree repair, relay): 10 s left, not 30
    assert b.deadline(a.me, "svc") == pytest.approx(130.0)
    c = make(3)
    c.handle_advert(payload, 131.0)  # already past its expiry: dropped, counted
    assert len(c) == 0 and c.counters["expired_on_arrival"] == 1
    # skewed clocks shift leases, never beyond the ttl: ahead by 2 s -> 2 s shorter
    ahead, behind = make(4), make(5)
    ahead.wall_offset, behind.wall_offset = 2.0, -50.0
    ahead.handle_advert(payload, 100.0)
    behind.handle_advert(payload, 100.0)
    assert ahead.deadline(a.me, "svc") == pytest.approx(128.0)
    assert behind.deadline(a.me, "svc") == pytest.approx(130.0)


def test_invalid_signatures_and_malformed_adverts_are_dropped_and_counted() -> None:
    a, b = make(1), make(2)
    codec = Codec([RAdvert])
    payload = broadcasts(a.advertise("svc", 0.0))[0]
    ad = codec.decode(payload)
    assert isinstance(ad, RAdvert)
    forged = RAdvert(ad.p, ["evil:1"], ad.n, ad.m, ad.v + 5, ad.i, ad.l, ad.w, ad.g)
    b.handle_advert(codec.encode(forged), 0.0)
    impostor = keypair(9)  # signs with its own key while claiming a's id
    ad2 = RAdvert(ad.p, ad.a, ad.n, ad.m, ad.v + 6, ad.i, ad.l, ad.w, impostor.sign(b"x"))
    b.handle_advert(codec.encode(ad2), 0.0)
    assert b.counters["invalid_signature"] == 2 and len(b) == 0
    other_realm = make(3, realm="elsewhere")
    other_realm.handle_advert(payload, 0.0)
    assert other_realm.counters["invalid_signature"] == 1
    b.handle_advert(b"\x00garbage", 0.0)
    b.handle_advert(codec.encode(RAdvert(b"short", [], "n", b"", 1, 0, 1000, False, b"s" * 64)), 0.0)
    b.handle_advert(codec.encode(RAdvert(ad.p, ad.a, ad.n, b"m" * 5000, ad.v + 7, ad.i, ad.l, False, ad.g)), 0.0)
    assert b.counters["malformed"] == 3
    b.handle_advert(payload, 0.0)  # the genuine one still gets in
    assert len(b) == 1


def test_advertise_checks_its_arguments() -> None:
    a = make(1, RegistryConfig(max_per_provider=2, max_metadata_bytes=8))
    with pytest.raises(ValueError):
        a.advertise("", 0.0)
    with pytest.raises(ValueError):
        a.advertise("x", 0.0, metadata=b"123456789")
    with pytest.raises(ValueError):
        a.advertise("x", 0.0, ttl=0.0)
    a.advertise("x", 0.0)
    a.advertise("y", 0.0)
    a.advertise("y", 0.0, metadata=b"again")  # replacing an own name always fits
    with pytest.raises(LimitExceeded):
        a.advertise("z", 0.0)


def test_caps_per_provider_and_in_total_reject_and_count() -> None:
    cfg = RegistryConfig(max_entries=5, max_per_provider=3)
    b = make(0, cfg)
    big = make(1, RegistryConfig(max_per_provider=10))
    payloads = [broadcasts(big.advertise(f"n{i}", 0.0))[0] for i in range(5)]
    spread(payloads, [b], 0.0)
    assert len(b) == 3 and b.counters["rejected_per_provider"] == 2
    others = [make(i) for i in (2, 3, 4)]
    spread([broadcasts(o.advertise("m", 0.0))[0] for o in others], [b], 0.0)
    assert len(b) == 5 and b.counters["rejected_full"] == 1
    # refreshing an existing entry still fits when full
    spread(broadcasts(big.advertise("n0", 1.0)), [b], 1.0)
    assert b.counters["refreshed"] == 1 and len(b) == 5
    snap = {st.name: st for st in b._entries._registry.snapshot()}
    # capacity: max_entries foreign entries plus max_per_provider of the node's own (#11)
    assert snap["registry.entries"].peak == 5 and snap["registry.entries"].capacity == 5 + 3
    # the table is full of foreign entries: the node's own adverts still land in it
    b.advertise("own1", 2.0)
    b.advertise("own2", 2.0)
    assert b.providers("own1", 2.0) and b.providers("own2", 2.0) and len(b) == 7
    assert b.counters["rejected_full"] == 1


def test_suspects_leave_the_choices_at_once_and_come_back() -> None:
    cfg = RegistryConfig(suspect_ttl=5.0, sweep_interval=1.0)
    a, b = make(1, cfg), make(2, cfg)
    spread(broadcasts(a.advertise("svc", 0.0)), [b], 0.0)
    b.suspect(a.me, 1.0)
    assert b.providers("svc", 1.0) == [] and b.has_entries("svc", 1.0) and b.is_suspect(a.me)
    for t in range(2, 8):
        b.handle_timer(float(t))
    assert b.providers("svc", 7.0) and not b.is_suspect(a.me)
    b.suspect(a.me, 8.0)
    b.unsuspect(a.me)
    assert b.providers("svc", 8.0)


def test_suspicion_is_only_about_providers_held_and_ends_with_their_last_entry() -> None:
    cfg = RegistryConfig(suspect_ttl=30.0, sweep_interval=1.0, lease_ttl=5.0)
    a, b, stranger = make(1, cfg), make(2, cfg), make(3, cfg)
    # a failed dial to a peer that provides nothing here marks nothing (the soak's hubs held
    # marks of departed churners for suspect_ttl after dials started before they left failed)
    b.suspect(stranger.me, 0.0)
    assert not b.is_suspect(stranger.me) and b.stats()["suspects"] == 0
    spread(broadcasts(a.advertise("svc", 0.0)), [b], 0.0)
    b.suspect(a.me, 1.0)
    assert b.is_suspect(a.me) and b.stats()["suspects"] == 1
    # the lease lapses long before suspect_ttl: the mark goes with the entry
    for t in range(2, 12):
        b.handle_timer(float(t))
    assert not b.has_entries("svc", 11.0)
    assert not b.is_suspect(a.me) and b.stats()["suspects"] == 0


def _queries(outs: list[RegistryOutcome]) -> list[tuple[NodeId, RQuery]]:
    return [(o.peer, o.message) for o in outs if isinstance(o, Send) and isinstance(o.message, RQuery)]


def test_lookups_coalesce_and_keep_every_waiter() -> None:
    prov = make(1)
    holder1, holder2, holder3 = make(2), make(3), make(4)
    spread(broadcasts(prov.advertise("svc", 0.0, ttl=100.0)), [holder1, holder2, holder3], 0.0)
    asker = make(5)
    peers = [holder1.me, holder2.me, holder3.me]
    first = asker.lookup("svc", 101, 10.0, peers)
    qs = _queries(first)
    assert len(qs) == 3 and len({q.id for _, q in qs}) == 1
    # identical concurrent lookups: no new query, but each waiter is kept apart
    assert asker.lookup("svc", 102, 10.1, peers) == []
    assert asker.lookup("svc", 103, 10.2, peers) == []
    assert asker.lookup("svc", 102, 10.2, peers) == []  # the same waiter twice is one waiter
    assert asker.pending_lookups == 1 and asker.lookup_waiters == 3
    assert asker.counters["lookups"] == 1 and asker.counters["lookups_coalesced"] == 2
    asker.cancel_lookup("svc", 103)
    by_id = {h.me: h for h in (holder1, holder2, holder3)}
    peer, q = qs[0]
    [answer] = by_id[peer].handle_message(asker.me, q, 20.0)
    assert isinstance(answer, Send) and isinstance(answer.message, RAnswer)
    assert answer.message.rem == [80_000]
    done = asker.handle_message(peer, answer.message, 20.0)
    assert done == [LookupDone("svc", (101, 102), True)]
    [entry] = asker.providers("svc", 20.0)
    assert entry.provider == prov.me
    assert asker.deadline(prov.me, "svc") == pytest.approx(100.0)  # the remaining lease, not a fresh one
    assert asker.pending_lookups == 0 and asker.lookup_waiters == 0
    # late answers from the other neighbours are strays
    p2, q2 = qs[1]
    late = by_id[p2].handle_message(asker.me, q2, 20.0)[0]
    assert isinstance(late, Send)
    assert asker.handle_message(p2, late.message, 20.1) == []
    assert asker.counters["stray_answers"] == 1
    # known now: a new lookup ends at once
    assert asker.lookup("svc", 104, 21.0, peers) == [LookupDone("svc", (104,), True)]


def test_lookup_ends_negative_when_all_answer_empty_or_time_out() -> None:
    cfg = RegistryConfig(lookup_timeout=2.0)
    asker, n1, n2 = make(1, cfg), make(2, cfg), make(3, cfg)
    qs = _queries(asker.lookup("nothing", 1, 0.0, [n1.me, n2.me]))
    assert len(qs) == 2
    by_id = {n1.me: n1, n2.me: n2}
    outs: list[RegistryOutcome] = []
    for peer, q in qs:
        [ans] = by_id[peer].handle_message(asker.me, q, 0.1)
        assert isinstance(ans, Send)
        outs += asker.handle_message(peer, ans.message, 0.1)
    assert outs == [LookupDone("nothing", (1,), False)]
    # timeout
    asker.lookup("other", 7, 1.0, [n1.me])
    asker.lookup("other", 8, 1.5, [n1.me])
    assert asker.next_deadline() == pytest.approx(3.0)
    assert asker.handle_timer(3.0) == [LookupDone("other", (7, 8), False)]
    assert asker.pending_lookups == 0 and asker.lookup_waiters == 0
    assert asker.counters["lookups_timed_out"] == 1
    # no neighbour to ask: ends at once
    assert asker.lookup("x", 9, 4.0, []) == [LookupDone("x", (9,), False)]
    assert asker.lookup_waiters == 0
    # the last waiter cancelling removes the lookup itself
    asker.lookup("y", 10, 5.0, [n1.me])
    asker.cancel_lookup("y", 10)
    assert asker.pending_lookups == 0 and asker.lookup_waiters == 0


def test_a_lookup_completes_when_the_advert_arrives_over_the_mesh() -> None:
    prov, asker, n = make(1), make(2), make(3)
    asker.lookup("svc", 5, 0.0, [n.me])
    done = spread(broadcasts(prov.advertise("svc", 0.5)), [asker], 0.5)
    assert done == [LookupDone("svc", (5,), True)]


def test_answers_are_bounded_in_size() -> None:
    cfg = RegistryConfig(max_answer_entries=4)
    holder = make(0, cfg)
    provs = [make(i) for i in range(1, 11)]
    spread([broadcasts(p.advertise("svc", 0.0))[0] for p in provs], [holder], 0.0)
    [ans] = holder.handle_message(provs[0].me, RQuery(1, "svc"), 1.0)
    assert isinstance(ans, Send) and isinstance(ans.message, RAnswer) and len(ans.message.ads) == 4
    # an asker accepts no more than its own limit from one answer
    asker = make(20, RegistryConfig(max_answer_entries=2))
    asker.lookup("svc", 1, 1.0, [holder.me])
    ads = [e.advert for p in provs if (e := p.entry(p.me, "svc")) is not None]
    assert len(ads) == len(provs)
    big = RAnswer(1, "svc", ads, [1000] * 10)
    asker.handle_message(holder.me, big, 1.1)
    assert len(asker) == 2


def test_idle_registry_arms_no_timer() -> None:
    b = make(1)
    assert b.next_deadline() is None
    a = make(2)
    spread(broadcasts(a.advertise("svc", 0.0, ttl=3.0)), [b], 0.0)
    assert b.next_deadline() is not None
    now = 0.0
    while b.next_deadline() is not None and now < 10_000:
        now = max(now, b.next_deadline() or now)
        b.handle_timer(now)
    assert len(b) == 0 and b.next_deadline() is None and now < 10_000


def test_the_choices_are_kept_until_the_table_changes_or_one_of_them_expires() -> None:
    """#14: ``choices`` (what the caller planner picks from on every call) is worked out once and
    kept: the same tuple comes back while nothing changed, and a change (an advert, a suspicion,
    its end, a withdrawal) or the lapse of a lease or a suspicion it relied on is seen at once."""
    cfg = RegistryConfig(suspect_ttl=5.0, sweep_interval=100.0)
    a, c, b = make(1), make(3), make(2, cfg)
    spread(broadcasts(a.advertise("svc", 0.0, ttl=10.0)), [b], 0.0)
    first = b.choices("svc", 1.0)
    assert [e.provider for e in first] == [a.me] and b.choices("svc", 2.0) is first
    spread(broadcasts(c.advertise("svc", 2.0, ttl=30.0)), [b], 2.0)  # a new provider: seen at once
    both = b.choices("svc", 2.5)
    assert {e.provider for e in both} == {a.me, c.me} and b.choices("svc", 3.0) is both
    b.suspect(c.me, 3.0)  # a suspicion: left out at once ...
    assert [e.provider for e in b.choices("svc", 3.0)] == [a.me]
    assert {e.provider for e in b.choices("svc", 8.5)} == {a.me, c.me}  # ... back when it lapses (no sweep ran)
    assert [e.provider for e in b.choices("svc", 10.5)] == [c.me]  # a's lease lapsed (no sweep ran)
    b.suspect(c.me, 11.0)
    b.unsuspect(c.me)  # a connection came up
    assert [e.provider for e in b.choices("svc", 11.0)] == [c.me]
    b.forget(c.me, "svc")  # the provider said it has no handler
    assert b.choices("svc", 11.0) == () and b.providers("svc", 11.0) == []
    assert isinstance(b.providers("svc", 11.0), list)  # a copy: the caller may change it
