"""#11: a hostile FORWARDJOIN/SHUFFLE/FIND ``ttl`` and third-party address claims.

* A walk's ``ttl`` is refused by the codec below 0 and above ``MAX_WALK_TTL``; what a receiver
  accepts is clamped to its own walk length, so a hostile FORWARDJOIN does no more than the last
  hop of a legitimate walk.
* What a peer says about itself outranks what others claim about it: relayed addresses (SHUFFLE,
  SHUFFLE_REPLY, FORWARDJOIN, FIND) never replace a peer's own, and only fill in once its own
  entry expired.
"""

from __future__ import annotations

from random import Random

import msgspec
import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import AddressBookConfig, MembershipConfig
from quicmesh.core.addressbook import AddressBook
from quicmesh.core.membership import HvSend, HyParView
from quicmesh.core.mesh_messages import (
    MAX_WALK_TTL,
    MFind,
    MForwardJoin,
    MJoin,
    MNeighbor,
    MShuffle,
    MShuffleReply,
    PeerInfo,
)
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.wire import Codec
from quicmesh.errors import MalformedFrame
from quicmesh.identity import KeyPair, NodeId


def nid(i: int) -> NodeId:
    return KeyPair.from_seed((i + 7000).to_bytes(32, "big")).node_id


ME, X, Y, Z = nid(0), nid(1), nid(2), nid(3)


def overlay(registry: ContainerRegistry, ttl: float = 3600.0) -> HyParView:
    book = AddressBook(ME, AddressBookConfig(ttl=ttl), registry)
    return HyParView(ME, ("me:1",), "", MembershipConfig(), book, Random(1), registry)


@pytest.mark.parametrize("ttl", [-1, -(2**63), MAX_WALK_TTL + 1, 2**63 - 1, 2**64 - 1])
def test_walk_ttl_out_of_range_is_refused_at_decode(ttl: int) -> None:
    codec = Codec(ALL_MESSAGES)
    refused = 0
    for tag, extra in (("m.fjoin", {"peer": X.raw}), ("m.shuf", {"origin": X.raw, "peers": []}),
                       ("m.find", {"origin": X.raw})):
        body = msgspec.msgpack.encode({"t": tag, "s": "" if tag != "m.find" else "a", "addrs": [], "ttl": ttl, **extra})
        with pytest.raises(MalformedFrame):
            codec.decode(body)
        refused += 1
    print(f"ttl={ttl}: {refused} of 3 walk messages refused at decode")
    assert refused == 3


def test_hostile_forward_join_ttl_is_clamped_to_the_receivers_walk(registry: ContainerRegistry) -> None:
    hv = overlay(registry)
    for p in (Y, Z, nid(4)):  # three active neighbours: the walk goes on
        hv.handle(p, MJoin("", [f"{p.short()}:1"]), 0.0)
    out = hv.handle(Y, MForwardJoin("", X.raw, ["x:1"], MAX_WALK_TTL), 0.0)
    sends = [o.message for o in out if isinstance(o, HvSend) and isinstance(o.message, MForwardJoin)]
    arwl = MembershipConfig().active_random_walk
    print(f"FORWARDJOIN ttl {MAX_WALK_TTL} -> forwarded with ttl {sends[0].ttl} (ARWL {arwl})")
    assert len(sends) == 1 and sends[0].ttl == arwl - 1
    assert not hv.is_active(X)


def test_own_addresses_outrank_third_party_claims(registry: ContainerRegistry) -> None:
    hv = overlay(registry, ttl=100.0)
    book = hv.book
    hv.handle(X, MNeighbor("", False, ["x-own:1"]), 0.0)  # X speaks for itself
    evil = ["evil:9"]
    claims = [
        (Y, MShuffle("", Y.raw, ["y:1"], 0, [PeerInfo(X.raw, evil)])),
        (Y, MShuffleReply("", [PeerInfo(X.raw, evil)])),
        (Y, MForwardJoin("", X.raw, evil, 3)),
        (Z, MShuffle("", X.raw, evil, 0, [])),  # a walk claiming to come from X, sent by Z
    ]
    for t, (sender, msg) in enumerate(claims, 1):
        hv.handle(sender, msg, float(t))
    kept = book.addresses(X)
    print(f"{len(claims)} third-party claims about X: X's addresses {kept}, overruled {book.overruled}")
    assert kept == ("x-own:1",)
    assert book.overruled == len(claims)
    # X itself may change its addresses at any time
    hv.handle(X, MNeighbor("", False, ["x-new:1"]), 10.0)
    assert book.addresses(X) == ("x-new:1",)


def test_third_party_claims_fill_in_when_nothing_own_is_known(registry: ContainerRegistry) -> None:
    hv = overlay(registry, ttl=100.0)
    book = hv.book
    hv.handle(Y, MShuffleReply("", [PeerInfo(X.raw, ["x-heard:1"])]), 0.0)
    assert book.addresses(X) == ("x-heard:1",)  # nothing own known: the claim fills in
    hv.handle(Z, MShuffleReply("", [PeerInfo(X.raw, ["x-heard:2"])]), 1.0)
    assert book.addresses(X) == ("x-heard:2",)  # third party over third party: newest wins
    hv.handle(X, MNeighbor("", False, ["x-own:1"]), 2.0)
    assert book.addresses(X) == ("x-own:1",)
    # third-party claims do not keep X's own entry alive; once it expired they fill in again
    for t in range(3, 100, 10):
        hv.handle(Y, MShuffleReply("", [PeerInfo(X.raw, ["x-heard:3"])]), float(t))
    assert book.addresses(X) == ("x-own:1",)
    book.expire(2.0 + 100.0 + 1.0)
    hv.handle(Y, MShuffleReply("", [PeerInfo(X.raw, ["x-heard:3"])]), 104.0)
    print(f"after X's own entry expired: {book.addresses(X)}")
    assert book.addresses(X) == ("x-heard:3",)


def test_find_walk_addresses_are_own_only_from_the_origin(registry: ContainerRegistry) -> None:
    book = AddressBook(ME, AddressBookConfig(), registry)
    book.add(X, ["x-own:1"], 0.0, own=True)
    book.add(X, ["evil:1"], 1.0)  # e.g. an MFind for origin X relayed by someone else
    assert book.addresses(X) == ("x-own:1",)
    book.set_connected(X, ["x-dialled:1"], 2.0)  # where we reached it counts as its own word
    book.add(X, ["evil:2"], 3.0)
    assert book.addresses(X) == ("x-dialled:1",)
    assert MFind("a", X.raw, [], 0).ttl == 0
