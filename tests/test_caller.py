"""The call planner: provider choice, dial, failover, one deadline, lookup coalescing, cleanup."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from random import Random

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import RegistryConfig, RpcConfig
from quicmesh.core.caller import Caller, CallerOutcome
from quicmesh.core.effects import Dial, Send
from quicmesh.core.messages import Reply, ReplyError, Request
from quicmesh.core.registry import Broadcast, LookupDone, Registry
from quicmesh.core.registry_messages import RAnswer, RQuery
from quicmesh.core.rpc import CallResolved, Invoke, Rpc
from quicmesh.errors import CallTimeout, NoProvider, Overloaded, RemoteError
from quicmesh.identity import KeyPair, NodeId


def keypair(i: int) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(f"caller-test/{i}".encode()).digest())


@dataclass
class World:
    """One calling node and a few providers whose adverts it holds."""

    caller: Caller
    registry: Registry
    rpc: Rpc
    providers: list[Registry]
    neighbours: list[NodeId] = field(default_factory=list)

    @property
    def ids(self) -> list[NodeId]:
        return [p.me for p in self.providers]


def world(n_providers: int = 3, *, rpc: RpcConfig | None = None, reg: RegistryConfig | None = None,
          name: str = "svc", seed: int = 1, advertise: bool = True) -> World:
    rcfg = rpc or RpcConfig()
    gcfg = reg or RegistryConfig()
    containers = ContainerRegistry("caller-test")
    kp = keypair(0)
    r = Registry(kp, ("sim:0",), gcfg, realm="t", rng=Random(seed), registry=containers)
    machine = Rpc(kp.node_id, rcfg, peer_capacity=100, rng=Random(seed), registry=containers)
    w = World(Caller(kp.node_id, rcfg, gcfg, machine, r, neighbours=lambda: w.neighbours, peer_capacity=100,
                     rng=Random(seed), containers=containers), r, machine, [])
    for i in range(1, n_providers + 1):
        p = Registry(keypair(i), (f"sim:{i}",), RegistryConfig(), realm="t", rng=Random(i))
        w.providers.append(p)
        if advertise:
            for o in p.advertise(name, 0.0):
                if isinstance(o, Broadcast):
                    r.handle_advert(o.payload, 0.0)
    return w


def requests(outs: list[CallerOutcome]) -> list[tuple[NodeId, Request]]:
    return [(o.peer, o.message) for o in outs if isinstance(o, Send) and isinstance(o.message, Request)]


def dials(outs: list[CallerOutcome]) -> list[Dial]:
    return [o for o in outs if isinstance(o, Dial)]


def resolved(outs: list[CallerOutcome]) -> list[CallResolved]:
    return [o for o in outs if isinstance(o, CallResolved)]


def connect_all(w: World, now: float = 0.0) -> None:
    for p in w.ids:
        w.caller.peer_connected(p, now)


def assert_clean(w: World) -> None:
    assert w.caller.pending_entries() == {k: 0 for k in w.caller.pending_entries()}


def assert_deadlines_held(w: World) -> None:
    """Every open call waits on something timed that ends by the call's deadline (#14: the call
    table has no timer of its own): an attempt in flight, a dial, or a lookup."""
    for call in w.caller._calls.values():
        if call.state == "inflight":
            assert call.rpc_id is not None
            held = w.rpc._pending.deadline(call.rpc_id)
        elif call.state == "dial":
            held = w.caller._dial_timers.deadline(call.call_id)
        else:
            assert call.state == "lookup", call.state
            held = w.caller._lookup_waits.deadline(call.call_id)
        assert held is not None and held <= call.deadline + 1e-6, (call, held)


def test_dial_then_request_then_reply_and_the_connection_is_reused() -> None:
    w = world(1)
    _cid, outs = w.caller.call("svc", b"hi", 5.0, 1.0, "tok")
    [dial] = dials(outs)
    assert dial.peer == w.ids[0] and dial.addresses == ("sim:1",)
    assert requests(outs) == []
    assert w.caller.uses(w.ids[0])  # waiting on the dial: the driver keeps the connection
    outs = w.caller.peer_connected(w.ids[0], 1.05)
    [(peer, req)] = requests(outs)
    assert w.caller.uses(peer)
    assert peer == w.ids[0] and req.name == "svc" and req.payload == b"hi"
    assert req.timeout_ms == pytest.approx(4950, abs=1)  # a lone provider gets all the remaining time
    outs = w.caller.handle_message(peer, Reply(req.id, b"ho"), 1.1)
    assert resolved(outs) == [CallResolved("tok", b"ho", None)]
    assert w.caller.rtt(peer) == pytest.approx(0.05)
    assert not w.caller.uses(peer)
    assert_clean(w)
    _, outs = w.caller.call("svc", b"again", 5.0, 2.0, "tok2")
    assert dials(outs) == [] and len(requests(outs)) == 1  # connected: no second dial


def test_overloaded_fails_over_to_another_provider_within_one_deadline() -> None:
    w = world(3)
    connect_all(w)
    _, outs = w.caller.call("svc", b"x", 3.0, 0.0, "t")
    [(p1, r1)] = requests(outs)
    assert r1.timeout_ms == 1000  # remaining / min(max_attempts, candidates) = 3 / 3
    outs = w.caller.handle_message(p1, ReplyError(r1.id, "overloaded", "busy", True), 0.5)
    [(p2, r2)] = requests(outs)
    assert p2 != p1 and r2.timeout_ms == 1250  # 2.5 s left over 2 attempts
    outs = w.caller.handle_message(p2, Reply(r2.id, b"ok"), 0.6)
    assert resolved(outs) == [CallResolved("t", b"ok", None)]
    assert w.caller.stats.failovers == 1 and not w.registry.is_suspect(p1)
    assert_clean(w)


def test_remote_error_not_retryable_ends_the_call_retryable_fails_over() -> None:
    w = world(3)
    connect_all(w)
    _, outs = w.caller.call("svc", b"x", 3.0, 0.0, "t")
    [(p1, r1)] = requests(outs)
    [res] = resolved(w.caller.handle_message(p1, ReplyError(r1.id, "bad_input", "nope", False), 0.1))
    assert isinstance(res.error, RemoteError) and res.error.code == "bad_input" and w.caller.stats.attempts == 1
    assert_clean(w)
    _, outs = w.caller.call("svc", b"x", 3.0, 1.0, "t2")
    [(p1, r1)] = requests(outs)
    outs = w.caller.handle_message(p1, ReplyError(r1.id, "flaky", "again", True), 1.1)
    [(p2, r2)] = requests(outs)
    outs = w.caller.handle_message(p2, ReplyError(r2.id, "no_handler", "gone", True), 1.2)
    assert w.registry.entry(p2, "svc") is None  # the provider no longer serves it: dropped locally
    [(p3, r3)] = requests(outs)
    [res] = resolved(w.caller.handle_message(p3, ReplyError(r3.id, "flaky", "again", True), 1.3))
    assert isinstance(res.error, RemoteError) and res.error.code == "flaky"  # attempts exhausted: last error
    assert len({p1, p2, p3}) == 3
    assert_clean(w)


def test_attempt_timeouts_suspect_and_the_last_attempt_ends_at_the_deadline() -> None:
    w = world(5, rpc=RpcConfig(max_attempts=3))
    connect_all(w)
    _, outs = w.caller.call("svc", b"x", 3.0, 10.0, "t")
    [(p1, _r1)] = requests(outs)
    assert w.caller.next_deadline() == pytest.approx(11.0)
    outs = w.caller.handle_timer(11.0)
    [(p2, _r2)] = requests(outs)
    assert w.registry.is_suspect(p1) and w.registry.providers("svc", 11.0)
    outs = w.caller.handle_timer(12.0)
    [(p3, _r3)] = requests(outs)
    assert w.caller.next_deadline() == pytest.approx(13.0)
    [res] = resolved(w.caller.handle_timer(13.0))
    assert isinstance(res.error, CallTimeout)
    assert len({p1, p2, p3}) == 3 and w.registry.is_suspect(p1) and w.registry.is_suspect(p2)
    # the last attempt ended with the call's own deadline: that alone does not make p3 suspect
    assert not w.registry.is_suspect(p3)
    assert_clean(w)


def test_lost_connection_and_failed_dial_suspect_the_provider_at_once() -> None:
    w = world(3)
    p0, p1, p2 = w.ids
    w.caller.peer_connected(p0, 0.0)
    w.caller.peer_connected(p1, 0.0)
    outs: list[CallerOutcome] = []
    for i in range(6):
        outs += w.caller.call("svc", b"x", 5.0, 0.0, i)[1]
    assert [d.peer for d in dials(outs)] == [p2]  # seeded: one call picked p2; one dial for it
    assert any(p == p0 for p, _ in requests(outs))
    outs = w.caller.peer_disconnected(p0, 0.2)
    assert w.registry.is_suspect(p0) and p0 not in [e.provider for e in w.registry.providers("svc", 0.2)]
    assert all(p != p0 for p, _ in requests(outs))
    assert all(c.peer in (p1, p2) for c in w.caller._calls.values())
    waiting_p2 = [c.call_id for c in w.caller._calls.values() if c.state == "dial"]
    assert len(waiting_p2) >= 2 and dials(outs) == []  # they joined the dial already under way
    outs = w.caller.dial_failed(p2, 0.3)
    assert w.registry.is_suspect(p2)
    assert {p for p, _ in requests(outs)} == {p1} and len(requests(outs)) == len(waiting_p2)
    inflight = [(p, r) for p, r in requests(outs)]
    inflight += [(p1, r) for c in w.caller._calls.values() if c.state == "inflight" and c.rpc_id is not None
                 for r in [Request(c.rpc_id, "svc", b"x", 1)] if (p1, r) not in inflight]
    done = []
    for p, r in inflight:
        done += resolved(w.caller.handle_message(p, Reply(r.id, b"ok"), 0.4))
    tokens = sorted(t for d in done if isinstance(t := d.token, int))  # the test's tokens are ints
    assert len(tokens) == len(done) and tokens == list(range(6)) and all(d.error is None for d in done)
    assert_clean(w)


def test_no_provider_after_a_negative_lookup_and_lookups_coalesce() -> None:
    w = world(2, advertise=False)
    n1, n2 = NodeId(keypair(50).node_id.raw), NodeId(keypair(51).node_id.raw)
    w.neighbours = [n1, n2]
    _, o1 = w.caller.call("svc", b"a", 5.0, 0.0, "a")
    _, o2 = w.caller.call("svc", b"b", 5.0, 0.0, "b")
    queries = [o for o in o1 + o2 if isinstance(o, Send) and isinstance(o.message, RQuery)]
    assert len(queries) == 2 and {q.peer for q in queries} == {n1, n2}  # one lookup, not two
    assert w.registry.lookup_waiters == 2
    # one neighbour knows a provider: both calls proceed
    prov = w.providers[0]
    ads = [o for o in prov.advertise("svc", 0.0) if isinstance(o, Broadcast)]
    assert ads
    advert = prov.entry(prov.me, "svc")
    assert advert is not None
    q = queries[0]
    assert isinstance(q.message, RQuery)
    outs = w.registry.handle_message(q.peer, RAnswer(q.message.id, "svc", [advert.advert], [60_000]), 0.1)
    [done] = outs
    assert isinstance(done, LookupDone) and set(done.waiters) == {1, 2} and done.found
    outs2 = w.caller.lookup_done(done, 0.1)
    assert len(dials(outs2)) == 1  # both calls wait on one dial
    w.caller.peer_connected(prov.me, 0.2)
    # a name nobody has: NoProvider once all neighbours said so
    _, o3 = w.caller.call("other", b"c", 5.0, 1.0, "c")
    qs = [o for o in o3 if isinstance(o, Send) and isinstance(o.message, RQuery)]
    res: list[CallResolved] = []
    for q in qs:
        assert isinstance(q.message, RQuery)
        for out in w.registry.handle_message(q.peer, RAnswer(q.message.id, "other", [], []), 1.1):
            assert isinstance(out, LookupDone)
            res += resolved(w.caller.lookup_done(out, 1.1))
    [r] = res
    assert r.token == "c" and isinstance(r.error, NoProvider)
    # no neighbours at all: NoProvider at once
    w.neighbours = []
    _, o4 = w.caller.call("third", b"d", 5.0, 2.0, "d")
    [r4] = resolved(o4)
    assert isinstance(r4.error, NoProvider)


def test_a_call_waiting_on_a_lookup_ends_at_its_own_deadline() -> None:
    """The lookup waits longer than the call may (registry.lookup_timeout 2 s, the call 0.5 s):
    the call ends with CallTimeout at 0.5 s, and the lookup's end later resumes nothing."""
    w = world(1, advertise=False)
    w.neighbours = [keypair(80).node_id]
    _, outs = w.caller.call("svc", b"x", 0.5, 1.0, "tok")
    assert resolved(outs) == [] and w.registry.pending_lookups == 1
    assert w.caller.next_deadline() == pytest.approx(1.5)
    assert resolved(w.caller.handle_timer(1.49)) == []
    [r] = resolved(w.caller.handle_timer(1.5))
    assert r.token == "tok" and isinstance(r.error, CallTimeout)
    assert w.registry.pending_lookups == 0  # its lookup had no other waiter: cancelled
    later: list[CallResolved] = []
    for o in w.registry.handle_timer(3.5):
        if isinstance(o, LookupDone):
            later += resolved(w.caller.lookup_done(o, 3.5))
    assert later == []
    assert_clean(w)


