"""The work-queue group machine, sans-IO (:mod:`quicmesh.core.groups`): member choice (local
first, round-robin, window), acks and nacks, redelivery on loss and timeout, waiting and
expiry, the bounds, and the member side (dedup, refusals, coalesced acks)."""

from __future__ import annotations

from collections import Counter

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import PubSubConfig
from quicmesh.core.effects import Dial, Send
from quicmesh.core.groups import GroupDeliver, Groups, check_group, group_name, parse_group_name
from quicmesh.core.groups_messages import GAck, GPush
from quicmesh.errors import Overloaded
from quicmesh.identity import NodeId

ME = NodeId(bytes([1]) * 32)
A, B, C = (NodeId(bytes([i]) * 32) for i in (2, 3, 4))
NAME = group_name("w", "jobs.>")


class World:
    """The registry and the connections a :class:`Groups` sees."""

    def __init__(self, members: list[NodeId], connected: set[NodeId] | None = None, **cfg: object) -> None:
        addrs: tuple[str, ...] = ("127.0.0.1:1",)
        self.members = {NAME: [(m, addrs) for m in members]}
        self.connected = set(members) if connected is None else connected
        self.allowed = True
        config = PubSubConfig(**{"group_window": 4, "group_ack_timeout": 2.0, "group_hold_timeout": 10.0,
                                 **cfg})  # type: ignore[arg-type]
        self.g = Groups(ME, config, ContainerRegistry("t"), members=lambda n, now: self.members.get(n, []),
                        names=lambda: list(self.members), connected=lambda p: p in self.connected,
                        may_publish=lambda p, t, now: self.allowed)


def pushes(out: list[object]) -> list[tuple[NodeId, GPush]]:
    return [(e.peer, e.message) for e in out if isinstance(e, Send) and isinstance(e.message, GPush)]


def test_names() -> None:
    assert parse_group_name(group_name("w-1.a_b", "jobs.*.x")) == ("w-1.a_b", "jobs.*.x")
    assert parse_group_name("svc.echo") is None
    assert parse_group_name("$grp:bad name:x") is None
    for bad in ("", "a b", "x" * 65, "a:b"):
        with pytest.raises(ValueError):
            check_group(bad)


def test_round_robin_spreads_evenly_and_only_matching_topics() -> None:
    w = World([A, B, C])
    out: list[object] = []
    for i in range(12):
        out += w.g.route("jobs.a", b"%d" % i, 0.0)
    assert w.g.route("other.a", b"x", 0.0) == []
    counts = Counter(peer for peer, _ in pushes(out))
    assert counts == {A: 4, B: 4, C: 4}
    assert len({m.i for _, m in pushes(out)}) == 12


def test_local_member_first_then_remote_when_its_window_is_full() -> None:
    w = World([ME, A])
    assert w.g.join("w", "jobs.>")
    out: list[object] = []
    for i in range(6):
        out += w.g.route("jobs.a", b"%d" % i, 0.0)
    local = [e for e in out if isinstance(e, GroupDeliver)]
    assert len(local) == 4 and all(e.origin == ME for e in local)  # the window
    assert [p for p, _ in pushes(out)] == [A, A]
    # the local application takes one: the next message goes to it again
    assert w.g.taken(ME, local[0].id, 0.1) == []
    assert isinstance(w.g.route("jobs.a", b"6", 0.1)[0], GroupDeliver)


def test_window_makes_messages_wait_and_an_ack_releases_them() -> None:
    w = World([A])
    out: list[object] = []
    for i in range(6):
        out += w.g.route("jobs.a", b"%d" % i, 0.0)
    sent = pushes(out)
    assert len(sent) == 4 and w.g.stats()["waiting"] == 2
    more = pushes(w.g.handle_ack(A, GAck([sent[0][1].i, sent[1][1].i]), 0.5))
    assert [m.d for _, m in more] == [b"4", b"5"]  # in publish order
    assert w.g.stats()["waiting"] == 0 and w.g.stats()["unacked"] == 4


def test_nack_and_connection_loss_redeliver_to_another_member() -> None:
    w = World([A, B])
    out = w.g.route("jobs.a", b"x", 0.0)
    (first, msg), = pushes(out)
    other = B if first == A else A
    again = pushes(w.g.handle_ack(first, GAck([msg.i], True), 0.1))
    assert again == [(other, msg)]
    lost = pushes(w.g.peer_lost(other, 0.2))
    assert lost == [(first, msg)]
    assert w.g.stats()["redelivered"] == 2
    # the suspect is left out until it reconnects
    assert {p for p, _ in pushes(w.g.route("jobs.a", b"y", 0.3))} == {first}
    w.g.peer_connected(other, 0.4)
    assert {p for p, _ in pushes(w.g.route("jobs.a", b"z", 0.5))} == {other}


