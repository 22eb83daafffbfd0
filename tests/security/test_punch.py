"""#13 hole punching under attack: forged, unsigned, replayed and stale punch requests, requests
that claim another node's addresses, a flood through K, and non-members (each test prints its
figure)."""

from __future__ import annotations

import os
from random import Random

from punchkit import REALM, WALL, Pump, config, make_peer, trio

from quicmesh.core.effects import Send
from quicmesh.core.punch import PunchDial
from quicmesh.core.punch_messages import (
    CONNECT,
    PunchEnvelope,
    PunchForward,
    PunchRefused,
    PunchRelayed,
    sign_envelope,
)
from quicmesh.core.selfrecord import sign_record
from quicmesh.identity import KeyPair

N = 1_000


def _answers(outs: list[object]) -> int:
    return sum(1 for o in outs if isinstance(o, Send | PunchDial))


def test_forged_unsigned_and_altered_requests_are_refused() -> None:
    a, b, k = trio()
    rng = Random(7)
    good = sign_envelope(a.key, REALM, CONNECT, b.id, 1, int(WALL * 1000), a.record)
    answered = 0
    kinds = {"unsigned": 0, "random_signature": 0, "altered_record": 0, "altered_nonce": 0, "other_key": 0}
    mallory = KeyPair.from_seed(b"\x66" * 32)
    for i in range(N):
        kind = list(kinds)[i % len(kinds)]
        kinds[kind] += 1
        n = 10_000 + i
        if kind == "unsigned":
            env = PunchEnvelope(CONNECT, a.id.raw, b.id.raw, n, good.at, a.record, b"")
        elif kind == "random_signature":
            env = PunchEnvelope(CONNECT, a.id.raw, b.id.raw, n, good.at, a.record, rng.randbytes(64))
        elif kind == "altered_record":  # K (or anyone on the way) swaps in an address of its choice
            rec = a.record.__class__(a.record.id, ["203.0.113.9:443"], a.record.at, a.record.sig)
            env = PunchEnvelope(CONNECT, a.id.raw, b.id.raw, good.n, good.at, rec, good.sig)
        elif kind == "altered_nonce":
            env = PunchEnvelope(CONNECT, a.id.raw, b.id.raw, n, good.at, a.record, good.sig)
        else:  # signed by someone else, claiming to be A
            s = sign_envelope(mallory, REALM, CONNECT, b.id, n, good.at, a.record)
            env = PunchEnvelope(CONNECT, a.id.raw, b.id.raw, n, good.at, a.record, s.sig)
        answered += _answers(b.puncher.handle(k.id, PunchRelayed(a.id.raw, env), 0.0))
    refused = b.puncher.refused_by_reason
    print(f"{answered} of {N:,} forged punch requests answered ({kinds}); refused by reason {refused}")
    assert answered == 0 and refused == {"bad_signature": N}
    # the genuine one is answered, once; its replay is not
    assert _answers(b.puncher.handle(k.id, PunchRelayed(a.id.raw, good), 0.0)) == 1
    assert _answers(b.puncher.handle(k.id, PunchRelayed(a.id.raw, good), 0.1)) == 0
    assert b.puncher.refused_by_reason["replay"] == 1


def test_requests_claiming_another_nodes_addresses_are_refused() -> None:
    """A signs its envelope, but carries C's record (validly signed by C), or a record of its own
    about C's id, or K claims the envelope came from C: refused, nothing dialled."""
    a, b, k = trio()
    c = make_peer(7, ["198.51.100.7:7000"])
    at = int(WALL * 1000)
    cases = {
        "record_of_another_node": sign_envelope(a.key, REALM, CONNECT, b.id, 1, at, c.record),
        "record_signed_by_a_for_c": sign_envelope(
            a.key, REALM, CONNECT, b.id, 2, at,
            sign_record(a.key, REALM, ["198.51.100.7:7000"], 1).__class__(
                c.id.raw, ["198.51.100.7:7000"], 1, sign_record(a.key, REALM, ["198.51.100.7:7000"], 1).sig)),
        "stale": sign_envelope(a.key, REALM, CONNECT, b.id, 3, at - 31_000, a.record),
        "from_the_future": sign_envelope(a.key, REALM, CONNECT, b.id, 4, at + 31_000, a.record),
        "for_another_target": sign_envelope(a.key, REALM, CONNECT, c.id, 5, at, a.record),
        "other_realm": sign_envelope(a.key, "elsewhere", CONNECT, b.id, 6, at, a.record),
    }
    answered = 0
    for env in cases.values():
        answered += _answers(b.puncher.handle(k.id, PunchRelayed(a.id.raw, env), 0.0))
    good = sign_envelope(a.key, REALM, CONNECT, b.id, 7, at, a.record)
    answered += _answers(b.puncher.handle(k.id, PunchRelayed(c.id.raw, good), 0.0))  # K lies about the source
    refused = b.puncher.refused_by_reason
    print(f"{answered} of {len(cases) + 1} punch requests for someone else's addresses or stale answered; "
          f"refused by reason {refused}")
    assert answered == 0
    assert refused == {"bad_record": 2, "stale": 2, "wrong_target": 1, "bad_signature": 1, "wrong_source": 1}