def test_cancel_frees_every_entry_in_every_state() -> None:
    w = world(2, advertise=True)
    w.neighbours = [keypair(60).node_id]
    c_dial, _ = w.caller.call("svc", b"x", 5.0, 0.0, "dial")
    w.caller.peer_connected(w.ids[0], 0.0)
    w.caller.peer_connected(w.ids[1], 0.0)
    c_fly, outs = w.caller.call("svc", b"x", 5.0, 0.0, "fly")
    assert requests(outs)
    c_look, outs = w.caller.call("unknown", b"x", 5.0, 0.0, "look")
    assert w.registry.pending_lookups == 1
    for cid in (c_dial, c_fly, c_look):
        assert w.caller.cancel(cid)
        assert not w.caller.cancel(cid)
    assert_clean(w)
    # stray replies to cancelled attempts resolve nothing
    [(p, r)] = requests(outs) if requests(outs) else [(w.ids[0], Request(999, "svc", b"", 1))]
    assert resolved(w.caller.handle_message(p, Reply(r.id, b"late"), 0.5)) == []


def test_overloaded_when_max_pending_calls_are_open() -> None:
    w = world(1, rpc=RpcConfig(max_pending_calls=4))
    connect_all(w)
    for i in range(4):
        w.caller.call("svc", b"x", 5.0, 0.0, i)
    with pytest.raises(Overloaded):
        w.caller.call("svc", b"x", 5.0, 0.0, "over")
    assert w.caller.stats.refused_overloaded == 1
    # the table's own bound refused it (#14: no pre-check), before anything changed
    assert w.caller.pending == 4 and w.rpc.pending == 4
    assert w.caller.pending_entries()["calls"] == 4
    with pytest.raises(ValueError):
        w.caller.call("", b"x", 5.0, 0.0, "bad")
    with pytest.raises(ValueError):
        w.caller.call("svc", b"x", 0.0, 0.0, "bad")