def test_a_member_that_takes_nothing_within_the_ack_timeout_loses_its_messages() -> None:
    w = World([A, B])
    out: list[object] = []
    for i in range(4):
        out += w.g.route("jobs.a", b"%d" % i, 0.0)
    on_a = [m for p, m in pushes(out) if p == A]
    assert w.g.next_deadline() == 2.0
    w.g.handle_ack(B, GAck([m.i for p, m in pushes(out) if p == B]), 1.0)
    moved = pushes(w.g.handle_timer(2.0))
    assert sorted(m.i for _, m in moved) == sorted(m.i for m in on_a)
    assert {p for p, _ in moved} == {B}
    assert w.g.stats()["timeouts"] == 1
    # a late ack from A still counts (it did take them), once
    w.g.handle_ack(A, GAck([m.i for m in on_a]), 2.1)
    assert w.g.stats()["unacked"] == 0


def test_messages_without_a_member_wait_then_expire() -> None:
    w = World([])
    w.g.route("jobs.a", b"x", 0.0)  # no live member: nothing is kept
    assert w.g.stats()["unacked"] == 0
    addrs: tuple[str, ...] = ("127.0.0.1:9",)
    w.members[NAME] = [(A, addrs)]
    w.connected.clear()
    w.g.changed()
    out = w.g.route("jobs.a", b"x", 0.0)
    assert out == [Dial(A, ("127.0.0.1:9",))]  # dialled, and the message waits
    assert w.g.route("jobs.a", b"y", 1.0) == []  # not dialled again within a few seconds
    w.connected.add(A)
    sent = pushes(w.g.peer_connected(A, 2.0))
    assert [m.d for _, m in sent] == [b"x", b"y"]
    w.g.handle_ack(A, GAck([m.i for _, m in sent]), 2.5)
    w.connected.clear()
    w.g.route("jobs.a", b"z", 3.0)
    assert w.g.next_deadline() is not None
    w.g.handle_timer(13.0)
    assert w.g.stats()["expired"] == 1


def test_unacked_table_is_bounded_publish_raises_overloaded() -> None:
    w = World([A], group_max_unacked=8)
    for i in range(8):
        w.g.route("jobs.a", b"%d" % i, 0.0)
    with pytest.raises(Overloaded):
        w.g.route("jobs.a", b"9", 0.0)
    assert len(w.g.unacked) == 8


def test_forged_acks_from_non_members_are_ignored() -> None:
    w = World([A])
    out: list[object] = []
    for i in range(4):
        out += w.g.route("jobs.a", b"%d" % i, 0.0)
    ids = [m.i for _, m in pushes(out)]
    w.g.handle_ack(B, GAck(ids), 0.1)
    w.g.handle_ack(C, GAck(ids, True), 0.1)
    held = len(w.g.unacked)
    print(f"\n0 of {2 * len(ids)} forged acks/nacks from non-members took effect ({held} messages still held)")
    assert held == 4 and w.g.stats()["redelivered"] == 0


def test_member_side_delivers_dedups_refuses_and_coalesces_acks() -> None:
    w = World([], group_max_inbound=2)
    w.g.join("w", "jobs.>")
    d = w.g.handle_push(A, GPush(7, "jobs.a", "w", "jobs.>", b"p"), 0.0)
    assert d == [GroupDeliver("jobs.a", b"p", "w", "jobs.>", A, 7)]
    assert w.g.handle_push(A, GPush(7, "jobs.a", "w", "jobs.>", b"p"), 0.0) == []  # queued already
    assert w.g.taken(A, 7, 0.1) == [] and w.g.has_acks
    assert w.g.flush() == [Send(A, GAck([7]))] and not w.g.has_acks
    # a redelivery of a taken message is acked, never handed out again
    assert w.g.handle_push(A, GPush(7, "jobs.a", "w", "jobs.>", b"p"), 0.2) == [Send(A, GAck([7]))]
    assert w.g.stats()["duplicates"] == 1

    def refused(msg: GPush) -> bool:
        return w.g.handle_push(B, msg, 0.3) == [Send(B, GAck([msg.i], True))]

    assert refused(GPush(1, "jobs.a", "other", "jobs.>", b""))  # no local member of that group
    assert refused(GPush(2, "nope.a", "w", "jobs.>", b""))  # topic does not match the pattern
    w.allowed = False
    assert refused(GPush(3, "jobs.a", "w", "jobs.>", b""))  # the publisher may not publish it
    w.allowed = True
    assert w.g.handle_push(B, GPush(4, "jobs.a", "w", "jobs.>", b""), 0.3) != []
    assert w.g.handle_push(B, GPush(5, "jobs.a", "w", "jobs.>", b""), 0.3) != []
    assert refused(GPush(6, "jobs.a", "w", "jobs.>", b""))  # inbound cap (2) reached
    # a local member closed with one unread: nacked back
    assert w.g.released(B, 4, 0.4) == [Send(B, GAck([4], True))]


