"""The hole-punch coordinator (``core/punch.py``), deterministic: fake clock, seeded RNG, messages
pumped between an initiator A, a target B and a common node K."""

from __future__ import annotations

from random import Random

import pytest
from punchkit import REALM, Pump, config, make_peer, trio

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig, PunchConfig
from quicmesh.core.effects import Dial, Send
from quicmesh.core.node import NodeCore
from quicmesh.core.punch import PunchDial, PunchDone
from quicmesh.core.punch_messages import CONNECT, PunchForward, PunchRefused, PunchRelayed
from quicmesh.errors import ConfigError
from quicmesh.identity import KeyPair


@pytest.mark.parametrize("a_smaller", [True, False])
def test_exchange_then_simultaneous_dials(a_smaller: bool) -> None:
    """A's dial leaves RTT/2 after its SYNC, B's when the SYNC arrives (one latency later): the
    same instant; the side with the smaller id (whose connection QUIC keeps) ``stagger`` later."""
    a, b, k = trio(a_smaller=a_smaller)
    pump = Pump([a, b, k], latency=0.010)
    pump.take(a, a.puncher.start(b.id, [k.id], 0.0), 0.0)
    pump.run(1.0)
    (ta, da), = pump.outputs(a, PunchDial)
    (tb, db), = pump.outputs(b, PunchDial)
    assert isinstance(da, PunchDial) and isinstance(db, PunchDial)
    stagger = PunchConfig().stagger
    # CONNECT A->K->B and REPLY B->K->A: 4 hops; SYNC sent at 0.04 reaches B at 0.06
    assert ta == pytest.approx(0.04 + 0.02 + (stagger if a_smaller else 0))
    assert tb == pytest.approx(0.06 + (0 if a_smaller else stagger))
    assert set(da.addresses) == set(b.record.addrs) and set(db.addresses) == set(a.record.addrs)
    assert da.nonce == db.nonce
    assert k.puncher.counters["forwarded"] == 3 and a.puncher.counters["attempts"] == 1  # CONNECT, REPLY, SYNC
    out = a.puncher.dial_done(b.id, da.nonce, True, 0.2)
    (done,) = out
    assert isinstance(done, PunchDone) and done.ok and done.final and done.elapsed == pytest.approx(0.2)
    b.puncher.dial_done(a.id, db.nonce, True, 0.2)
    assert not a.puncher.active(b.id) and a.puncher.stats()["answering"] == 0 == b.puncher.stats()["answering"]
    assert a.puncher.counters["successes"] == 1 and a.puncher.time_to_direct == [pytest.approx(0.2)]


def test_failed_dials_back_off_exponentially_then_give_up() -> None:
    cfg = config(attempts=4, backoff=1.0, jitter=0.25, backoff_max=3.0, cooldown=60.0)
    a, b, k = trio(cfg)
    pump = Pump([a, b, k])
    pump.take(a, a.puncher.start(b.id, [k.id], 0.0), 0.0)
    now, delays, done = 0.0, [], []
    for _ in range(4):
        now = pump.run(now + 5.0, now)  # the dial is out, its 6 s deadline not reached
        dials = [d for _, d in pump.outputs(a, PunchDial)]
        dial = dials[-1]
        assert isinstance(dial, PunchDial)
        pump.other.clear()
        outs = a.puncher.dial_done(b.id, dial.nonce, False, now)
        (d,) = outs
        assert isinstance(d, PunchDone)
        done.append(d)
        dl = a.puncher.next_deadline()
        if not d.final:
            assert dl is not None
            delays.append(dl - now)
    assert [d.final for d in done] == [False, False, False, True]
    assert [d.reason for d in done] == ["dial_failed"] * 4
    for delay, base in zip(delays, (1.0, 2.0, 3.0), strict=True):  # doubled, capped at backoff_max
        assert base * 0.75 <= delay <= base * 1.25
    print(f"retry delays {[round(x, 3) for x in delays]} s (backoff 1 s doubling, cap 3 s, jitter 25 %)")
    assert not a.puncher.active(b.id) and a.puncher.cooling(b.id)
    assert a.puncher.failures_by_reason == {"dial_failed": 4}
    a.puncher.timer(now + 61.0)
    assert not a.puncher.cooling(b.id)