@pytest.mark.parametrize("policy", ["random", "round_robin", "lowest_rtt"])
def test_provider_policies(policy: str) -> None:
    w = world(4, rpc=RpcConfig(provider_policy=policy))
    connect_all(w)
    latency = {p: 0.01 * (i + 1) for i, p in enumerate(w.ids)}  # provider 1 is the fastest
    chosen: list[NodeId] = []
    now = 0.0
    for i in range(200):
        _, outs = w.caller.call("svc", b"x", 5.0, now, i)
        [(p, r)] = requests(outs)
        chosen.append(p)
        now += latency[p]
        [res] = resolved(w.caller.handle_message(p, Reply(r.id, b"ok"), now))
        assert res.error is None
    counts = {p: chosen.count(p) for p in w.ids}
    if policy == "round_robin":
        assert set(counts.values()) == {50}
        assert all(chosen[i] != chosen[i + 1] for i in range(len(chosen) - 1))
    elif policy == "random":
        assert all(25 <= c <= 75 for c in counts.values()), counts
    else:
        assert chosen[:4] and set(chosen[:4]) == set(w.ids)  # each measured once first
        assert counts[w.ids[0]] >= 190
        assert w.caller.rtt(w.ids[0]) == pytest.approx(0.01)
    assert_clean(w)