def test_last_local_member_leaving_moves_its_messages() -> None:
    w = World([ME, A])
    w.g.join("w", "jobs.>")
    w.g.join("w", "jobs.>")
    out = w.g.route("jobs.a", b"x", 0.0)
    assert isinstance(out[0], GroupDeliver)
    assert w.g.leave("w", "jobs.>", 0.1) == (False, [])
    last, moved = w.g.leave("w", "jobs.>", 0.2)
    assert last and [p for p, _ in pushes(moved)] == [A]


def test_containers_are_named_and_bounded() -> None:
    reg = ContainerRegistry("t")
    g = Groups(ME, PubSubConfig(), reg, members=lambda n, now: [], names=list, connected=lambda p: False)
    names = {s.name for s in reg.snapshot()}
    assert g.unacked.capacity == PubSubConfig().group_max_unacked
    assert {"groups.unacked", "groups.inbound", "groups.taken", "groups.members", "groups.acks",
            "groups.local", "groups.routes", "groups.suspects", "groups.dialled"} <= names


def test_a_membership_advert_needs_subscribe_permission_on_its_pattern() -> None:
    from quicmesh.core.advert_checks import reserved_batch_ok
    from quicmesh.core.permissions import Permissions
    from quicmesh.core.registry_messages import REGISTRY_MESSAGES, REGISTRY_TOPIC, RAdvert
    from quicmesh.core.wire import Codec

    codec = Codec(REGISTRY_MESSAGES)

    def batch(name: str) -> list[bytes]:
        return [codec.encode(RAdvert(ME.raw, [], name, b"", 1, 0, 1000, False, b"s" * 64))]

    workers = Permissions.parse(allow=["subscribe:jobs.>"])
    callers = Permissions.parse(allow=["advertise:>"])
    ok = [
        reserved_batch_ok(codec, ME, REGISTRY_TOPIC, batch(group_name("w", "jobs.>")), workers),
        reserved_batch_ok(codec, ME, REGISTRY_TOPIC, batch(group_name("w", "jobs.a")), workers),
    ]
    refused = [
        reserved_batch_ok(codec, ME, REGISTRY_TOPIC, batch(group_name("w", "secret.>")), workers),
        reserved_batch_ok(codec, ME, REGISTRY_TOPIC, batch(group_name("w", "jobs.>")), callers),
        reserved_batch_ok(codec, ME, REGISTRY_TOPIC, batch("svc.echo"), workers),
    ]
    print(f"\n{refused.count(False)} of {len(refused)} membership/service adverts without permission refused")
    assert ok == [True, True] and refused == [False, False, False]


def test_waiting_messages_are_spread_round_robin_when_room_frees() -> None:
    w = World([A, B, C])
    out: list[object] = []
    for i in range(24):
        out += w.g.route("jobs.a", b"%d" % i, 0.0)
    first = pushes(out)
    assert len(first) == 12 and w.g.stats()["waiting"] == 12
    more: list[object] = []
    for peer in (A, B, C):
        more += w.g.handle_ack(peer, GAck([m.i for p, m in first if p == peer]), 0.5)
    assert Counter(p for p, _ in pushes(more)) == {A: 4, B: 4, C: 4}
    assert w.g.stats()["waiting"] == 0


def test_keyless_is_set_only_by_an_index_with_no_key_and_cleared_by_a_change() -> None:
    """``keyless`` lets the publish short path skip :meth:`Groups.keys_for`: it must be true only
    while the index is built and empty, and false from the moment the adverts change."""
    w = World([A])
    assert not w.g.keyless  # not indexed yet
    assert w.g.keys_for("jobs.a") == [("w", "jobs.>")] and not w.g.keyless
    w.members.clear()
    w.g.changed()
    assert not w.g.keyless  # dirty: nothing known until the next index
    assert w.g.keys_for("jobs.a") == [] and w.g.keyless
    w.members[NAME] = [(B, ("127.0.0.1:1",))]
    w.g.changed()
    assert not w.g.keyless
    assert w.g.keys_for("jobs.a") == [("w", "jobs.>")] and not w.g.keyless
