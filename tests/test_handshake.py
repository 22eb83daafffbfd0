"""The sans-IO handshake machine and the duplicate rule, without any network or event loop."""

from __future__ import annotations

import itertools

import pytest

from quicmesh.core import handshake as hs
from quicmesh.core.messages import Challenge, Hello, Ping, Proof, Refuse, Welcome
from quicmesh.core.permissions import Permissions
from quicmesh.core.trust import Authority, Kind, Trust
from quicmesh.core.wire import Message
from quicmesh.errors import (
    AdmissionRefused,
    AuthenticationFailed,
    HandshakeTimeout,
    NotAdmitted,
    PeerIdMismatch,
    RealmMismatch,
)
from quicmesh.identity import KeyPair, NodeId

TIMEOUT = 10.0


class Nonces:
    """A deterministic nonce source: 32 bytes counting up."""

    def __init__(self) -> None:
        self._n = itertools.count(1)

    def __call__(self, n: int) -> bytes:
        return next(self._n).to_bytes(n, "big")


def local(kp: KeyPair, realm: str = "r", instance: bytes = b"i1", role: str = "node") -> hs.Local:
    return hs.Local(kp.node_id, realm, instance, role)


def dialer(kp: KeyPair, *, realm: str = "r", expected: NodeId | None = None, role: str = "node",
           sign: object = None) -> hs.Handshake:
    return hs.Handshake(local(kp, realm, role=role), dialer=True, now=0.0, timeout=TIMEOUT,
                        sign=sign or kp.sign, nonce=Nonces(), expected=expected)  # type: ignore[arg-type]


def listener(kp: KeyPair, *, realm: str = "r", nonces: Nonces | None = None) -> hs.Handshake:
    return hs.Handshake(local(kp, realm, instance=b"L"), dialer=False, now=0.0, timeout=TIMEOUT,
                        sign=kp.sign, nonce=nonces or Nonces())


def sent(outputs: list[hs.Output]) -> list[Message]:
    return [o.message for o in outputs if isinstance(o, hs.Send)]


def closes(outputs: list[hs.Output]) -> list[hs.Close]:
    return [o for o in outputs if isinstance(o, hs.Close)]


def one(outputs: list[hs.Output], kind: type) -> object:
    found = [o for o in outputs if isinstance(o, kind)]
    assert len(found) == 1, outputs
    return found[0]


def run(
    d: hs.Handshake, lst: hs.Handshake, server: KeyPair, *, admit: bool = True, d_binding: bytes = b"",
    l_binding: bytes = b"", hello_decline: hs.Decline | None = None,
) -> tuple[list[hs.Output], list[hs.Output]]:
    """Drive both machines to the end; every admission request is answered ``Admit`` (or stops;
    the Hello's with ``hello_decline`` when given). The bindings go in the ``TlsDone`` events
    (#14: empty, the ``Challenge`` round trip)."""
    d_out = d.handle(hs.TlsDone(server.node_id, binding=d_binding), 0.0)
    lst_out = lst.handle(hs.TlsDone(binding=l_binding), 0.0)
    all_d, all_l = list(d_out), list(lst_out)
    pending = [("l", m) for m in sent(d_out)]
    now = 0.0
    while pending:
        side, m = pending.pop(0)
        now += 0.001
        machine = lst if side == "l" else d
        out = machine.handle(hs.Received(m), now)
        while admit and out and isinstance(out[-1], hs.NeedAdmission):
            (all_l if side == "l" else all_d).extend(out)
            decline = hello_decline if out[-1].stage == "hello" else None
            out = machine.handle(decline or hs.Admit(), now)
        (all_l if side == "l" else all_d).extend(out)
        pending += [("d" if side == "l" else "l", x) for x in sent(out)]
    return all_d, all_l


def test_good_path_both_established() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, expected=b.node_id), listener(b)
    d_out, l_out = run(d, lst, b)
    assert d.established and lst.established
    est_d = one(d_out, hs.Established)
    est_l = one(l_out, hs.Established)
    assert est_d == hs.Established(b.node_id, "node", b"L")
    assert est_l == hs.Established(a.node_id, "node", b"i1")
    assert [type(m) for m in sent(d_out)] == [Hello, Proof]
    assert [type(m) for m in sent(l_out)] == [Challenge, Welcome]
    stages = [o.stage for o in l_out if isinstance(o, hs.NeedAdmission)]
    assert stages == ["hello", "proof"]
    assert any(isinstance(o, hs.RttSample) for o in d_out) and any(isinstance(o, hs.RttSample) for o in l_out)
    assert d.next_deadline() is None and lst.next_deadline() is None
    assert lst.handle(hs.Received(Ping(seq=1)), 1.0) == []  # established: frames are the runtime's


