"""Permissions: checked where actions enter (the node's own API, the receiving node for a peer,
the gateway for a light client) and again by every node that verifies a relayed claim.

Core-level tests run real node cores in the simulator, in an authority realm: every node has a
member certificate, and connecting nodes check each other's as the handshake does. The
runtime-level tests start real nodes from a realm file and a member certificate, and a light
client with a token, as the command line does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from quicmesh.config import GatewayConfig, NodeConfig, TransportConfig
from quicmesh.core.permissions import Permissions
from quicmesh.core.rpc import CallResolved
from quicmesh.core.trust import Authority, Trust
from quicmesh.errors import PermissionDenied
from quicmesh.identity import KeyPair, NodeId
from quicmesh.observability.metrics import render
from quicmesh.runtime.client import Client
from quicmesh.runtime.credentials import save_certificate, save_realm, save_token
from quicmesh.runtime.node import Node
from quicmesh.testing.network import Latency, NetworkParams
from quicmesh.testing.report import build_overlay
from quicmesh.testing.sim import SimNode, Simulator

FULL = ("publish:>", "subscribe:>", "advertise:>", "call:>", "log:>")


def _realm(rules: dict[int, tuple[str, ...]]) -> tuple[Authority, Callable[[int, NodeId], Trust]]:
    """An authority and the per-node Trust factory: node ``i`` gets ``rules.get(i, FULL)``."""
    authority = Authority.create("perms")

    def trust(index: int, node: NodeId) -> Trust:
        cert = authority.admit(node, Permissions.parse(rules.get(index, FULL)), not_before=0, not_after=2**40,
                               serial=index + 1)
        return Trust(authority.realm, certificate=cert)

    return authority, trust


def _sim(seed: int, rules: dict[int, tuple[str, ...]], count: int = 8, *,
         services: bool = False) -> tuple[Simulator, list[SimNode]]:
    _, trust = _realm(rules)
    sim = Simulator(seed, NodeConfig(), NetworkParams(latency=Latency(median=0.01)), services=services, trust=trust)
    nodes = build_overlay(sim, count)
    sim.run_for(5.0)
    return sim, nodes


def test_a_member_allowed_publish_a_gets_permission_denied_on_b_and_nobody_receives_it() -> None:
    sim, nodes = _sim(21, {1: ("publish:a.>", "subscribe:>")})
    for n in nodes:
        sim.subscribe(n, "a.>")
        sim.subscribe(n, "b.>")
    sim.run_for(5.0)
    limited = nodes[1]
    sim.publish(limited, "a.y", b"allowed")  # what it may publish reaches everyone
    sim.run_for(3.0)
    with pytest.raises(PermissionDenied) as info:
        sim.publish(limited, "b.x", b"denied")
    assert (info.value.action, info.value.subject) == ("publish", "b.x")
    # a member that skips its own check (modified code) reaches no one either: every receiver
    # checks the publisher's certificate before caching, forwarding or delivering
    limited.core.guard.check_own = lambda action, subject: None  # type: ignore[method-assign]
    for i in range(20):
        sim.publish(limited, "b.x", b"bypass-%d" % i)
        sim.run_for(0.2)
    sim.run_for(3.0)
    others = [n for n in nodes if n is not limited]
    received = sum(1 for n in others for d in n.deliveries if d.topic == "b.x")
    allowed = sum(1 for n in others if any(d.payload == b"allowed" for d in n.deliveries))
    refused = sum(n.core.guard.counters["gossip_denied"] for n in others)
    blocked = sum(1 for n in others if n.core.blocked(limited.id, sim.now))
    print(f"\nPermissionDenied at once on b.x; {received} of {len(others)} x 21 b.x messages received; "
          f"a.y reached {allowed} of {len(others)}; {refused} batches refused by receivers; "
          f"{blocked} neighbours blocked the bypassing member")
    assert received == 0
    assert allowed == len(others)
    assert refused > 0 and blocked > 0
    assert limited.core.guard.denied["publish"] == 1


def test_no_call_is_answered_by_a_provider_without_advertise_permission() -> None:
    no_adv = ("publish:>", "subscribe:>", "call:>", "log:>")
    sim, nodes = _sim(22, {2: no_adv}, count=10, services=True)
    impostor, honest, caller = nodes[2], nodes[5], nodes[8]
    with pytest.raises(PermissionDenied):
        sim.advertise(impostor, "echo")
    sim.advertise(honest, "echo")
    impostor.core.guard.check_own = lambda action, subject: None  # type: ignore[method-assign]
    sim.advertise(impostor, "echo")  # adverts anyway, as modified code would
    sim.run_for(5.0)
    holders = sum(1 for n in nodes if n.core.services.entry(impostor.id, "echo") is not None)
    results: list[CallResolved] = []
    sim.on_resolved = lambda node, outcome: results.append(outcome)  # type: ignore[method-assign]
    for i in range(100):
        sim.call(caller, "echo", b"ping", 5.0, i)
        sim.run_for(0.05)
    sim.run_for(6.0)
    answered_by_impostor = impostor.core.rpc.stats.requests_received
    ok = sum(1 for r in results if r.error is None)
    print(f"\n{answered_by_impostor} of 100 calls answered by the provider without advertise permission; "
          f"{ok} answered by the permitted provider; {holders} registries list the impostor")
    assert answered_by_impostor == 0
    assert holders == 0
    assert ok == 100


def test_a_member_without_call_permission_gets_permission_denied() -> None:
    no_call = ("publish:>", "subscribe:>", "advertise:>", "log:>")
    sim, nodes = _sim(23, {6: no_call}, count=8, services=True)
    provider, caller = nodes[3], nodes[6]
    sim.advertise(provider, "echo")
    sim.run_for(5.0)
    with pytest.raises(PermissionDenied):
        caller.core.call("echo", b"x", 5.0, sim.now, "own-check")
    assert caller.core.guard.denied["call"] == 1
    # a caller that skips its own check is refused by the provider, with a typed error
    caller.core.guard.check_own = lambda action, subject: None  # type: ignore[method-assign]
    results: list[CallResolved] = []
    sim.on_resolved = lambda node, outcome: results.append(outcome)  # type: ignore[method-assign]
    sim.call(caller, "echo", b"x", 5.0, "bypass")
    sim.run_for(3.0)
    assert len(results) == 1 and isinstance(results[0].error, PermissionDenied)
    assert results[0].error.action == "call"
    assert provider.core.rpc.stats.requests_received == 0  # the handler never ran
    assert provider.core.guard.denied["call"] == 1
    print(f"\nPermissionDenied at once for the caller; the provider refused {provider.core.guard.denied['call']} "
          f"bypassing call, ran 0 handlers")
    # ``checked=True``: the driver checked already (the runtime's Node.call does, before its local
    # path), so the core does not check a second time (a caller that skips both is refused above)
    del caller.core.guard.check_own
    with pytest.raises(PermissionDenied):
        caller.core.call("echo", b"x", 5.0, sim.now, "own-check again")
    assert caller.core.guard.denied["call"] == 2
    _cid, outs = caller.core.call("echo", b"x", 5.0, sim.now, "pre-checked", checked=True)
    assert caller.core.guard.denied["call"] == 2 and outs


# -- runtime: a node's own API, /metrics, and the gateway for a light client ---------------------------

FAST = TransportConfig(handshake_timeout=5.0, idle_timeout=3.0, keepalive_interval=0.5)


def _node_files(tmp_path: Path, auth: Authority, kp: KeyPair, rules: tuple[str, ...], serial: int) -> dict[str, str]:
    """The realm file and member certificate a node of ``auth`` is started with."""
    realm_file, cert_file = tmp_path / f"realm{serial}.pub", tmp_path / f"node{serial}.cert"
    save_realm(realm_file, auth.realm)
    cert = auth.admit(kp.node_id, Permissions.parse(rules), not_before=0, not_after=2**40, serial=serial)
    save_certificate(cert_file, auth.realm, cert)
    return {"realm_file": str(realm_file), "cert": str(cert_file)}


@pytest.mark.timeout(60)
async def test_node_api_denials_and_metrics_by_action(tmp_path: Path) -> None:
    auth = Authority.create("perms")
    kp = KeyPair.generate()
    files = _node_files(tmp_path, auth, kp, ("publish:a.>", "subscribe:a.>", "log:mine"), 1)
    node = await Node.start(NodeConfig(realm="perms", transport=FAST, realm_file=files["realm_file"],
                                       cert=files["cert"]), keypair=kp)
    try:
        sub = await node.subscribe("a.>")
        await node.publish("a.x", b"ok")
        assert (await asyncio.wait_for(sub.__anext__(), 5)).payload == b"ok"
        with pytest.raises(PermissionDenied):
            await node.publish("b.x", b"no")
        with pytest.raises(PermissionDenied):
            await node.subscribe("b.>")
        with pytest.raises(PermissionDenied):
            await node.advertise("echo", _echo)
        with pytest.raises(PermissionDenied):
            await node.call("echo", b"")
        await node.log("mine").append(b"fine")
        with pytest.raises(PermissionDenied):
            await node.log("theirs").append(b"no")
        kv = await node.kv("settings")
        with pytest.raises(PermissionDenied):
            await kv.set("k", b"v")
        text = render(node).decode()
        counts = {a: _sample(text, a) for a in ("publish", "subscribe", "advertise", "call", "log")}
        print(f"\n/metrics quicmesh_permission_denied_total by action: {counts}")
        assert counts == {"publish": 1, "subscribe": 1, "advertise": 1, "call": 1, "log": 2}
        await sub.close()
    finally:
        await node.stop()


@pytest.mark.timeout(60)
async def test_a_client_limited_to_subscribe_a_can_subscribe_there_and_nowhere_else(tmp_path: Path) -> None:
    auth = Authority.create("perms")
    kp = KeyPair.generate()
    files = _node_files(tmp_path, auth, kp, FULL, 1)
    gw = await Node.start(NodeConfig(realm="perms", transport=FAST, gateway=GatewayConfig(max_clients=4),
                                     realm_file=files["realm_file"], cert=files["cert"]), keypair=kp)
    ckey = KeyPair.generate()
    credential = auth.admit(ckey.node_id, Permissions.parse(["subscribe:a.>"], ["subscribe:a.secret"]),
                            not_before=0, not_after=2**40, serial=2, kind="client")
    token = tmp_path / "client.token"
    save_token(token, auth.realm, credential, ckey)
    client = await Client.connect(gw.address, realm="perms", transport=FAST, token=str(token))
    try:
        sub = await client.subscribe("a.>")
        denied: list[str] = []
        for pattern in ("b.>", "z.*", "a.secret", "c.x"):
            with pytest.raises(PermissionDenied):
                await client.subscribe(pattern)
            denied.append(pattern)
        with pytest.raises(PermissionDenied):
            await client.publish("a.x", b"no publish permission", confirm=True)
        with pytest.raises(PermissionDenied):
            await client.call("anything", b"")
        await gw.publish("a.secret", b"filtered")
        await gw.publish("a.x", b"hello")
        msg = await asyncio.wait_for(sub.get(), 5)
        assert (msg.topic, msg.payload) == ("a.x", b"hello")  # a.secret was filtered out before it
        print(f"\nclient limited to subscribe a.> (deny a.secret): a.> accepted, {len(denied)} of {len(denied)} "
              f"other patterns refused with PermissionDenied; a.secret filtered on delivery")
        text = render(gw).decode()
        assert _sample(text, "subscribe") == 4 and _sample(text, "publish") == 1 and _sample(text, "call") == 1
    finally:
        await client.close()
        await gw.stop()


async def _echo(payload: bytes) -> bytes:
    return payload


def _sample(text: str, action: str) -> int:
    line = f'quicmesh_permission_denied_total{{action="{action}"}} '
    for row in text.splitlines():
        if row.startswith(line):
            return int(float(row[len(line):]))
    raise AssertionError(f"no sample for {action}")
