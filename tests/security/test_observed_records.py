"""#13: signed self-records. A relay can neither alter a node's signed record of its addresses nor
bring an older one back; a verified record outranks unsigned third-party claims; a record of
another realm or about another node than the message names is refused."""

from __future__ import annotations

from random import Random

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import AddressBookConfig, MembershipConfig
from quicmesh.core.addressbook import AddressBook
from quicmesh.core.membership import HyParView
from quicmesh.core.mesh_messages import MForwardJoin, MShuffle, PeerInfo, SelfRecord
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.selfrecord import sign_record, verify_record
from quicmesh.core.wire import Codec
from quicmesh.identity import KeyPair, NodeId

REALM = "realm-wire-id"


def kp(i: int) -> KeyPair:
    return KeyPair.from_seed((i + 9100).to_bytes(32, "big"))


ME_KP, A_KP, RELAY_KP, OTHER_KP = kp(0), kp(1), kp(2), kp(3)
ME, A, RELAY = ME_KP.node_id, A_KP.node_id, RELAY_KP.node_id


def book() -> AddressBook:
    b = AddressBook(ME, AddressBookConfig(), ContainerRegistry("t"))
    b.realm = REALM
    return b


def test_a_record_round_trips_the_codec_and_verifies() -> None:
    rec = sign_record(A_KP, REALM, ["198.51.100.1:4000", "10.0.0.1:4000"], 1_000)
    codec = Codec(ALL_MESSAGES)
    msg = MForwardJoin("", A.raw, ["x:1"], 3, rec)
    back = codec.decode(codec.encode(msg))
    assert isinstance(back, MForwardJoin) and back.rec == rec
    assert verify_record(rec, REALM) == A and verify_record(rec, REALM, A) == A
    assert verify_record(rec, REALM, RELAY) is None  # about another node than the message names
    assert verify_record(rec, "another-realm") is None


def test_relays_cannot_alter_records() -> None:
    good = sign_record(A_KP, REALM, ["198.51.100.1:4000"], 5_000)
    rng = Random(13)
    b = book()
    forged = 0
    for i in range(1000):
        kind = i % 4
        if kind == 0:  # the relay swaps the addresses
            rec = SelfRecord(good.id, [f"203.0.113.{rng.randrange(1, 255)}:4000"], good.at, good.sig)
        elif kind == 1:  # ... or bumps ``at`` to beat a newer record
            rec = SelfRecord(good.id, good.addrs, good.at + 1 + i, good.sig)
        elif kind == 2:  # ... or signs the lie itself and claims it is A's
            lie = sign_record(RELAY_KP, REALM, ["203.0.113.66:4000"], good.at + i)
            rec = SelfRecord(A.raw, lie.addrs, lie.at, lie.sig)
        else:  # ... or flips a bit of the signature
            sig = bytearray(good.sig)
            sig[rng.randrange(len(sig))] ^= 1 << rng.randrange(8)
            rec = SelfRecord(good.id, good.addrs, good.at, bytes(sig))
        forged += b.add_record(rec, float(i), subject=A)
    print(f"{forged} of 1,000 altered records accepted ({b.records_refused} refused)")
    assert forged == 0 and b.records_refused == 1000 and b.get(A) is None
    assert b.add_record(good, 1000.0, subject=A)
    assert b.addresses(A) == ("198.51.100.1:4000",) and b.record(A) == good


def test_an_older_record_never_replaces_a_newer_one() -> None:
    b = book()
    new = sign_record(A_KP, REALM, ["198.51.100.2:4000"], 2_000)
    old = sign_record(A_KP, REALM, ["198.51.100.1:4000"], 1_000)
    assert b.add_record(new, 0.0, subject=A)
    replays = sum(b.add_record(old, float(t), subject=A) for t in range(100))
    print(f"{replays} of 100 replayed older records accepted")
    assert replays == 0 and b.records_stale == 100
    assert b.addresses(A) == ("198.51.100.2:4000",)


def test_a_record_outranks_unsigned_third_party_claims() -> None:
    b = book()
    b.add(A, ["203.0.113.9:1"], 0.0)  # a third party's unsigned claim
    assert b.add_record(sign_record(A_KP, REALM, ["198.51.100.1:4000"], 1), 1.0, subject=A)
    entry = b.get(A)
    assert entry is not None and entry.own and entry.addresses == ("198.51.100.1:4000",)
    b.add(A, ["203.0.113.9:1"], 2.0)  # later unsigned claims change nothing
    assert b.addresses(A) == ("198.51.100.1:4000",) and b.overruled == 1


def test_membership_takes_a_relayed_record_as_the_peers_own_word() -> None:
    reg = ContainerRegistry("t")
    b = book()
    hv = HyParView(ME, ("me:1",), "", MembershipConfig(), b, Random(1), reg)
    rec = sign_record(A_KP, REALM, ["198.51.100.1:4000"], 10)
    hv.handle(RELAY, MForwardJoin("", A.raw, ["203.0.113.1:1"], 3, rec), 0.0)
    entry = b.get(A)
    assert entry is not None and entry.own and entry.addresses == ("198.51.100.1:4000",)
    # a relay's forged record falls back to an ordinary third-party claim (never its own word)
    c = OTHER_KP.node_id
    forged = SelfRecord(c.raw, ["203.0.113.2:1"], 11, rec.sig)
    hv.handle(RELAY, MShuffle("", c.raw, ["203.0.113.2:1"], 0, [PeerInfo(A.raw, ["203.0.113.3:1"], rec)], forged), 1.0)
    other = b.get(c)
    assert other is not None and not other.own and b.records_refused == 1
    assert b.addresses(A) == ("198.51.100.1:4000",)  # the sample's stale unsigned claim changed nothing
    # what this node relays on is the peer's record as it was signed
    assert hv.info(A).rec == rec


def test_own_record_is_signed_over_what_is_announced() -> None:
    rec = sign_record(ME_KP, REALM, ["10.0.0.1:4000"], 7)
    assert isinstance(ME, NodeId) and verify_record(rec, REALM, ME) == ME
    # an address book never takes a record about its own node from others
    assert not book().add_record(rec, 0.0)
