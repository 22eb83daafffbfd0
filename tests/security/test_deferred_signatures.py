"""#14 deferred origin-signature checks: a batch straight from its publisher, that no IHAVE
announced and that a node forwards to nobody, is handed up with everything but its signature
checked (the connection authenticated the publisher); its signature is checked before the node
ever serves it. Nothing leaves a node with an unchecked signature, and a publisher that sent a
bad one is penalised when it is found.

Adversary: a publisher (an admitted member) that signs its batches wrongly, sending them straight
to a leaf of its tree; and relays and announcers that must not profit from the deferral.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import GossipConfig
from quicmesh.core.guard import Guard, gossip_signing_bytes
from quicmesh.core.membership import HvSend
from quicmesh.core.mesh_messages import MGone, MGossip, MGraft, MIHave
from quicmesh.core.plumtree import GossipCaches, Plumtree, batch_digest, message_id
from quicmesh.core.trust import Trust
from quicmesh.identity import KeyPair, NodeId

ME = KeyPair.from_seed(b"\x50" * 32)
PUB = KeyPair.from_seed(b"\x51" * 32)  # the publisher, a neighbour
B = KeyPair.from_seed(b"\x52" * 32).node_id  # another neighbour (a relay, an announcer, a grafter)


def _tree(*neighbours: KeyPair | NodeId) -> tuple[Plumtree, Guard]:
    registry = ContainerRegistry()
    guard = Guard(ME, Trust.open_realm("default"), wall=lambda now: now, registry=registry)
    cfg = GossipConfig()
    pt = Plumtree(ME.node_id, "s", cfg, GossipCaches(cfg, registry), Random(1), registry, max_message_size=1024,
                  auth=guard)
    for n in neighbours:
        pt.neighbor_up(n.node_id if isinstance(n, KeyPair) else n, 0.0)
    return pt, guard


def _batch(seq: int, *, good: bool = True, sig: bytes | None = None) -> MGossip:
    payloads = [b"p%d" % seq]
    digest = batch_digest(PUB.node_id.raw, 1, seq, "s.t", payloads)
    if sig is None:
        sig = PUB.sign(gossip_signing_bytes("default", digest)) if good else bytes(64)
    return MGossip("s", "s.t", PUB.node_id.raw, 1, seq, payloads, 0, sig, None)


def _forwarded(out: Sequence[HvSend]) -> int:
    return sum(1 for o in out if isinstance(o.message, MGossip))


def test_a_leaf_defers_the_check_and_checks_before_serving() -> None:
    pt, guard = _tree(PUB)
    out, arrived = pt.handle(PUB.node_id, _batch(0), 0.0)
    mid = message_id(PUB.node_id.raw, 1, 0, "s.t", [b"p0"])
    assert arrived is not None and _forwarded(out) == 0
    assert guard.counters["gossip_signature_deferred"] == 1 and guard.counters["gossip_verified"] == 0
    assert mid in pt.caches.unchecked
    pt.neighbor_up(B, 0.1)  # a new neighbour grafts it: checked first, then served
    served = pt.handle(B, MGraft("s", mid), 0.2)[0]
    assert _forwarded(served) == 1 and guard.counters["gossip_verified"] == 1
    assert mid not in pt.caches.unchecked


def test_a_bad_signature_straight_from_its_publisher_is_never_served_and_penalised() -> None:
    pt, guard = _tree(PUB)
    bad = 0
    for seq in range(5):
        out, arrived = pt.handle(PUB.node_id, _batch(seq, good=False), 0.0)
        bad += arrived is not None
        assert _forwarded(out) == 0
    pt.neighbor_up(B, 0.1)
    answers: list[HvSend] = []
    for seq in range(5):
        mid = message_id(PUB.node_id.raw, 1, seq, "s.t", [b"p%d" % seq])
        answers += pt.handle(B, MGraft("s", mid), 0.2)[0]
        assert pt.caches.payloads.get(mid) is None and mid not in pt.caches.unchecked
    gone = sum(1 for a in answers if isinstance(a.message, MGone))
    print(f"\n5 badly signed batches straight from their publisher to a leaf: {bad} handed up there "
          f"(the connection authenticated the publisher), {_forwarded(answers)} served to a GRAFT, {gone} "
          f"answered GONE; publisher offences {guard.counters['offences']}")
    assert _forwarded(answers) == 0 and gone == 5
    assert guard.counters["gossip_bad_signature"] == 5 and guard.counters["offences"] == 5


def test_a_batch_that_goes_on_is_checked_at_once() -> None:
    pt, guard = _tree(PUB, B)  # B is eager for the publisher: the batch goes on to it
    out, arrived = pt.handle(PUB.node_id, _batch(0, good=False), 0.0)
    assert arrived is None and _forwarded(out) == 0
    assert guard.counters["gossip_bad_signature"] == 1 and guard.counters["gossip_signature_deferred"] == 0
    out, arrived = pt.handle(PUB.node_id, _batch(1), 0.0)
    assert arrived is not None and _forwarded(out) == 1 and guard.counters["gossip_verified"] == 1


def test_relays_and_announced_batches_get_no_deferral() -> None:
    pt, guard = _tree(B)  # a leaf whose only neighbour is a relay
    _, arrived = pt.handle(B, _batch(0, good=False), 0.0)
    assert arrived is None and guard.counters["gossip_bad_signature"] == 1
    pt, guard = _tree(PUB)  # a leaf that heard of the batch in an IHAVE first
    mid = message_id(PUB.node_id.raw, 1, 0, "s.t", [b"p0"])
    pt.handle(PUB.node_id, MIHave("s", [mid], [1]), 0.0)
    _, arrived = pt.handle(PUB.node_id, _batch(0, good=False), 0.01)
    assert arrived is None and guard.counters["gossip_bad_signature"] == 1
    assert guard.counters["gossip_signature_deferred"] == 0


def test_the_other_checks_still_run_when_the_signature_waits() -> None:
    pt, guard = _tree(PUB)
    _, arrived = pt.handle(PUB.node_id, _batch(0, sig=b""), 0.0)  # no signature at all: malformed
    assert arrived is None and guard.counters["gossip_malformed"] == 1 and guard.counters["offences"] == 1


def test_unchecked_marks_leave_with_their_batches() -> None:
    pt, _ = _tree(PUB)
    for seq in range(3):
        pt.handle(PUB.node_id, _batch(seq), 0.0)
    assert len(pt.caches.unchecked) == 3
    pt.caches.expire(10_000.0)  # past the payload cache's TTL
    assert pt.caches.unchecked == {}
    for seq in range(3, 6):
        pt.handle(PUB.node_id, _batch(seq), 10_000.0)
    assert pt.caches.purge("s") > 0 and pt.caches.unchecked == {}