def _to_proof(a: KeyPair, b: KeyPair, lst: hs.Handshake) -> bytes:
    """Feed the listener a Hello from ``a`` and admit it; return the challenge nonce."""
    assert lst.handle(hs.TlsDone(), 0.0) == []
    out = lst.handle(hs.Received(Hello(version=1, realm="r", node_id=a.node_id.raw, expected=b.node_id.raw)), 0.0)
    assert isinstance(out[-1], hs.NeedAdmission) and out[-1].stage == "hello"
    chal = sent(lst.handle(hs.Admit(), 0.0))[0]
    assert isinstance(chal, Challenge) and len(chal.nonce) == hs.NONCE_LEN
    return chal.nonce


def test_bad_proof_refused_auth() -> None:
    a, b, mallory = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    lst = listener(b)
    nonce = _to_proof(a, b, lst)
    forged = mallory.sign(hs.auth_transcript(nonce, a.node_id, b.node_id, "r"))
    out = lst.handle(hs.Received(Proof(signature=forged)), 0.01)
    assert sent(out) == [Refuse(code="auth", reason="identity proof does not verify")]
    (c,) = closes(out)
    assert (c.code, c.counted, c.send) == ("auth", "auth", True)
    assert lst.closed and not any(isinstance(o, hs.Established) for o in out)


def test_replayed_proof_meets_a_new_nonce() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    nonces = Nonces()
    first = listener(b, nonces=nonces)
    nonce1 = _to_proof(a, b, first)
    proof = a.sign(hs.auth_transcript(nonce1, a.node_id, b.node_id, "r"))
    out = first.handle(hs.Received(Proof(signature=proof)), 0.01)
    assert isinstance(out[-1], hs.NeedAdmission)
    # an eavesdropper replays the same proof on a new connection: the listener's nonce changed
    second = listener(b, nonces=nonces)
    nonce2 = _to_proof(a, b, second)
    assert nonce2 != nonce1
    out = second.handle(hs.Received(Proof(signature=proof)), 0.01)
    assert closes(out)[0].code == "auth" and second.closed


def test_relayed_challenge_from_a_third_node_fails() -> None:
    """A malicious listener M relays the challenge of a third node C to dialer A: A signs a
    transcript naming M (the listener it authenticated by TLS), so C refuses the proof."""
    a, m, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    at_c = listener(c)
    nonce = _to_proof(a, c, at_c)
    d = dialer(a, expected=m.node_id)
    d.handle(hs.TlsDone(m.node_id), 0.0)
    proof = sent(d.handle(hs.Received(Challenge(nonce=nonce)), 0.01))[0]
    assert isinstance(proof, Proof)
    out = at_c.handle(hs.Received(proof), 0.02)
    assert closes(out)[0].code == "auth"


def test_realm_mismatch_refused_and_surfaces_at_the_dialer() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, realm="red"), listener(b, realm="blue")
    d_out, l_out = run(d, lst, b)
    (lc,) = closes(l_out)
    assert (lc.code, lc.counted) == ("realm", "realm")
    (dc,) = closes(d_out)
    assert dc.code == "realm" and not dc.send and isinstance(dc.error, RealmMismatch)
    assert d.closed and lst.closed


def test_version_and_self_and_expected_checks() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    lst = listener(b)
    lst.handle(hs.TlsDone(), 0.0)
    out = lst.handle(hs.Received(Hello(version=99, realm="r", node_id=a.node_id.raw)), 0.0)
    assert closes(out)[0].code == "version"
    lst = listener(b)
    lst.handle(hs.TlsDone(), 0.0)
    out = lst.handle(hs.Received(Hello(version=1, realm="r", node_id=b.node_id.raw)), 0.0)
    assert closes(out)[0].code == "peer_id"
    lst = listener(b)
    lst.handle(hs.TlsDone(), 0.0)
    other = KeyPair.generate().node_id.raw
    out = lst.handle(hs.Received(Hello(version=1, realm="r", node_id=a.node_id.raw, expected=other)), 0.0)
    assert closes(out)[0].code == "peer_id"
    # the dialer checks the certificate's id against the one it expected, and against itself
    d = dialer(a, expected=b.node_id)
    (c,) = closes(d.handle(hs.TlsDone(KeyPair.generate().node_id), 0.0))
    assert c.code == "peer_id" and isinstance(c.error, PeerIdMismatch)
    d = dialer(a)
    assert closes(d.handle(hs.TlsDone(a.node_id), 0.0))[0].code == "peer_id"
    d = dialer(a)
    (c,) = closes(d.handle(hs.TlsDone(None, "not an Ed25519 key"), 0.0))
    assert c.code == "auth" and isinstance(c.error, AuthenticationFailed)


