"""Local discovery (#13): the announcement format, the decisions on what is heard, where a node
announces, and nodes on loopback (``discovery.loopback``) finding each other without a bootstrap
list, scoped to their realm."""

from __future__ import annotations

import secrets

import pytest

from quicmesh import Node
from quicmesh.config import DiscoveryConfig, NodeConfig, load_config
from quicmesh.identity import KeyPair
from quicmesh.runtime.local_discovery import (
    Announcement,
    DiscoveryTable,
    announcement_properties,
    parse_announcement,
    plan_interfaces,
)
from quicmesh.testing.wait import eventually


def _props(d: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in d.items()}


def test_announcement_round_trip_and_malformed_records_are_refused() -> None:
    nid = KeyPair.generate().node_id
    props = announcement_properties(nid, "r1.abc", ("10.1.0.1:7000", "10.2.0.1:7000"))
    ann = parse_announcement(_props(props))
    assert ann == Announcement(nid, "r1.abc", ("10.1.0.1:7000", "10.2.0.1:7000"))
    bad = [
        {**props, "v": "2"},
        {**props, "id": "not-a-node-id"},
        {**props, "a": ""},
        {**props, "a": "10.1.0.1"},
        {**props, "a": "10.1.0.1:99999"},
        {**props, "a": ",".join(["10.1.0.1:1"] * 5)},
        {**props, "r": ""},
        {k: v for k, v in props.items() if k != "r"},
    ]
    refused = sum(parse_announcement(_props(b)) is None for b in bad)
    assert parse_announcement({b"v": None}) is None
    assert parse_announcement({b"v": b"1", b"id": b"\xff", b"r": b"x", b"a": b"1.2.3.4:5"}) is None
    print(f"{refused} of {len(bad)} malformed announcements refused")
    assert refused == len(bad)


def test_table_keeps_only_its_realm_never_itself_and_is_bounded() -> None:
    me = KeyPair.generate().node_id
    cfg = DiscoveryConfig(max_peers=8, max_announcements=1000, interval=10.0, peer_ttl=60.0, join_contacts=3)
    table = DiscoveryTable(me, "lab", cfg)
    others = [KeyPair.generate().node_id for _ in range(20)]
    for i, nid in enumerate(others):
        table.offer(Announcement(nid, "lab", (f"10.1.0.{i + 1}:7000",)), now=float(i))
    table.offer(Announcement(me, "lab", ("10.1.0.99:7000",)), now=1.0)
    for _ in range(5):
        table.offer(Announcement(KeyPair.generate().node_id, "other", ("10.1.0.50:7000",)), now=1.0)
    table.offer(None, now=1.0)
    c = table.counters
    assert (c["accepted"], c["ignored_self"], c["ignored_other_realm"], c["ignored_malformed"]) == (20, 1, 5, 1)
    assert len(table.peers) == 8 and me not in table.peers  # bounded: the least recently seen went
    contacts = table.contacts(20.0, exclude={others[19]})
    assert [p for p, _ in contacts] == [others[18], others[17], others[16]]  # freshest first, capped
    assert [p for p, _ in table.contacts(20.0, exclude=set())] == [others[19], others[15], others[14]]  # not twice
    table.offer(Announcement(others[18], "lab", ("10.1.0.19:7000",)), now=21.0)  # announced again: once more
    assert [p for p, _ in table.contacts(21.0, exclude=set())] == [others[18], others[13], others[12]]
    table.remove(others[18])
    assert others[18] not in table.peers and c["removed"] == 1
    assert table.contacts(1000.0, exclude=set()) == []  # expired after peer_ttl


def test_announcements_per_interval_are_capped() -> None:
    table = DiscoveryTable(KeyPair.generate().node_id, "lab", DiscoveryConfig(max_announcements=10, interval=5.0))
    admitted = sum(table.admit(0.1 * i) for i in range(40))  # 4 s: one window
    assert admitted == 10 and table.counters["ignored_rate"] == 30
    assert table.admit(5.5)  # the next window
    print(f"{admitted} of 40 announcements within one interval handled (cap 10)")


def test_where_a_node_announces() -> None:
    assert plan_interfaces("10.1.0.3:7000", loopback=False) == (["10.1.0.3"], ("10.1.0.3:7000",))
    assert isinstance(plan_interfaces("127.0.0.1:7000", loopback=False), str)  # quiet on loopback
    assert plan_interfaces("127.0.0.1:7000", loopback=True) == (["127.0.0.1"], ("127.0.0.1:7000",))
    assert plan_interfaces("0.0.0.0:7000", loopback=False, local_ips=("127.0.0.1", "192.168.1.5")) == (
        ["192.168.1.5"], ("192.168.1.5:7000",))
    assert isinstance(plan_interfaces("0.0.0.0:7000", loopback=False, local_ips=("127.0.0.1",)), str)
    assert isinstance(plan_interfaces("[::1]:7000", loopback=True), str)
    assert isinstance(plan_interfaces("localhost:7000", loopback=True), str)


def test_config_and_environment_switch() -> None:
    assert NodeConfig().discovery.local is True
    cfg = load_config(env={"QUICMESH_DISCOVERY__LOCAL": "false", "QUICMESH_DISCOVERY__INTERVAL": "3"})
    assert cfg.discovery.local is False and cfg.discovery.interval == 3.0
    assert load_config(env={}, overrides={"discovery.local": False}).discovery.local is False


def _cfg(realm: str, *, local: bool = True) -> NodeConfig:
    return NodeConfig(realm=realm, discovery=DiscoveryConfig(local=local, loopback=True, interval=2.0))


@pytest.mark.timeout(60)
async def test_nodes_on_loopback_find_each_other_within_their_realm() -> None:
    realm = f"ld-{secrets.token_hex(4)}"
    a = await Node.start(_cfg(realm))
    if a.local_discovery.state != "on":
        await a.stop()
        pytest.skip(f"no multicast on loopback here: {a.local_discovery.state}")
    nodes = [a, await Node.start(_cfg(realm)), await Node.start(_cfg(realm))]
    stranger = await Node.start(_cfg(realm + "-other"))
    quiet = await Node.start(_cfg(realm, local=False))
    try:
        await eventually(lambda: all(len(n.mesh.realm.active) for n in nodes), timeout=15, what="all joined")
        ids = {n.id for n in nodes}
        for n in nodes:
            assert set(n.peers()) <= ids
        assert stranger.peers() == [] and quiet.peers() == []
        c = nodes[0].local_discovery.table.counters
        assert c["ignored_other_realm"] >= 1 and c["accepted"] >= 2
        g = nodes[0].gauges()
        assert g["local_discovery_on"] == 1.0 and g["local_discovery_mdns_cache_names"] >= 1
        assert quiet.health()["local_discovery"]["state"] == "off"
        print(f"3 nodes on loopback joined without bootstrap; other realm: {len(stranger.peers())} connections;"
              f" ignored other-realm announcements at node 0: {c['ignored_other_realm']}")
        gone = nodes[2].id
        await nodes[2].stop()  # its goodbye: the others forget it at once
        await eventually(lambda: gone not in nodes[0].local_discovery.table.peers, timeout=10, what="goodbye heard")
        assert c["removed"] >= 1
    finally:
        for n in [*nodes, stranger, quiet]:
            await n.stop()


async def test_loopback_node_stays_quiet_by_default() -> None:
    node = await Node.start(NodeConfig(realm=f"ld-{secrets.token_hex(4)}"))
    try:
        assert node.local_discovery.state.startswith("listening on loopback only")
        assert node.health()["local_discovery"]["announced"] == 0
    finally:
        await node.stop()
