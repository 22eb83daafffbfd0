"""#14: the dialer's proof in its ``Hello``, bound to the connection (one round trip fewer).

The machine alone (no network): both ends get the same ``TlsDone.binding``; a listener that has
one verifies ``Hello.proof`` over it instead of sending a ``Challenge``; one without (or an older
release, which ignores the field) sends its ``Challenge`` and the dialer answers it as before.
The QUIC tests at the end check that real connections (a light client, two nodes) take the
short path, and what it saves."""

from __future__ import annotations

import asyncio

import pytest
from test_handshake import _authority_pair, closes, dialer, listener, one, run, sent

from quicmesh.config import NodeConfig
from quicmesh.config.discovery import DiscoveryConfig
from quicmesh.core import handshake as hs
from quicmesh.core.messages import Challenge, Hello, Proof, Refuse, Welcome
from quicmesh.core.trust import Authority
from quicmesh.errors import AuthenticationFailed, NotAdmitted
from quicmesh.identity import KeyPair
from quicmesh.runtime import quic_connection as qc
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node

BINDING = b"\x08listener\x08dialer00\x08odcid000"


def run_bound(
    d: hs.Handshake, lst: hs.Handshake, server: KeyPair, *, d_binding: bytes = BINDING,
    l_binding: bytes = BINDING, hello_decline: hs.Decline | None = None,
) -> tuple[list[hs.Output], list[hs.Output]]:
    """:func:`test_handshake.run` with both ends naming ``BINDING`` unless told otherwise."""
    return run(d, lst, server, d_binding=d_binding, l_binding=l_binding, hello_decline=hello_decline)


def test_the_proof_in_the_hello_saves_the_challenge_round_trip() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, expected=b.node_id), listener(b)
    d_out, l_out = run_bound(d, lst, b)
    assert d.established and lst.established and d.early and lst.early
    assert [type(m) for m in sent(d_out)] == [Hello]  # no Proof of its own
    assert [type(m) for m in sent(l_out)] == [Welcome]  # no Challenge
    hello = sent(d_out)[0]
    assert isinstance(hello, Hello) and len(hello.proof) == 64
    assert [o.stage for o in l_out if isinstance(o, hs.NeedAdmission)] == ["hello", "proof"]
    assert one(d_out, hs.Established) == hs.Established(b.node_id, "node", b"L")
    assert one(l_out, hs.Established) == hs.Established(a.node_id, "node", b"i1")
    rtt = one(d_out, hs.RttSample)
    assert isinstance(rtt, hs.RttSample) and rtt.seconds == pytest.approx(0.002)  # Hello -> Welcome


def test_observed_addresses_travel_in_the_hello_and_the_early_welcome() -> None:
    """#13 on the short path: the listener's report of the dialer's address, which the
    ``Challenge`` carried, rides in the ``Welcome``."""
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, expected=b.node_id), listener(b)
    d.remote, lst.remote = "192.0.2.1:7400", "198.51.100.9:40000"
    run_bound(d, lst, b)
    assert d.established and d.early
    assert lst.observed == "192.0.2.1:7400" and d.observed == "198.51.100.9:40000"


def test_a_listener_without_the_binding_sends_its_challenge_and_the_dialer_answers_it() -> None:
    """An older listener (or one whose runtime names no binding) ignores ``Hello.proof``."""
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, expected=b.node_id), listener(b)
    d_out, l_out = run_bound(d, lst, b, l_binding=b"")
    assert d.established and lst.established and not d.early and not lst.early
    assert [type(m) for m in sent(d_out)] == [Hello, Proof]
    assert [type(m) for m in sent(l_out)] == [Challenge, Welcome]


def test_a_dialer_without_the_binding_takes_the_challenge() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, expected=b.node_id), listener(b)
    d_out, l_out = run_bound(d, lst, b, d_binding=b"")
    assert d.established and lst.established and not lst.early
    hello = sent(d_out)[0]
    assert isinstance(hello, Hello) and hello.proof == b""
    assert [type(m) for m in sent(l_out)] == [Challenge, Welcome]


def _hello(a: KeyPair, b: KeyPair, proof: bytes) -> Hello:
    return Hello(version=hs.PROTOCOL_VERSION, realm="r", node_id=a.node_id.raw, expected=b.node_id.raw, proof=proof)


def _listener_answer(lst: hs.Handshake, hello: Hello, binding: bytes = BINDING) -> list[hs.Output]:
    assert lst.handle(hs.TlsDone(binding=binding), 0.0) == []
    out = lst.handle(hs.Received(hello), 0.0)
    assert isinstance(out[-1], hs.NeedAdmission) and out[-1].stage == "hello"
    return lst.handle(hs.Admit(), 0.0)