@pytest.mark.parametrize("early", [Ping(seq=1), Welcome(node_id=b"x" * 32), Proof(signature=b"s")])
def test_frames_before_hello_refused(early: Message) -> None:
    lst = listener(KeyPair.generate())
    lst.handle(hs.TlsDone(), 0.0)
    out = lst.handle(hs.Received(early), 0.0)
    assert [m.code for m in sent(out) if isinstance(m, Refuse)] == ["protocol"]
    assert closes(out)[0].counted == "protocol" and lst.closed


def test_frames_before_welcome_refused_at_both_ends() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    # the dialer, waiting for its Welcome, gets an application frame: protocol
    d = dialer(a)
    d.handle(hs.TlsDone(b.node_id), 0.0)
    d.handle(hs.Received(Challenge(nonce=bytes(32))), 0.0)
    assert d.phase is hs.Phase.AWAIT_WELCOME
    out = d.handle(hs.Received(Ping(seq=1)), 0.0)
    (c,) = closes(out)
    assert c.code == "protocol" and c.counted is None and d.closed
    # the listener, deciding on admission (e.g. a parked attempt), gets a frame: protocol
    lst = listener(b)
    nonce = _to_proof(a, b, lst)
    lst.handle(hs.Received(Proof(signature=a.sign(hs.auth_transcript(nonce, a.node_id, b.node_id, "r")))), 0.0)
    assert lst.phase is hs.Phase.ADMITTING
    out = lst.handle(hs.Received(Ping(seq=2)), 0.0)
    assert closes(out)[0].code == "protocol"
    assert lst.handle(hs.Admit(), 0.0) == []  # closed: a late answer does nothing


def test_welcome_naming_another_node_fails() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    d = dialer(a)
    d.handle(hs.TlsDone(b.node_id), 0.0)
    d.handle(hs.Received(Challenge(nonce=bytes(32))), 0.0)
    (c,) = closes(d.handle(hs.Received(Welcome(node_id=KeyPair.generate().node_id.raw)), 0.0))
    assert c.code == "auth" and isinstance(c.error, AuthenticationFailed)


def test_admission_declined_at_hello_and_after_proof() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    lst = listener(b)
    lst.handle(hs.TlsDone(), 0.0)
    out = lst.handle(hs.Received(Hello(version=1, realm="r", node_id=a.node_id.raw, role="client")), 0.0)
    need = out[-1]
    assert isinstance(need, hs.NeedAdmission) and (need.stage, need.role) == ("hello", "client")
    out = lst.handle(hs.Decline("max_clients", "1 clients held"), 0.0)
    assert sent(out) == [Refuse(code="max_clients", reason="1 clients held")]
    assert closes(out)[0].counted == "max_clients"
    # at the dialer, a Refuse becomes the typed error
    d = dialer(a, role="client")
    d.handle(hs.TlsDone(b.node_id), 0.0)
    (c,) = closes(d.handle(hs.Received(Refuse(code="max_clients", reason="full")), 0.0))
    assert isinstance(c.error, AdmissionRefused) and c.error.reason == "max_clients" and not c.send


def test_unknown_role_refused() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    lst = listener(b)
    lst.handle(hs.TlsDone(), 0.0)
    out = lst.handle(hs.Received(Hello(version=1, realm="r", node_id=a.node_id.raw, role="admin")), 0.0)
    assert closes(out)[0].code == "protocol"


def test_timeout_is_driven_by_the_time_argument() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    lst = listener(b)
    assert lst.next_deadline() == TIMEOUT
    assert lst.handle(hs.TimerFired(), TIMEOUT - 0.001) == []  # early: nothing happens
    (c,) = closes(lst.handle(hs.TimerFired(), TIMEOUT))
    assert (c.code, c.counted) == ("timeout", "handshake_timeout") and lst.ended_in is hs.Phase.TLS
    d = dialer(a)
    d.handle(hs.TlsDone(b.node_id), 0.0)
    (c,) = closes(d.handle(hs.TimerFired(), TIMEOUT + 1))
    assert c.counted is None and isinstance(c.error, HandshakeTimeout)