def test_no_answer_times_out_and_tries_the_next_common_node() -> None:
    cfg = config(attempts=1, exchange_timeout=2.0)
    a, b, k = trio(cfg)
    k2 = make_peer(4, ["10.1.0.9:7000"], cfg)
    a.links.add(k2.id)
    k2.links |= {a.id, b.id}
    b.links.add(k2.id)
    k.links.discard(b.id)  # K lost B: it refuses at once
    pump = Pump([a, b, k, k2])
    first = a.puncher.start(b.id, [k.id, k2.id], 0.0)
    assert isinstance(first[0], object) and first[0].peer == k.id  # type: ignore[attr-defined]
    pump.take(a, first, 0.0)
    pump.run(5.0)
    assert k.puncher.forward_refused_by_reason == {"not_connected": 1}
    assert k2.puncher.counters["forwarded"] == 3
    assert len(pump.outputs(a, PunchDial)) == 1
    # nobody answers at all: exchange timeout, no retry left
    a2, b2, k3 = trio(cfg)
    b2.puncher.config = config(enabled=False)  # B ignores punches
    pump = Pump([a2, b2, k3])
    pump.take(a2, a2.puncher.start(b2.id, [k3.id], 0.0), 0.0)
    pump.run(10.0)
    (at, done), = pump.outputs(a2, PunchDone)
    assert isinstance(done, PunchDone) and done.reason == "timeout" and done.final and at == pytest.approx(2.0)


def test_refusal_names_the_reason_and_moves_on() -> None:
    a, b, k = trio(config(attempts=1))
    k.members = {a.id}  # B is no member K knows
    pump = Pump([a, b, k])
    pump.take(a, a.puncher.start(b.id, [k.id], 0.0), 0.0)
    pump.run(1.0)
    (_, done), = pump.outputs(a, PunchDone)
    assert isinstance(done, PunchDone) and done.reason == "refused_not_member" and done.final
    assert b.puncher.counters["answered"] == 0


def test_a_peer_no_common_node_is_connected_to_ends_at_once_without_cooldown() -> None:
    """A peer that died (its dial failed, and no common node holds it): the punch ends at the
    first round of refusals, with no retry and no cooldown entry left behind."""
    a, b, k = trio(config(attempts=3, cooldown=300.0))
    k.links.discard(b.id)
    pump = Pump([a, b, k])
    pump.take(a, a.puncher.start(b.id, [k.id], 0.0), 0.0)
    pump.run(60.0)
    (at, done), = pump.outputs(a, PunchDone)
    assert isinstance(done, PunchDone) and done.reason == "unreachable" and done.final and at < 1.0
    assert not a.puncher.cooling(b.id) and not a.puncher.active(b.id)
    assert a.puncher.failures_by_reason == {"unreachable": 1}


def test_both_punch_each_other_the_smaller_id_leads() -> None:
    a, b, k = trio(a_smaller=True)
    pump = Pump([a, b, k])
    pump.take(a, a.puncher.start(b.id, [k.id], 0.0), 0.0)
    pump.take(b, b.puncher.start(a.id, [k.id], 0.0), 0.0)
    pump.run(1.0)
    assert a.puncher.active(b.id) and not b.puncher.active(a.id)  # B gave way and answered A
    (_, da), = pump.outputs(a, PunchDial)
    (_, db), = pump.outputs(b, PunchDial)
    assert isinstance(da, PunchDial) and isinstance(db, PunchDial)
    (done,) = b.puncher.dial_done(a.id, db.nonce, True, 0.5)  # B's own punch ends with B's dial
    assert isinstance(done, PunchDone) and done.ok and done.final


def test_busy_self_no_vias_and_disabled() -> None:
    a, b, k = trio(config(max_active=1))
    assert a.puncher.start(b.id, [k.id], 0.0)
    c = make_peer(9, ["10.9.0.1:1"])
    (busy,) = a.puncher.start(c.id, [k.id], 0.0)
    assert isinstance(busy, PunchDone) and busy.reason == "busy"
    assert a.puncher.start(b.id, [k.id], 0.0) == []  # in progress: nothing new
    (none,) = a.puncher.start(c.id, [c.id], 0.0)
    assert isinstance(none, PunchDone) and none.reason == "no_common_node"
    off = make_peer(5, ["10.5.0.1:1"], config(enabled=False))
    (d,) = off.puncher.start(b.id, [k.id], 0.0)
    assert isinstance(d, PunchDone) and d.reason == "disabled"


def test_a_direct_connection_by_other_means_ends_the_punch() -> None:
    a, b, k = trio(a_smaller=True)
    pump = Pump([a, b, k])
    pump.take(a, a.puncher.start(b.id, [k.id], 0.0), 0.0)
    pump.run(0.045)  # REPLY arrived, A waits to dial
    (done,) = a.puncher.connected(b.id, 0.05)
    assert isinstance(done, PunchDone) and done.ok and not a.puncher.active(b.id)


