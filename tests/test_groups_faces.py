"""Work-queue groups for light clients (through the gateway) and the HTTP face (SSE with
``?group=``, read by curl), over QUIC on loopback: members of every kind share one group and
each message is taken once."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from portkit import restart_port
from test_http_api import SseReader, curl

from quicmesh.config import GatewayConfig, HttpApiConfig, NodeConfig, TransportConfig
from quicmesh.core.groups import group_name
from quicmesh.errors import InvalidTopic
from quicmesh.identity import KeyPair
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node, Subscription
from quicmesh.testing.wait import eventually

pytestmark = pytest.mark.timeout(120)
FAST = TransportConfig(handshake_timeout=5.0, idle_timeout=3.0, keepalive_interval=0.5)
NAME = group_name("workers", "jobs.>")
M = 300


async def _drain(sub: Subscription, seen: Counter[bytes], by: str, who: Counter[str]) -> None:
    async for msg in sub:
        seen[msg.payload] += 1
        who[by] += 1


async def test_a_light_client_is_a_group_member() -> None:
    gw = await Node.start(NodeConfig(realm="gq", transport=FAST, gateway=GatewayConfig(max_clients=4)))
    worker = await Node.start(NodeConfig(realm="gq", transport=FAST, bootstrap=(gw.address,)))
    pub = await Node.start(NodeConfig(realm="gq", transport=FAST, bootstrap=(gw.address,)))
    client = await Client.connect(gw.address, realm="gq", transport=FAST)
    seen: Counter[bytes] = Counter()
    who: Counter[str] = Counter()
    try:
        with pytest.raises(InvalidTopic):
            await client.subscribe("jobs.>", group="bad name")
        csub = await client.subscribe("jobs.>", group="workers")
        nsub = await worker.subscribe("jobs.>", group="workers")
        await pub.wait_until(lambda: len(pub.services.providers(NAME, pub._now())) == 2, timeout=20)

        async def client_reader() -> None:
            async for msg in csub:
                seen[msg.payload] += 1
                who["client"] += 1

        tasks = [asyncio.create_task(client_reader()), asyncio.create_task(_drain(nsub, seen, "node", who))]
        for i in range(M):
            await pub.publish("jobs.x", b"%d" % i)
        await eventually(lambda: len(seen) == M, timeout=30)
        print(f"\n{M} messages to a group of a light client and a node: {dict(who)}, "
              f"{sum(c - 1 for c in seen.values())} duplicates")
        assert sum(seen.values()) == M and who["client"] > M // 4 and who["node"] > M // 4
        # the client leaves: everything goes to the node member
        await csub.close()
        await pub.wait_until(lambda: len(pub.services.providers(NAME, pub._now())) == 1, timeout=20)
        before = who["node"]
        for i in range(M, M + 50):
            await pub.publish("jobs.x", b"%d" % i)
        await eventually(lambda: len(seen) == M + 50, timeout=30)
        assert who["node"] == before + 50
        for t in tasks:
            t.cancel()
    finally:
        await client.close()
        for n in (pub, worker, gw):
            await n.stop()


async def test_an_sse_stream_with_group_is_a_group_member() -> None:
    a = await Node.start(NodeConfig(realm="gh", transport=FAST, http_api=HttpApiConfig(listen="127.0.0.1:0")))
    b = await Node.start(NodeConfig(realm="gh", transport=FAST, bootstrap=(a.address,)))
    c = await Node.start(NodeConfig(realm="gh", transport=FAST, bootstrap=(a.address,)))
    seen: Counter[bytes] = Counter()
    who: Counter[str] = Counter()
    api = f"http://{a.http_api_address}/v1"
    try:
        status, body = await curl(f"{api}/subscribe/jobs.%3E?group=bad%20name")
        assert status == 400 and b"BadRequest" in body
        sse = await SseReader.open(f"{api}/subscribe/jobs.%3E?group=workers")
        bsub = await b.subscribe("jobs.>", group="workers")
        task = asyncio.create_task(_drain(bsub, seen, "node", who))
        await c.wait_until(lambda: len(c.services.providers(NAME, c._now())) == 2, timeout=20)
        for i in range(M):
            await c.publish("jobs.y", b"%d" % i)

        async def read_sse() -> None:
            while True:
                event, doc = await sse.next(timeout=30)
                if event == "message":
                    assert isinstance(doc["payload"], str)
                    seen[doc["payload"].encode()] += 1
                    who["sse"] += 1

        reader = asyncio.create_task(read_sse())
        await eventually(lambda: len(seen) == M, timeout=30)
        print(f"\n{M} messages to a group of an SSE stream (curl) and a node: {dict(who)}, "
              f"{sum(n - 1 for n in seen.values())} duplicates")
        assert sum(seen.values()) == M and who["sse"] > M // 4 and who["node"] > M // 4
        reader.cancel()
        task.cancel()
        await sse.close()
    finally:
        for n in (c, b, a):
            await n.stop()


async def test_a_light_client_member_stays_a_member_across_a_gateway_restart() -> None:
    key = KeyPair.generate()
    cfg = NodeConfig(realm="gr", transport=FAST, gateway=GatewayConfig(max_clients=4))
    port = restart_port()  # stays free while the gateway is down
    gw = await Node.start(cfg.replace(listen=f"127.0.0.1:{port}"), keypair=key)
    c = await Client.connect(gw.address, realm="gr", transport=FAST, gateway_id=gw.id, reconnect_max_delay=0.5)
    try:
        sub = await c.subscribe("jobs.>", group="workers")
        await gw.stop()
        await eventually(lambda: not c.connected, timeout=10)
        gw = await Node.start(NodeConfig(realm="gr", transport=FAST, listen=f"127.0.0.1:{port}",
                                         gateway=GatewayConfig(max_clients=4)), keypair=key)
        await c.wait_connected(15)
        # the restored subscription is a group membership again, not an ordinary subscription
        await gw.wait_until(lambda: len(gw.services.providers(group_name("workers", "jobs.>"), gw._now())) == 1,
                            timeout=15)
        await gw.publish("jobs.z", b"after")
        assert (await asyncio.wait_for(sub.get(), 5)).payload == b"after"
        assert gw.core.groups.stats()["delivered_local"] == 1
    finally:
        await c.close()
        await gw.stop()