def test_the_rpc_tables_own_bound_refuses_a_call_past_max_pending_calls() -> None:
    """``Rpc.start_call`` past ``max_pending_calls``: ``Overloaded``, counted, nothing recorded
    (#14: the pending table's ``REJECT`` bound is the check)."""
    w = world(1, rpc=RpcConfig(max_pending_calls=3))
    connect_all(w)
    peer = w.ids[0]
    for i in range(3):
        w.rpc.start_call(peer, "svc", b"x", 5.0, 0.0, i)
    with pytest.raises(Overloaded):
        w.rpc.start_call(peer, "svc", b"x", 5.0, 0.0, "over")
    assert w.rpc.stats.calls_refused_overloaded == 1 and w.rpc.pending == 3


@pytest.mark.parametrize("policy", ["random", "round_robin", "lowest_rtt"])
def test_one_provider_is_chosen_without_a_draw(policy: str) -> None:
    """With a single candidate no policy draws from the seeded generator (#14: a call to the
    only provider took three Python calls of ``random.choice``)."""
    w = world(1, rpc=RpcConfig(provider_policy=policy))
    connect_all(w)
    state = w.caller._rng.getstate()
    for i in range(5):
        _, outs = w.caller.call("svc", b"x", 5.0, 0.0, i)
        [(p, _r)] = requests(outs)
        assert p == w.ids[0]
    assert w.caller._rng.getstate() == state