def test_refusal_error_mapping() -> None:
    assert isinstance(hs.refusal_error("max_connections", ""), AdmissionRefused)
    assert isinstance(hs.refusal_error("realm", ""), RealmMismatch)
    assert isinstance(hs.refusal_error("peer_id", ""), AuthenticationFailed)


# -- the duplicate rule ----------------------------------------------------------------------------


def _ids() -> tuple[NodeId, NodeId]:
    x, y = KeyPair.generate().node_id, KeyPair.generate().node_id
    return (x, y) if x < y else (y, x)


def test_duplicate_rule_smaller_dialer_survives_on_both_sides() -> None:
    small, large = _ids()
    by_small, by_large = hs.Link(dialer=small, instance=b"i"), hs.Link(dialer=large, instance=b"i")
    # whichever connection each side saw first, both keep the one dialed by the smaller id
    assert hs.duplicate_survivor(by_small, by_large) == "existing"
    assert hs.duplicate_survivor(by_large, by_small) == "new"


def test_duplicate_rule_same_dialer_newer_wins_and_restart_wins_at_once() -> None:
    small, large = _ids()
    assert hs.duplicate_survivor(hs.Link(small, b"i"), hs.Link(small, b"i")) == "new"
    # the peer restarted (another instance): its new connection wins even against the tie-break
    assert hs.duplicate_survivor(hs.Link(small, b"old"), hs.Link(large, b"new")) == "new"
    # a client's new connection always supersedes its previous one
    assert hs.duplicate_survivor(hs.Link(small, b"i"), hs.Link(large, b"i"), role="client") == "new"


def test_should_park_only_the_smaller_side_with_its_dial_in_flight() -> None:
    small, large = _ids()
    assert hs.should_park(small, large, own_dial_in_flight=True)
    assert not hs.should_park(large, small, own_dial_in_flight=True)
    assert not hs.should_park(small, large, own_dial_in_flight=False)
    # a dial the peer has not answered (TLS not done) holds nothing: it may run for the whole
    # handshake timeout, longer than the peer's attempt may stay silent
    assert not hs.should_park(small, large, own_dial_in_flight=True, own_dial_answered=False)
    # a direct path beats a relayed one before the ids do
    assert not hs.should_park(small, large, own_dial_in_flight=True, own_relayed=True)
    assert hs.should_park(large, small, own_dial_in_flight=True, theirs_relayed=True)
    assert hs.should_park(small, large, own_dial_in_flight=True, own_relayed=True, theirs_relayed=True)


# -- authority mode (#11) ------------------------------------------------------------------------------

_WALL = 1_800_000_000.0


def _authority_pair(
    *, dialer_cert: bool = True, listener_cert: bool = True, role: str = "node", d_auth: Authority | None = None,
) -> tuple[hs.Handshake, hs.Handshake, KeyPair, Authority]:
    auth = Authority.create("prod")
    other = d_auth or auth
    a, b = KeyPair.generate(), KeyPair.generate()
    kind: Kind = "client" if role == "client" else "node"
    ca = other.admit(a.node_id, Permissions.parse(["publish:a.>"]), not_before=int(_WALL) - 10,
                     not_after=int(_WALL) + 10, serial=1, kind=kind)
    cb = auth.admit(b.node_id, Permissions.parse(["publish:>"]), not_before=int(_WALL) - 10,
                    not_after=int(_WALL) + 10, serial=2)
    ta = Trust(other.realm, certificate=ca if dialer_cert else None)
    tb = Trust(auth.realm, certificate=cb if listener_cert else None)
    d = hs.Handshake(hs.Local(a.node_id, ta.wire_id, b"i", role, ta, _WALL), dialer=True, now=0.0, timeout=TIMEOUT,
                     sign=a.sign, nonce=Nonces())
    lst = hs.Handshake(hs.Local(b.node_id, tb.wire_id, b"L", "node", tb, _WALL), dialer=False, now=0.0,
                       timeout=TIMEOUT, sign=b.sign, nonce=Nonces())
    return d, lst, b, auth


def test_authority_mode_both_sides_check_certificates() -> None:
    d, lst, server, _ = _authority_pair()
    d_out, _ = run(d, lst, server)
    assert d.established and lst.established
    assert lst.peer_permissions is not None and lst.peer_permissions.allows("publish", "a.b")
    assert not lst.peer_permissions.allows("publish", "b")
    assert d.peer_certificate is not None and d.peer_certificate.serial == 2
    hello = next(m for m in sent(d_out) if isinstance(m, Hello))
    assert hello.realm.startswith("r1.") and "prod" not in hello.realm and hello.cert