@pytest.mark.parametrize("case", ["other_connection", "other_listener", "other_key", "challenge_label", "garbage"])
def test_a_proof_not_made_for_this_connection_and_listener_is_refused(case: str) -> None:
    """A proof replayed from another connection (the listener draws new connection ids), made for
    another listener (a malicious node relaying it), signed by another key, or under the
    challenge's label is refused with ``auth``: 5 cases, 0 admitted."""
    a, b, mallory = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    made = {
        "other_connection": a.sign(hs.early_transcript(b"\x08another!" + BINDING[9:], a.node_id, b.node_id, "r")),
        "other_listener": a.sign(hs.early_transcript(BINDING, a.node_id, mallory.node_id, "r")),
        "other_key": mallory.sign(hs.early_transcript(BINDING, a.node_id, b.node_id, "r")),
        "challenge_label": a.sign(hs.auth_transcript(BINDING, a.node_id, b.node_id, "r")),
        "garbage": b"\x01" * 64,
    }[case]
    lst = listener(b)
    out = _listener_answer(lst, _hello(a, b, made))
    assert sent(out) == [Refuse(code="auth", reason="identity proof does not verify")]
    close = closes(out)[0]
    assert close.code == "auth" and close.counted == "auth"
    assert not lst.established and lst.closed
    assert not any(isinstance(o, hs.NeedAdmission) for o in out)  # refused before the capacity check


def test_the_hello_admission_comes_before_the_proof_is_verified() -> None:
    """A gateway at its client cap refuses at the Hello, as without the early proof: no signature
    is checked for a dialer it would not take."""
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, expected=b.node_id, role="client"), listener(b)
    d_out, l_out = run_bound(d, lst, b, hello_decline=hs.Decline("max_clients", "full"))
    assert sent(l_out) == [Refuse(code="max_clients", reason="full")]
    assert [o.stage for o in l_out if isinstance(o, hs.NeedAdmission)] == ["hello"]
    assert not d.established and closes(d_out)[0].code == "max_clients"


def test_a_valid_proof_in_the_hello_is_used_once() -> None:
    """After an early admission, a late ``Proof`` or ``Hello`` is the runtime's (the machine is
    done), and a second machine fed the same Hello under a new binding refuses it."""
    a, b = KeyPair.generate(), KeyPair.generate()
    proof = a.sign(hs.early_transcript(BINDING, a.node_id, b.node_id, "r"))
    first = listener(b)
    out = _listener_answer(first, _hello(a, b, proof))
    assert isinstance(out[-1], hs.NeedAdmission) and out[-1].stage == "proof"
    assert isinstance(sent(first.handle(hs.Admit(), 0.0))[0], Welcome)
    second = listener(b)
    out2 = _listener_answer(second, _hello(a, b, proof), binding=b"\x08fresh!!!" + BINDING[9:])
    assert closes(out2)[0].code == "auth"


def test_a_welcome_naming_another_node_closes_the_early_dialer() -> None:
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    d = dialer(a, expected=b.node_id)
    d.handle(hs.TlsDone(b.node_id, binding=BINDING), 0.0)
    out = d.handle(hs.Received(Welcome(node_id=c.node_id.raw)), 0.001)
    err = closes(out)[0].error
    assert isinstance(err, AuthenticationFailed) and not d.established


# -- authority mode ----------------------------------------------------------------------------------


def test_authority_mode_the_early_welcome_carries_the_listeners_certificate() -> None:
    d, lst, server, _ = _authority_pair()
    _, l_out = run_bound(d, lst, server)
    assert d.established and lst.established and d.early
    assert [type(m) for m in sent(l_out)] == [Welcome]
    assert d.peer_certificate is not None and d.peer_certificate.serial == 2
    assert lst.peer_permissions is not None and lst.peer_permissions.allows("publish", "a.b")


def test_authority_mode_an_early_dialer_refuses_a_listener_without_certificate() -> None:
    d, lst, server, _ = _authority_pair(listener_cert=False)
    d_out, _ = run_bound(d, lst, server)
    err = closes(d_out)[0].error
    assert isinstance(err, NotAdmitted) and err.reason == "listener: no certificate"
    assert Refuse(code="not_admitted", reason="no certificate") in sent(d_out)
    assert not d.established


def test_authority_mode_a_foreign_dialer_is_refused_at_the_hello_before_its_proof() -> None:
    d, lst, server, _ = _authority_pair(d_auth=Authority.create("prod"))
    _, l_out = run_bound(d, lst, server)
    assert sent(l_out) == [Refuse(code="not_admitted", reason="certificate of another realm")]
    assert not any(isinstance(o, hs.NeedAdmission) for o in l_out)
    assert not d.established and not lst.established