def test_requests_for_local_handlers_pass_through() -> None:
    w = world(1)
    w.rpc.advertise("local")
    w.caller.peer_connected(w.ids[0], 0.0)
    outs = w.caller.handle_message(w.ids[0], Request(7, "local", b"p", 1000), 0.0)
    assert [type(o) for o in outs] == [Invoke]


def test_fuzzed_event_orders_resolve_every_call_once_and_leave_nothing_pending() -> None:
    """Random replies, errors, losses, dial failures and cancels: each call ends exactly once,
    within its deadline, and every table is empty at the end."""
    rng = Random(7)
    w = world(6, rpc=RpcConfig(max_attempts=3), reg=RegistryConfig(suspect_ttl=1.0))
    w.neighbours = [keypair(70).node_id]
    now = 0.0
    ends: dict[object, float] = {}
    deadline: dict[object, float] = {}
    ids: dict[object, int] = {}
    cancelled: set[object] = set()
    inflight: list[tuple[NodeId, Request]] = []

    def take(outs: list[CallerOutcome]) -> None:
        for o in outs:
            if isinstance(o, CallResolved):
                assert o.token not in ends, "resolved twice"
                ends[o.token] = now
                assert o.result is not None or isinstance(o.error, CallTimeout | NoProvider | RemoteError | Overloaded)
            elif isinstance(o, Send) and isinstance(o.message, Request):
                inflight.append((o.peer, o.message))
            elif isinstance(o, Dial):
                pending_dials.append(o.peer)
            elif isinstance(o, Send) and isinstance(o.message, RQuery):
                pass  # nobody answers: lookups time out

    pending_dials: list[NodeId] = []
    def fire_until(t: float) -> None:
        nonlocal now
        while True:
            ds = [d for d in (w.caller.next_deadline(), w.registry.next_deadline()) if d is not None]
            if not ds or min(ds) > t:
                break
            now = max(now, min(ds))
            take(w.caller.handle_timer(now))
            for o in w.registry.handle_timer(now):
                if isinstance(o, LookupDone):
                    take(w.caller.lookup_done(o, now))
        now = max(now, t)

    for step in range(3000):
        fire_until(now + rng.expovariate(50.0))
        r = rng.random()
        if step < 2500 and r < 0.2:
            tok = f"c{step}"
            name = "svc" if rng.random() < 0.95 else "nobody"
            t = rng.uniform(0.2, 2.0)
            deadline[tok] = now + t
            cid, outs = w.caller.call(name, b"x", t, now, tok)
            ids[tok] = cid
            take(outs)
        elif r < 0.5 and inflight:  # replies are the likeliest event after new calls
            p, req = inflight.pop(rng.randrange(len(inflight)))
            kind = rng.random()
            if kind < 0.6:
                msg: Reply | ReplyError = Reply(req.id, b"ok")
            elif kind < 0.75:
                msg = ReplyError(req.id, "overloaded", "busy", True)
            elif kind < 0.85:
                msg = ReplyError(req.id, "flaky", "x", True)
            else:
                msg = ReplyError(req.id, "bad", "x", False)
            take(w.caller.handle_message(p, msg, now))
        elif r < 0.6 and pending_dials:
            p = pending_dials.pop(rng.randrange(len(pending_dials)))
            take(w.caller.peer_connected(p, now) if rng.random() < 0.7 else w.caller.dial_failed(p, now))
        elif r < 0.65:
            take(w.caller.peer_disconnected(rng.choice(w.ids), now))
        elif r < 0.7 and ids:
            victim = rng.choice(sorted(ids, key=str))
            if victim not in ends and w.caller.cancel(ids[victim]):
                cancelled.add(victim)
        assert_deadlines_held(w)
    fire_until(now + 10.0)  # let everything run out
    assert w.caller.pending == 0
    assert_clean(w)
    for key in deadline:
        assert (key in ends) != (key in cancelled), key
        if key in ends:
            assert ends[key] <= deadline[key] + 1e-9
    st = w.caller.stats
    assert st.failovers > 100 and st.succeeded > 100 and st.timed_out > 50 and st.no_provider > 50, st
    assert st.cancelled == len(cancelled) > 0
