"""A realm in authority mode over real QUIC on loopback: admission by certificate (both ways),
refusals that disclose nothing, revocation within seconds, light-client tokens, renewal without
restart, and the command line's refusal message.

Every test prints and asserts a figure."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from quicmesh.config import NodeConfig
from quicmesh.core.permissions import EVERYTHING, Permissions
from quicmesh.core.trust import Authority, Certificate
from quicmesh.errors import NotAdmitted, RealmMismatch
from quicmesh.identity import KeyPair
from quicmesh.runtime import credentials as cred
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

DAY = 86_400


class Realm:
    """An authority and its files in a temporary directory."""

    def __init__(self, root: Path, name: str = "sec") -> None:
        self.root = root
        self.authority = Authority.create(name)
        self.realm_file = root / f"{name}.realm.pub"
        cred.save_realm(self.realm_file, self.authority.realm)
        self._serial = 0

    def cert(self, kp: KeyPair, perms: Permissions = EVERYTHING, *, kind: str = "node", not_before: int | None = None,
             not_after: int | None = None) -> Certificate:
        now = int(time.time())
        self._serial += 1
        return self.authority.admit(kp.node_id, perms, not_before=now - 60 if not_before is None else not_before,
                                    not_after=now + DAY if not_after is None else not_after, serial=self._serial,
                                    kind="client" if kind == "client" else "node")

    def member(self, name: str, cert: Certificate | None = None, **cfg: Any) -> tuple[NodeConfig, KeyPair]:
        kp = KeyPair.generate()
        path = self.root / f"{name}.cert"
        cred.save_certificate(path, self.authority.realm, cert or self.cert(kp))
        config = NodeConfig(realm_file=str(self.realm_file), cert=str(path), revocations=str(self.root / f"{name}.rl"),
                            trust_poll_interval=0.2, **cfg)
        return config, kp

    def token(self, name: str, perms: Permissions) -> Path:
        kp = KeyPair.generate()
        path = self.root / f"{name}.token"
        cred.save_token(path, self.authority.realm, self.cert(kp, perms, kind="client"), kp)
        return path


def _present(node: Node, cert: Certificate) -> None:
    """Make ``node`` show ``cert`` in its handshakes (an adversary with someone else's certificate)."""
    node.trust.certificate = cert
    node.trust._encoded = cert.encode()


@pytest.fixture
async def realm3(tmp_path: Path) -> AsyncIterator[tuple[Realm, list[Node]]]:
    realm = Realm(tmp_path)
    nodes: list[Node] = []
    try:
        for i in range(3):
            config, kp = realm.member(f"n{i}", bootstrap=tuple(n.address for n in nodes[:1]))
            nodes.append(await Node.start(config, keypair=kp))
        await eventually(lambda: all(len(n.peers()) >= 1 for n in nodes), timeout=10)
        yield realm, nodes
    finally:
        for n in nodes:
            await n.stop()


async def test_members_admit_each_other_and_outsiders_are_refused(realm3: tuple[Realm, list[Node]],
                                                                  tmp_path: Path) -> None:
    realm, nodes = realm3
    assert all(n.trust.wire_id == realm.authority.realm.wire_id for n in nodes)
    assert nodes[0].health()["realm"]["mode"] == "authority"
    target = nodes[0].address
    refused: dict[str, str] = {}

    # 1. an uncertified node of an open realm with the same name
    outsider = await Node.start(NodeConfig(realm="sec"))
    try:
        with pytest.raises(NotAdmitted) as e1:
            await outsider.connect(target)
        refused["uncertified"] = e1.value.reason
    finally:
        await outsider.stop()
    # 2. a certificate of another realm (same name, another authority)
    (tmp_path / "other").mkdir()
    other = Realm(tmp_path / "other", "sec")
    config, kp = other.member("x")
    foreign = await Node.start(config, keypair=kp)
    try:
        with pytest.raises(NotAdmitted) as e2:
            await foreign.connect(target)
        refused["foreign"] = e2.value.reason
    finally:
        await foreign.stop()
    # 3. a certificate that expires while its node runs (a node refuses to start with an expired one)
    kp3 = KeyPair.generate()
    ends = int(time.time()) + 2
    config3, _ = realm.member("exp", cert=realm.cert(kp3, not_after=ends))
    late = await Node.start(config3, keypair=kp3)
    try:
        await eventually(lambda: time.time() > ends + 0.2, timeout=5)
        with pytest.raises(NotAdmitted) as e3:
            await late.connect(target)
        refused["expired"] = e3.value.reason
    finally:
        await late.stop()
    # 4. a certificate of another node (a stolen member certificate, shown with another key)
    thief_kp = KeyPair.generate()
    stolen = nodes[1].trust.certificate
    assert stolen is not None
    config4, _ = realm.member("thief", cert=realm.cert(thief_kp))
    thief = await Node.start(config4, keypair=thief_kp)
    try:
        _present(thief, stolen)
        with pytest.raises(NotAdmitted) as e4:
            await thief.connect(target)
        refused["stolen"] = e4.value.reason
    finally:
        await thief.stop()
    print(f"refused 4 of 4 outsiders with NotAdmitted: {refused}")
    assert refused == {"uncertified": "no certificate", "foreign": "certificate of another realm",
                       "expired": "certificate expired", "stolen": "certificate of another node"}
    assert not any("sec" in r or realm.authority.realm.wire_id in r for r in refused.values())
    assert nodes[0].transport.stats().refused_total.get("not_admitted", 0) >= 4


async def test_dialer_checks_the_listener_certificate(tmp_path: Path) -> None:
    """Both ways: a member refuses a listener that shows another node's certificate or an
    expired one, although the listener admitted the member."""
    realm = Realm(tmp_path)
    ca, ka = realm.member("a")
    cb, kb = realm.member("b")
    ends = int(time.time()) + 2
    kc2 = KeyPair.generate()
    cc2, _ = realm.member("c2", cert=realm.cert(kc2, not_after=ends))
    a = await Node.start(ca, keypair=ka)
    b = await Node.start(cb, keypair=kb)
    c = await Node.start(cc2, keypair=kc2)
    reasons: list[str] = []
    try:
        assert a.trust.certificate is not None
        _present(b, a.trust.certificate)  # b shows a member certificate that is not its own
        with pytest.raises(NotAdmitted) as e1:
            await a.connect(b.address)
        reasons.append(e1.value.reason)
        await eventually(lambda: time.time() > ends + 0.2, timeout=5)
        with pytest.raises(NotAdmitted) as e2:
            await a.connect(c.address)
        reasons.append(e2.value.reason)
        print(f"dialer refused 2 of 2 listeners: {reasons}; connections: {len(a.peers())}")
        assert reasons == ["listener: certificate of another node", "listener: certificate expired"]
        assert a.peers() == []
        # #14: with the proof in the Hello a listener admits the member before the member has
        # seen the listener's certificate (in its Welcome); the member's refusal then closes it
        await eventually(lambda: b.peers() == [] and c.peers() == [], timeout=5,
                         detail=lambda: f"refused listeners still hold {b.peers()} / {c.peers()}")
    finally:
        for n in (a, b, c):
            await n.stop()


async def test_open_realm_mismatch_names_no_realm() -> None:
    a = await Node.start(NodeConfig(realm="alpha"))
    b = await Node.start(NodeConfig(realm="beta"))
    try:
        with pytest.raises(RealmMismatch) as e:
            await b.connect(a.address)
        text = str(e.value)
        print(f"open realm refusal text: {text!r}")
        assert "alpha" not in text and "beta" not in text
        assert a.health()["realm"]["mode"] == "open"
    finally:
        await a.stop()
        await b.stop()


async def test_revoked_node_is_disconnected_within_5s(realm3: tuple[Realm, list[Node]]) -> None:
    realm, nodes = realm3
    victim = nodes[2]
    await eventually(lambda: victim.transport.connections(), timeout=10)
    # the operator writes the next list into one node's revocation file (as `realm revoke --list`)
    rl = realm.authority.revoke(None, now=int(time.time()), subjects=(victim.id,))
    started = time.monotonic()
    assert nodes[0].config.revocations is not None
    cred.save_revocations(nodes[0].config.revocations, rl)
    await eventually(lambda: not any(c.peer_id == victim.id for n in nodes[:2] for c in n.transport.connections()),
                     timeout=5)
    elapsed = time.monotonic() - started
    print(f"revoked node disconnected from every member {elapsed:.2f} s after the list was written")
    assert elapsed < 5
    await eventually(lambda: nodes[1].trust.revocations is not None and nodes[1].trust.revocations.version == 1,
                     timeout=5)  # spread on the revocation topic
    persisted = nodes[1].config.revocations
    assert persisted and cred.load_revocations(persisted) is not None  # persisted
    with pytest.raises(NotAdmitted) as e:
        await victim.connect(nodes[1].address)
    assert e.value.reason == "certificate revoked"


async def test_light_clients_need_a_token(realm3: tuple[Realm, list[Node]]) -> None:
    realm, nodes = realm3
    gw = nodes[0].address
    with pytest.raises(NotAdmitted) as e:
        await Client.connect(gw, realm="sec", reconnect=False)
    print(f"client without token: NotAdmitted({e.value.reason!r})")
    assert e.value.reason == "no certificate"
    with pytest.raises(NotAdmitted):
        await Client.connect(gw, realm_file=realm.realm_file, reconnect=False)
    token = realm.token("c", Permissions.parse(["subscribe:a.>"]))
    async with await Client.connect(gw, token=token, reconnect=False) as client:
        conns = nodes[0].transport.clients()
        assert len(conns) == 1 and conns[0].permissions.allows_subscription("a.>")
        assert not conns[0].permissions.allows_subscription("b.>")
        sub = await client.subscribe("a.x")
        await sub.close()
    print("client with a token limited to subscribe:a.> admitted: 1 of 1; without: 0 of 2")


async def test_client_subscribe_outside_its_permissions_fails(realm3: tuple[Realm, list[Node]]) -> None:
    """The gateway checks a client's permissions (runtime/gateway_perms.py)."""
    from quicmesh import errors

    realm, nodes = realm3
    token = realm.token("c2", Permissions.parse(["subscribe:a.>"]))
    async with await Client.connect(nodes[0].address, token=token, reconnect=False) as client:
        with pytest.raises(errors.PermissionDenied):
            await client.subscribe("b.>")
    print("subscribe outside a.>: refused 1 of 1")


async def test_certificate_renews_without_restart(realm3: tuple[Realm, list[Node]]) -> None:
    realm, nodes = realm3
    node = nodes[1]
    assert node.config.cert is not None
    old = node.trust.certificate
    assert old is not None
    kp_cert = realm.authority.admit(node.id, EVERYTHING, not_before=int(time.time()) - 60,
                                    not_after=int(time.time()) + 30 * DAY, serial=4242)
    cred.save_certificate(node.config.cert, realm.authority.realm, kp_cert)
    os.utime(node.config.cert, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    await eventually(lambda: node.trust.certificate is not None and node.trust.certificate.serial == 4242, timeout=5)
    print(f"certificate renewed in place: serial {old.serial} -> 4242, renewals {node.realm_service.renewed}")
    assert node.realm_service.renewed == 1


async def test_cli_pub_without_token(realm3: tuple[Realm, list[Node]]) -> None:
    _, nodes = realm3
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quicmesh", "pub", "--connect", nodes[0].address, "--timeout", "10", "a.x", "hi",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "QUICMESH_TOKEN": ""})
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    print(f"quicmesh pub without token: exit {proc.returncode}, stderr {text.strip()!r}")
    assert proc.returncode == 1
    assert text.startswith("error: NotAdmitted: ")


async def test_memory_transport_checks_certificates_too(tmp_path: Path) -> None:
    """The in-process transport applies the same admission (tests of other features use it)."""
    from quicmesh.runtime.memory import MemoryNetwork

    net = MemoryNetwork()
    realm = Realm(tmp_path)
    ca, ka = realm.member("a")
    cb, kb = realm.member("b", bootstrap=())
    a = await Node.start(ca, keypair=ka, network=net)
    b = await Node.start(cb.replace(bootstrap=(a.address,)), keypair=kb, network=net)
    outsider = await Node.start(NodeConfig(realm="sec"), network=net)
    try:
        await eventually(lambda: b.id in a.peers(), timeout=5)
        conn = a.transport.get(b.id)
        assert conn is not None and conn.certificate is not None and conn.certificate.subject == b.id.raw
        with pytest.raises(NotAdmitted) as e:
            await outsider.connect(a.address)
        print(f"memory transport: members connected 1 of 1, outsider refused ({e.value.reason!r})")
        assert e.value.reason == "no certificate"
    finally:
        for n in (outsider, b, a):
            await n.stop()


async def test_revoked_client_is_disconnected_and_stops_reconnecting(realm3: tuple[Realm, list[Node]]) -> None:
    realm, nodes = realm3
    token = realm.token("rc", Permissions.parse(["subscribe:a.>"]))
    serial = cred.load_token(token).certificate.serial
    client = await Client.connect(nodes[0].address, token=token, reconnect_min_delay=0.05)
    try:
        sub = await client.subscribe("a.x")
        started = time.monotonic()
        assert nodes[0].realm_service.receive(realm.authority.revoke(None, now=int(time.time()),
                                                                     serials=(serial,)).encode())
        await eventually(lambda: isinstance(client.last_error, NotAdmitted), timeout=5)
        elapsed = time.monotonic() - started
        print(f"revoked client disconnected and gave up after {elapsed:.2f} s: {client.last_error}")
        assert elapsed < 5 and not client.connected and nodes[0].transport.clients() == []
        assert sub.closed
    finally:
        await client.close()


async def test_a_node_that_was_away_catches_up_at_its_first_handshake(realm3: tuple[Realm, list[Node]]) -> None:
    realm, nodes = realm3
    revoked = KeyPair.generate().node_id
    assert nodes[0].realm_service.receive(realm.authority.revoke(None, now=int(time.time()),
                                                                 subjects=(revoked,)).encode())
    config, kp = realm.member("late", bootstrap=(nodes[0].address,))
    late = await Node.start(config, keypair=kp)  # started without the list
    try:
        started = time.monotonic()
        await eventually(lambda: late.realm_service.applied == 1, timeout=5)
        rl = late.trust.revocations
        assert rl is not None and rl.subjects == (revoked.raw,)
        assert config.revocations is not None and cred.load_revocations(config.revocations) == rl  # persisted
        print(f"a node that missed the list had it {time.monotonic() - started:.2f} s after joining (1 of 1)")
    finally:
        await late.stop()