def test_authority_mode_the_revocation_list_catches_up_in_the_early_welcome() -> None:
    d, lst, server, auth = _authority_pair()
    assert lst.local.trust is not None and d.local.trust is not None
    outsider = KeyPair.generate().node_id
    lst.local.trust.apply_revocations(auth.revoke(None, now=1_800_000_000, subjects=(outsider,)))
    run_bound(d, lst, server)
    assert d.established and d.early
    got = d.local.trust.revocations
    assert got is not None and got.version == 1 and got.subjects == (outsider.raw,)


# -- over QUIC ---------------------------------------------------------------------------------------


class _Seen:
    """Handshake frames each QUIC connection sent, recorded at the runtime's output step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[str, str]] = []
        orig = qc.QuicConnection._run

        def record(conn: qc.QuicConnection, outputs: list[hs.Output]) -> None:
            self.sent += [("dialer" if conn.outbound else "listener", type(o.message).__name__)
                          for o in outputs if isinstance(o, hs.Send)]
            orig(conn, outputs)

        monkeypatch.setattr(qc.QuicConnection, "_run", record)


async def _client_cycle(address: str) -> None:
    """A light client connects, gets its own message back through the gateway, and closes."""
    client = await Client.connect(address, realm="early", reconnect=False)
    sub = await client.subscribe("t")
    await client.publish("t", b"x")
    assert (await asyncio.wait_for(sub.get(), 5)).payload == b"x"
    await client.close()


async def test_light_clients_and_nodes_connect_with_the_proof_in_the_hello(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _Seen(monkeypatch)
    node = await Node.start(NodeConfig(realm="early", discovery=DiscoveryConfig(local=False)))
    other: Node | None = None
    try:
        await _client_cycle(node.address)
        assert seen.sent == [("dialer", "Hello"), ("listener", "Welcome")], seen.sent
        assert node.transport.stats().handshakes_early_total == 1  # counted where operators see it
        assert node.health()["connections"]["handshakes_early_total"] == 1
        seen.sent.clear()
        other = await Node.start(NodeConfig(realm="early", bootstrap=(node.address,),
                                            discovery=DiscoveryConfig(local=False)))
        await other.wait_until(lambda: len(other.peers()) > 0 and len(node.peers()) > 0, timeout=10)
        assert seen.sent[:2] == [("dialer", "Hello"), ("listener", "Welcome")], seen.sent
        assert ("listener", "Challenge") not in seen.sent
    finally:
        if other is not None:
            await other.stop()
        await node.stop()


async def test_an_early_proof_from_one_connection_does_not_open_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over QUIC: every client's Hello is captured and the next client's Hello carries the one
    before it (a replay on a new connection, whose ids the listener drew anew): refused ``auth``,
    counted; 3 of 3 replays refused, and the gateway still admits an honest client after."""
    captured: list[bytes] = []
    orig = hs.Handshake._dialer_tls

    def replaying(self: hs.Handshake, ev: hs.TlsDone, now: float) -> list[hs.Output]:
        out = orig(self, ev, now)
        hello = out[-1].message if out and isinstance(out[-1], hs.Send) else None
        if isinstance(hello, Hello) and hello.proof:
            if captured:
                out[-1] = hs.Send(Hello(**{**{f: getattr(hello, f) for f in hello.__struct_fields__},
                                           "proof": captured[-1]}))
            captured.append(hello.proof)
        return out

    node = await Node.start(NodeConfig(realm="early", discovery=DiscoveryConfig(local=False)))
    try:
        key = KeyPair.generate()
        first = await Client.connect(node.address, realm="early", key=key, reconnect=False)
        await first.close()
        monkeypatch.setattr(hs.Handshake, "_dialer_tls", replaying)
        refused = 0
        for _ in range(4):
            try:
                c = await Client.connect(node.address, realm="early", key=key, reconnect=False)
                await c.close()
            except AuthenticationFailed:
                refused += 1
        assert refused == 3, f"{refused} of 3 replayed proofs refused"  # the first connect only captured
        assert node.transport.stats().auth_failures_total >= 3
        monkeypatch.undo()
        honest = await Client.connect(node.address, realm="early", key=key, reconnect=False)
        await honest.close()
    finally:
        await node.stop()


async def test_a_listener_without_a_binding_still_admits_an_early_dialer(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a gateway of an older release would: the listener's runtime names no binding, so it
    ignores the dialer's ``Hello.proof`` and challenges; the client connects and works."""
    seen = _Seen(monkeypatch)
    real = qc.QuicConnection._binding
    monkeypatch.setattr(qc.QuicConnection, "_binding", lambda conn: real(conn) if conn.outbound else b"")
    node = await Node.start(NodeConfig(realm="early", discovery=DiscoveryConfig(local=False)))
    try:
        await _client_cycle(node.address)
        assert seen.sent == [("dialer", "Hello"), ("listener", "Challenge"), ("dialer", "Proof"),
                             ("listener", "Welcome")], seen.sent
        assert node.transport.stats().handshakes_early_total == 0
    finally:
        await node.stop()