@pytest.mark.parametrize(("case", "reason"), [
    ("no_dialer_cert", "no certificate"),
    ("foreign", "certificate of another realm"),
    ("client_without_token", "no certificate"),
])
def test_authority_mode_refusals_name_only_the_certificate(case: str, reason: str) -> None:
    if case == "no_dialer_cert":
        d, lst, server, _ = _authority_pair(dialer_cert=False)
    elif case == "foreign":
        d, lst, server, _ = _authority_pair(d_auth=Authority.create("prod"))
    else:
        d, lst, server, _ = _authority_pair(dialer_cert=False, role="client")
    d_out, l_out = run(d, lst, server)
    refuse = one(l_out, hs.Send)
    assert isinstance(refuse, hs.Send) and refuse.message == Refuse(code="not_admitted", reason=reason)
    err = closes(d_out)[0].error
    assert isinstance(err, NotAdmitted) and err.reason == reason
    assert not d.established and not lst.established


def test_dialer_refuses_a_listener_without_certificate() -> None:
    d, lst, server, _ = _authority_pair(listener_cert=False)
    d_out, _ = run(d, lst, server)
    err = closes(d_out)[0].error
    assert isinstance(err, NotAdmitted) and err.reason == "listener: no certificate"
    assert Refuse(code="not_admitted", reason="no certificate") in sent(d_out)
    assert not any(isinstance(m, Proof) for m in sent(d_out))  # nothing proven to an unadmitted listener


def test_open_realm_refusal_names_no_realm() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, realm="alpha"), listener(b, realm="beta")
    d_out, l_out = run(d, lst, b)
    err = closes(d_out)[0].error
    assert isinstance(err, RealmMismatch)
    texts = [str(err), *(m.reason for m in sent(l_out) if isinstance(m, Refuse))]
    assert not any("alpha" in t or "beta" in t for t in texts)


def test_a_dialer_with_an_older_revocation_list_catches_up_in_the_handshake() -> None:
    d, lst, server, auth = _authority_pair()
    assert lst.local.trust is not None and d.local.trust is not None
    outsider = KeyPair.generate().node_id
    lst.local.trust.apply_revocations(auth.revoke(None, now=int(_WALL), subjects=(outsider,)))
    run(d, lst, server)
    assert d.established
    got = d.local.trust.revocations
    assert got is not None and got.version == 1 and got.subjects == (outsider.raw,)
    # a list the authority did not sign is ignored (and the handshake goes on)
    d2, lst2, server2, _ = _authority_pair()
    assert lst2.local.trust is not None and d2.local.trust is not None
    lst2.local.trust.revocations = Authority.create("prod").revoke(None, now=int(_WALL), subjects=(outsider,))
    run(d2, lst2, server2)
    assert d2.established and d2.local.trust.revocations is None


def test_duplicate_rule_a_direct_path_beats_a_relayed_one_on_both_sides() -> None:
    small, large = _ids()
    relayed_by_small = hs.Link(small, b"i", relayed=True)
    direct_by_large = hs.Link(large, b"i")
    # the tie-break alone would keep the smaller dialer's connection: the direct one wins instead
    assert hs.duplicate_survivor(relayed_by_small, direct_by_large) == "new"
    assert hs.duplicate_survivor(direct_by_large, relayed_by_small) == "existing"
    # two relayed (or two direct) connections: the usual tie-break
    assert hs.duplicate_survivor(hs.Link(small, b"i", True), hs.Link(large, b"i", True)) == "existing"


def test_duplicate_rule_a_stale_connection_loses_to_a_live_one_on_both_sides() -> None:
    small, large = _ids()
    # the case CI met (tests/test_lab_relay.py): the smaller node dialed through a relay that then
    # died; the larger node dials again through another relay before the old connection timed out
    old = hs.Link(small, b"i", relayed=True, stale=True)
    new = hs.Link(large, b"i", relayed=True)
    assert hs.duplicate_survivor(hs.Link(small, b"i", True), new) == "existing"  # live: the tie-break
    assert hs.duplicate_survivor(old, new) == "new"  # stale: the new one, whoever dialed it
    assert hs.duplicate_survivor(new, old) == "existing"  # a stale newcomer never wins
    # staleness outranks the path: a silent direct connection (its NAT mapping expired) loses too
    assert hs.duplicate_survivor(hs.Link(small, b"i", stale=True), hs.Link(large, b"i", relayed=True)) == "new"
    # a restart still wins at once, stale or not
    assert hs.duplicate_survivor(hs.Link(small, b"old"), hs.Link(large, b"new", stale=True)) == "new"
