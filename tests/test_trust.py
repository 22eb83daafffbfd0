"""Unit tests of :mod:`quicmesh.core.trust` and :mod:`quicmesh.core.permissions`: realms and
their wire id, certificates (validity, subject, kind, foreign realm, tampering), revocation
lists, the Trust cache, renewal, PEM blocks, and permission matching and covering."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from quicmesh.core.permissions import EVERYTHING, NOTHING, Permissions, Rule, covers, matches, parse_rule_pattern
from quicmesh.core.trust import Authority, Certificate, Realm, RevocationList, Trust, pem_decode, pem_encode
from quicmesh.errors import NotAdmitted, TrustError
from quicmesh.identity import KeyPair

NOW = 1_800_000_000


@pytest.fixture
def auth() -> Authority:
    return Authority.create("prod")


def admit(auth: Authority, kp: KeyPair, perms: Permissions = EVERYTHING, *, serial: int = 1,
          not_before: int = NOW - 10, not_after: int = NOW + 100, kind: str = "node") -> Certificate:
    return auth.admit(kp.node_id, perms, not_before=not_before, not_after=not_after, serial=serial,
                      kind="client" if kind == "client" else "node")


# -- realms --------------------------------------------------------------------------------------------


def test_wire_id_depends_on_name_and_authority() -> None:
    k1, k2 = KeyPair.generate().node_id, KeyPair.generate().node_id
    assert Realm("a").wire_id == "a" and Realm("a").open
    ids = {Realm("a", k1).wire_id, Realm("a", k2).wire_id, Realm("b", k1).wire_id}
    assert len(ids) == 3 and all(i.startswith("r1.") and "a" != i for i in ids)
    assert Realm("a", k1).wire_id == Realm("a", k1).wire_id  # deterministic
    r = Realm("a", k1)
    assert Realm.from_file(r.to_file()) == r
    with pytest.raises(TrustError):
        Realm("a").to_file()
    for bad in (b"{}", b"not json", b'{"format": "quicmesh-realm/1", "name": "x", "authority": "zz"}'):
        with pytest.raises(TrustError):
            Realm.from_file(bad)
    for name in ("", "a b", "x" * 65):
        with pytest.raises(TrustError):
            Realm(name)


# -- certificates --------------------------------------------------------------------------------------


def test_certificate_checks(auth: Authority) -> None:
    kp, other = KeyPair.generate(), KeyPair.generate()
    c = admit(auth, kp)
    c2 = Certificate.decode(c.encode())
    assert c2 == c
    c2.check(auth.realm, NOW, subject=kp.node_id, kind="node")
    cases: dict[str, Callable[[], None]] = {
        "certificate expired": lambda: c.check(auth.realm, NOW + 101),
        "certificate not yet valid": lambda: c.check(auth.realm, NOW - 11),
        "certificate of another node": lambda: c.check(auth.realm, NOW, subject=other.node_id),
        "a node certificate, a client certificate is needed": lambda: c.check(auth.realm, NOW, kind="client"),
        "certificate of another realm": lambda: c.check(Authority.create("prod").realm, NOW),
        "certificates are not used in an open realm": lambda: c.check(Realm("prod"), NOW),
    }
    for reason, fn in cases.items():
        with pytest.raises(NotAdmitted) as e:
            fn()
        assert e.value.reason == reason
    # same realm name and wire id, but signed by another key (a forged certificate)
    forged = msgspec.structs.replace(c, signature=KeyPair.generate().sign(c.body()))
    with pytest.raises(NotAdmitted, match="another realm"):
        forged.check(auth.realm, NOW)


def test_tampered_certificates_are_refused(auth: Authority) -> None:
    kp = KeyPair.generate()
    c = admit(auth, kp, Permissions.parse(["publish:a.>"]))
    tampered = [
        msgspec.structs.replace(c, permissions=EVERYTHING),
        msgspec.structs.replace(c, not_after=c.not_after + 10**6),
        msgspec.structs.replace(c, serial=c.serial + 1),
        msgspec.structs.replace(c, subject=KeyPair.generate().node_id.raw),
        msgspec.structs.replace(c, kind="client"),
    ]
    refused = 0
    for t in tampered:
        with pytest.raises(NotAdmitted):
            Certificate.decode(t.encode()).check(auth.realm, NOW)
        refused += 1
    assert refused == len(tampered)
    # bit flips in the encoding: malformed or not verifying, never accepted
    data = bytearray(c.encode())
    accepted = 0
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        try:
            Certificate.decode(bytes(flipped)).check(auth.realm, NOW)
            accepted += 1
        except NotAdmitted:
            pass
    print(f"{accepted} of {len(data)} single-bit corruptions accepted")
    assert accepted == 0
    for junk in (b"", b"\x00" * 10, b"\x93\x01\x02\x03", b"x" * 9000):
        with pytest.raises(NotAdmitted, match="malformed"):
            Certificate.decode(junk)


def test_admit_rejects_bad_windows(auth: Authority) -> None:
    kp = KeyPair.generate()
    with pytest.raises(TrustError):
        admit(auth, kp, not_before=10, not_after=5)
    with pytest.raises(TrustError):
        admit(auth, kp, serial=-1)
    with pytest.raises(TrustError):
        Authority(auth.realm, KeyPair.generate())


# -- revocation lists ------------------------------------------------------------------------------------


def test_revocation_lists(auth: Authority) -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    ca, cb = admit(auth, a, serial=10), admit(auth, b, serial=20)
    rl1 = auth.revoke(None, now=NOW, serials=(10,))
    rl2 = auth.revoke(rl1, now=NOW, subjects=(b.node_id,))
    assert (rl1.version, rl2.version) == (1, 2) and rl2.serials == (10,) and rl2.subjects == (b.node_id.raw,)
    assert rl2.revokes(ca) and rl2.revokes(cb) and not rl1.revokes(cb)
    got = RevocationList.decode(rl2.encode())
    got.verify(auth.realm)
    with pytest.raises(NotAdmitted, match="revoked"):
        ca.check(auth.realm, NOW, revocations=rl1)
    forged = msgspec.structs.replace(rl2, version=99)
    with pytest.raises(TrustError):
        forged.verify(auth.realm)
    with pytest.raises(TrustError):
        rl2.verify(Authority.create("prod").realm)
    with pytest.raises(TrustError):
        RevocationList.decode(b"junk")


# -- Trust -------------------------------------------------------------------------------------------------


def test_trust_learns_caches_and_applies_revocations(auth: Authority) -> None:
    me, a, b = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    trust = Trust(auth.realm, certificate=admit(auth, me, serial=1))
    assert not trust.open and trust.wire_id == auth.realm.wire_id and trust.own_certificate
    ca = admit(auth, a, Permissions.parse(["publish:a.>"]), serial=2)
    cb = admit(auth, b, serial=3, kind="client")
    assert trust.learn(ca.encode(), NOW, subject=a.node_id, kind="node") == ca
    assert trust.learn(ca.encode(), NOW, subject=a.node_id, kind="node") == ca  # the cached path
    with pytest.raises(NotAdmitted, match="another node"):
        trust.learn(ca.encode(), NOW, subject=b.node_id)
    with pytest.raises(NotAdmitted, match="expired"):
        trust.learn(ca.encode(), NOW + 1000, subject=a.node_id)  # the cache checks time too
    with pytest.raises(NotAdmitted, match="no certificate"):
        trust.learn(b"", NOW)
    trust.learn(cb.encode(), NOW, subject=b.node_id, kind="client")
    assert trust.allowed(a.node_id, "publish", "a.x", NOW) and not trust.allowed(a.node_id, "publish", "b", NOW)
    assert trust.permissions_of(a.node_id, NOW + 1000) is None
    assert trust.rejected == 3
    revoked = trust.apply_revocations(auth.revoke(None, now=NOW, serials=(2,)))
    assert revoked == [a.node_id] and trust.revoked(b.node_id) is False
    assert trust.permissions_of(a.node_id, NOW) is None
    with pytest.raises(NotAdmitted, match="revoked"):
        trust.learn(ca.encode(), NOW, subject=a.node_id)
    # an older or equal version changes nothing; another realm's list is refused
    assert trust.apply_revocations(auth.revoke(None, now=NOW, serials=(3,))) == []
    with pytest.raises(TrustError):
        trust.apply_revocations(Authority.create("prod").revoke(None, now=NOW, serials=(3,)))


def test_open_realm_trust_admits_everyone() -> None:
    trust = Trust.open_realm("dev")
    assert trust.open and trust.own_certificate is None and trust.own_permissions == EVERYTHING
    assert trust.learn(None, NOW) is None
    assert trust.allowed(KeyPair.generate().node_id, "log", "x", NOW)


def test_renewal(auth: Authority) -> None:
    me = KeyPair.generate()
    trust = Trust(auth.realm, certificate=admit(auth, me, serial=1))
    trust.renew(admit(auth, me, serial=2, not_after=NOW + 10_000), NOW)
    assert trust.certificate is not None and trust.certificate.serial == 2
    assert Certificate.decode(trust.own_certificate or b"").serial == 2
    with pytest.raises(NotAdmitted, match="another node"):
        trust.renew(admit(auth, KeyPair.generate(), serial=3), NOW)
    with pytest.raises(NotAdmitted, match="expired"):
        trust.renew(admit(auth, me, serial=4, not_after=NOW - 1, not_before=NOW - 5), NOW)
    assert trust.certificate.serial == 2


def test_pem_blocks() -> None:
    data = bytes(range(256)) * 3
    text = pem_encode("QUICMESH CERTIFICATE", data)
    assert all(len(line) <= 64 for line in text.decode().splitlines())
    assert pem_decode("QUICMESH CERTIFICATE", b"# comment\n" + text) == data
    assert pem_decode("QUICMESH REVOCATIONS", text) is None
    with pytest.raises(TrustError):
        pem_decode("X", b"-----BEGIN X-----\nabc")
    with pytest.raises(TrustError):
        pem_decode("X", b"-----BEGIN X-----\n!!!\n-----END X-----\n")


# -- permissions ------------------------------------------------------------------------------------------


def test_matching_and_covering() -> None:
    assert matches(parse_rule_pattern(">"), "a") and matches(parse_rule_pattern(">"), "a.b.c")
    assert matches(parse_rule_pattern("a.>"), "a.b") and not matches(parse_rule_pattern("a.>"), "a")
    assert matches(parse_rule_pattern("a.*.c"), "a.x.c") and not matches(parse_rule_pattern("a.*.c"), "a.x.y")
    assert matches(parse_rule_pattern("*"), "a") and not matches(parse_rule_pattern("*"), "a.b")
    assert covers(parse_rule_pattern(">"), parse_rule_pattern("a.*"))
    assert covers(parse_rule_pattern("a.>"), parse_rule_pattern("a.b.>"))
    assert not covers(parse_rule_pattern("a.*"), parse_rule_pattern("a.>"))
    assert not covers(parse_rule_pattern("a.b"), parse_rule_pattern("a.*"))
    assert covers(parse_rule_pattern("a.*"), parse_rule_pattern("a.b"))
    for bad in ("", "a..b", "a.>.b", "a*", "a b", "x" * 10_000):
        with pytest.raises(ValueError):
            parse_rule_pattern(bad)


def test_permissions_allow_deny() -> None:
    p = Permissions.parse(["publish:a.>", "subscribe:a.>", "call:svc.*"], ["publish:a.secret", "subscribe:a.secret"])
    assert p.allows("publish", "a.x") and not p.allows("publish", "a.secret") and not p.allows("publish", "b")
    assert p.allows("call", "svc.echo") and not p.allows("call", "svc.a.b") and not p.allows("log", "a.x")
    assert p.allows_subscription("a.>") and p.allows_subscription("a.x") and not p.allows_subscription("b.>")
    assert not p.allows_subscription("a.secret") and not p.allows_subscription(">") and p.filters()
    assert not p.allows_subscription("bad..pattern")
    assert EVERYTHING.unrestricted and not p.unrestricted and not NOTHING.allows("publish", "a")
    assert p.describe()[0] == "allow publish:a.>" and str(Rule("log", "x")) == "log:x"
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(p), type=Permissions) == p
    for bad in (["fly:a"], ["publish"], ["publish:a b"]):
        with pytest.raises(ValueError):
            Permissions.parse(bad)
    with pytest.raises(ValueError):
        Permissions.parse([f"log:x{i}" for i in range(65)])