def test_a_relayed_connection_does_not_end_the_punch_a_direct_one_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """NodeCore: a connection through a relay is what a punch is to replace. The lab saw h1's
    mesh reconnect to h2 through a relay while h1 punched, and the punch ended as ``direct``
    (``ok=True``) with the path still relayed. (That the puncher ends a punch in progress on
    ``connected`` is ``test_a_direct_connection_by_other_means_ends_the_punch``.)"""
    keys = [KeyPair.from_seed(bytes([i]) * 32) for i in (41, 42)]
    a, b = (NodeCore(k, NodeConfig(realm=REALM), Random(i), ContainerRegistry(f"r{i}")) for i, k in enumerate(keys))
    ended: list[float] = []

    def connected(peer: object, now: float) -> list[object]:
        ended.append(now)
        return [PunchDone(b.id, True, "direct", now, True)]

    monkeypatch.setattr(a.puncher, "active", lambda peer: peer == b.id)  # a punch to b in progress
    monkeypatch.setattr(a.puncher, "connected", connected)
    out = a.peer_connected(b.id, ("relay:x@10.1.0.1:7000/b",), True, 1.1, direct=False)
    assert ended == [] and not [o for o in out if isinstance(o, PunchDone)]
    out = a.peer_connected(b.id, ("10.3.0.1:7000",), True, 1.2)  # direct (the default)
    assert ended == [1.2] and [o for o in out if isinstance(o, PunchDone)]


def test_config_is_checked() -> None:
    for kw in ({"attempts": 0}, {"backoff": 0.0}, {"jitter": 1.5}, {"stagger": -1.0}, {"forward_rate": 0.0}):
        with pytest.raises(ConfigError):
            config(**kw)
    assert NodeConfig().punch == PunchConfig()


def test_node_core_routes_punch_messages_and_starts_automatically() -> None:
    """NodeCore: punch messages reach the puncher; a failed dial to a known peer starts a
    punch through a connected node (``punch.auto``), once (cooldown after a final failure)."""
    keys = [KeyPair.from_seed(bytes([i]) * 32) for i in (21, 22, 23)]
    cores = [NodeCore(k, NodeConfig(realm=REALM), Random(i), ContainerRegistry(f"c{i}")) for i, k in enumerate(keys)]
    a, b, k = cores
    for x, y in ((a, k), (b, k)):
        x.peer_connected(y.id, ("10.1.0.1:7000",), True, 0.0)
        y.peer_connected(x.id, (), False, 0.0)
    out = a.dial_failed(b.id, ("10.1.0.3:7000",), 1.0)
    fwd = [o for o in out if getattr(o, "peer", None) == k.id and isinstance(getattr(o, "message", None), PunchForward)]
    assert len(fwd) == 1 and a.puncher.active(b.id)
    msg = fwd[0].message  # type: ignore[attr-defined]
    assert msg.env.k == CONNECT
    relayed = [o for o in k.message(a.id, msg, 1.0) if isinstance(getattr(o, "message", None), PunchRelayed)]
    assert len(relayed) == 1 and relayed[0].peer == b.id  # type: ignore[attr-defined]
    assert a.dial_failed(b.id, ("10.1.0.3:7000",), 1.1) == [] or not any(
        isinstance(getattr(o, "message", None), PunchForward) for o in a.dial_failed(b.id, (), 1.2))
    refused = k.message(a.id, PunchForward(a.id.raw, msg.env), 1.3)
    assert any(isinstance(getattr(o, "message", None), PunchRefused) for o in refused)  # to A itself: "self"


def test_a_dial_pending_too_long_starts_a_punch() -> None:
    """A ``Dial`` still pending ``punch.auto_after`` seconds after it left the gate (a closed NAT
    drops its packets) starts a punch alongside it; one that connects in time does not."""
    keys = [KeyPair.from_seed(bytes([i]) * 32) for i in (31, 32, 33, 34)]
    cores = [NodeCore(k, NodeConfig(realm=REALM), Random(i), ContainerRegistry(f"d{i}")) for i, k in enumerate(keys)]
    a, b, k, c = cores
    a.peer_connected(k.id, ("10.1.0.1:7000",), True, 0.0)
    out = a._gate(Dial(b.id, ("10.1.0.3:7000",)), 1.0)
    assert any(isinstance(o, Dial) for o in out)
    a._gate(Dial(c.id, ("10.1.0.4:7000",)), 1.0)
    a.peer_connected(c.id, ("10.1.0.4:7000",), True, 1.5)  # C answered in time
    deadline = a.next_deadline()
    assert deadline is not None and deadline <= 1.0 + PunchConfig().auto_after
    out = a.timer(1.0 + PunchConfig().auto_after)
    fwd = [o for o in out if isinstance(o, Send) and isinstance(o.message, PunchForward)]
    assert [(o.peer, o.message.to) for o in fwd] == [(k.id, b.id.raw)]  # type: ignore[attr-defined]
    assert a.puncher.active(b.id) and not a.puncher.active(c.id)
