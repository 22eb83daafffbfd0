"""Per-client caps apart from the node's own (#11), and Sybil adverts against the registry.

Before: client subscriptions counted against the node's own ``gossip.max_topics``, so a client
filled them and the node's own ``subscribe`` raised ``LimitExceeded``; client adverts used the
node's ``registry.max_per_provider``; Sybil providers filled the registry until the node's own
adverts were refused. Now clients have their own caps (per client and for all clients) on top of
the node's, and the registry holds the node's own adverts apart from foreign ones.
"""

from __future__ import annotations

from random import Random

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import GatewayConfig, GossipConfig, NodeConfig, PubSubConfig, RegistryConfig, TransportConfig
from quicmesh.core.registry import Broadcast, Registry
from quicmesh.errors import LimitExceeded
from quicmesh.identity import KeyPair
from quicmesh.runtime.client import Client, ClientSubscription
from quicmesh.runtime.node import Node

pytestmark = pytest.mark.timeout(90)

FAST = TransportConfig(handshake_timeout=5.0, idle_timeout=5.0, keepalive_interval=0.5)


async def _echo(payload: bytes) -> bytes:
    return payload


async def test_the_nodes_own_subscribe_and_advertise_work_while_clients_are_at_their_caps() -> None:
    cfg = NodeConfig(
        realm="caps", transport=FAST,
        gossip=GossipConfig(max_topics=8), pubsub=PubSubConfig(max_subscriptions=8),
        registry=RegistryConfig(max_per_provider=12),
        gateway=GatewayConfig(max_client_subscriptions=32, max_client_topics=16, max_client_advertisements=8,
                              max_clients_subscriptions=40, max_clients_topics=16, max_clients_advertisements=8),
    )
    gw = await Node.start(cfg)
    clients: list[Client] = []
    try:
        a = await Client.connect(gw.address, realm="caps", transport=FAST)
        clients.append(a)
        # 16 topics: the client's cap
        subs: list[ClientSubscription] = [await a.subscribe(f"c{i}.x") for i in range(16)]
        with pytest.raises(LimitExceeded) as li:
            await a.subscribe("c16.x")
        assert li.value.limit == "gateway.max_client_topics"
        with pytest.raises(LimitExceeded) as li:
            await a.publish("p.x", b"x", confirm=True)  # publishing joins a swarm too
        assert li.value.limit == "gateway.max_client_topics"
        subs.append(await a.subscribe("c0.y"))  # another pattern in a topic it holds: fine
        for i in range(8):
            await a.advertise(f"svc{i}", _echo)
        with pytest.raises(LimitExceeded) as li:
            await a.advertise("svc8", _echo)
        assert li.value.limit == "gateway.max_client_advertisements"
        # a second client: the all-client topic total is reached, held topics still work
        b = await Client.connect(gw.address, realm="caps", transport=FAST)
        clients.append(b)
        with pytest.raises(LimitExceeded) as li:
            await b.subscribe("d.x")
        assert li.value.limit == "gateway.max_clients_topics"
        subs.append(await b.subscribe("c1.z"))
        with pytest.raises(LimitExceeded) as li:
            await b.advertise("other", _echo)
        assert li.value.limit == "gateway.max_clients_advertisements"
        health = gw.gateway.health()
        # the node's own: 7 topics (the 8th is the registry's $svc) and 8 subscriptions, 4 adverts
        own_subs = [await gw.subscribe(f"n{i}.x") for i in range(7)]
        own_subs.append(await gw.subscribe("n0.y"))
        with pytest.raises(LimitExceeded) as li:
            await gw.subscribe("n0.z")  # the node's own caps are still its own: subscriptions
        assert li.value.limit == "pubsub.max_subscriptions"
        await own_subs.pop().close()
        with pytest.raises(LimitExceeded) as li:
            await gw.subscribe("n7.x")  # ... and topics ($svc and n0..n6 make 8)
        assert li.value.limit == "gossip.max_topics"
        for i in range(4):
            await gw.advertise(f"own{i}", _echo)
        print(f"\nclients at their caps ({health['client_topics']} topics, {health['client_subscriptions']} "
              f"subscriptions, {health['provided_names']} names): the node's own {len(own_subs) + 1} of 8 "
              f"subscriptions (7 topics) and 4 of 4 adverts succeeded; node topics {len(gw.mesh.swarms)}")
        assert health["client_topics"] == 16 and health["provided_names"] == 8
        for own in own_subs:
            await own.close()
        for sub in subs:
            await sub.close()
    finally:
        for c in clients:
            await c.close()
        await gw.stop()


def _registry(seed: int, cfg: RegistryConfig) -> Registry:
    kp = KeyPair.from_seed(seed.to_bytes(4, "big") * 8)
    return Registry(kp, (f"sim:{seed}",), cfg, realm="caps", rng=Random(seed), registry=ContainerRegistry(f"r{seed}"))


def test_sybil_adverts_never_push_out_or_refuse_the_nodes_own() -> None:
    cfg = RegistryConfig(max_entries=100, max_per_provider=5)
    node = _registry(0, cfg)
    for i in range(3):
        node.advertise(f"mine{i}", 0.0)
    sent = 0
    for s in range(1, 61):  # 60 Sybil providers x 8 names = 480 adverts for a table of 100
        sybil = _registry(s, RegistryConfig(max_per_provider=10))  # a hostile provider ignores our cap
        for j in range(8):
            for o in sybil.advertise(f"s{s}.{j}", 0.0):
                if isinstance(o, Broadcast):
                    node.handle_advert(o.payload, 0.0)
                    sent += 1
    foreign = len(node) - 3
    own_after = [node.advertise("mine3", 1.0), node.advertise("mine4", 1.0)]
    mine = sum(1 for i in range(5) if node.providers(f"mine{i}", 1.0))
    print(f"\n{sent} Sybil adverts from 60 providers: {foreign} held (max_entries 100), "
          f"{node.counters['rejected_per_provider']} refused past 5 per provider, "
          f"{node.counters['rejected_full']} refused as full; the node's own: {mine} of 5 held")
    assert foreign == 100 and all(own_after) and mine == 5
    assert node.counters["rejected_per_provider"] >= 3 * 20  # the first 20 providers: 3 over their 5