def test_forwarding_rate_limit_holds_under_a_flood() -> None:
    """One member floods K with punch requests for 10 s; K forwards its burst plus its rate and
    refuses the rest (counted); a flood from 10,000 identities keeps K's table at its cap."""
    cfg = config(forward_rate=2.0, forward_burst=10, forward_sources=256)
    a, b, k = trio(cfg)
    env = sign_envelope(a.key, REALM, CONNECT, b.id, 1, int(WALL * 1000), a.record)
    flood = int(os.environ.get("QUICMESH_PUNCH_FLOOD", "10000"))
    forwarded = refused = 0
    for i in range(flood):
        now = 10.0 * i / flood
        for o in k.puncher.handle(a.id, PunchForward(b.id.raw, env), now):
            assert isinstance(o, Send)
            forwarded += o.peer == b.id
            refused += isinstance(o.message, PunchRefused)
    allowed = 10 + 2.0 * 10.0
    print(f"flood of {flood:,} punch requests in 10 s from one member: {forwarded} forwarded "
          f"(budget {allowed:.0f}: burst 10 + 2/s), {refused:,} refused 'rate'")
    assert forwarded <= allowed + 1 and forwarded >= allowed - 1
    assert refused == flood - forwarded == k.puncher.forward_refused_by_reason["rate"]
    # many identities: the budget table stays bounded
    ids = [KeyPair.from_seed(i.to_bytes(32, "big")).node_id for i in range(1, 2_001)]
    for x in ids:
        k.links.add(x)
        k.puncher.handle(x, PunchForward(b.id.raw, env), 20.0)
    stats = k.puncher._buckets.stats()
    print(f"2,000 sources: forwarding budget table holds {stats.size} of {stats.capacity} (peak {stats.peak})")
    assert stats.size <= 256 and stats.peak <= 256


def test_non_members_get_nothing_forwarded() -> None:
    a, b, k = trio(config())
    outsider = make_peer(8, ["192.0.2.8:7000"])
    k.members = {a.id, b.id}
    k.links.add(outsider.id)
    sent = 0
    for i in range(N):
        env = sign_envelope(outsider.key, REALM, CONNECT, b.id, i, int(WALL * 1000), outsider.record)
        outs = k.puncher.handle(outsider.id, PunchForward(b.id.raw, env), i * 0.001)
        sent += sum(1 for o in outs if isinstance(o, Send) and o.peer == b.id)
    # nor to an outsider, from a member
    env = sign_envelope(a.key, REALM, CONNECT, outsider.id, 1, int(WALL * 1000), a.record)
    sent += sum(1 for o in k.puncher.handle(a.id, PunchForward(outsider.id.raw, env), 2.0)
                if isinstance(o, Send) and o.peer == outsider.id)
    print(f"{sent} of {N + 1:,} punch requests from or to a non-member forwarded; "
          f"refused {k.puncher.forward_refused_by_reason}")
    assert sent == 0 and k.puncher.forward_refused_by_reason == {"not_member": N + 1}
    # members still get through
    pump = Pump([a, b, k])
    pump.take(a, a.puncher.start(b.id, [k.id], 0.0), 0.0)
    pump.run(1.0)
    assert len(pump.outputs(b, PunchDial)) == 1
