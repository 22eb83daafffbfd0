"""#13 relays under abuse, over QUIC on loopback: a relay serves no one who is not an admitted
member of its realm, its per-peer budgets hold under a flood, and its cap on relayed peers holds.
Each test prints its figure."""

from __future__ import annotations

import asyncio

import pytest
from transportkit import Quiet

from quicmesh.config import TransportConfig
from quicmesh.config.relay import RelayConfig
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.relay_messages import RelayData, RelayReserve
from quicmesh.core.wire import Codec
from quicmesh.errors import RealmMismatch, TransportError
from quicmesh.identity import KeyPair
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic_transport import QuicTransport
from quicmesh.testing.nodes import NodeGroup
from quicmesh.testing.wait import eventually

REALM = "relay-sec"
N = 1_000


async def _relay_and_target(nodes: NodeGroup, **relay: object) -> tuple[Node, Node]:
    r: Node = await nodes.start(relay=RelayConfig(serve=True, mode="never", **relay))  # type: ignore[arg-type]
    b: Node = await nodes.start(relay=RelayConfig(mode="always", via=(r.address,), relays_wanted=1))
    await eventually(lambda: b.relay_agent.relayed_addresses(), timeout=10, what="b reserved at r")
    return r, b


async def test_non_members_get_nothing_relayed() -> None:
    async with NodeGroup(REALM) as nodes:
        r, b = await _relay_and_target(nodes)
        # a light client (not a member of the overlay) connects to the relay and sends packets for b
        client = QuicTransport(KeyPair.generate(), REALM, TransportConfig(), Codec(ALL_MESSAGES), role="client")
        await client.start(Quiet())
        try:
            conn = await client.dial(r.address, r.id)
            conn.send(RelayReserve())
            for i in range(N):
                conn.send(RelayData(b.id.raw, i.to_bytes(4, "big") * 300))
                if i % 100 == 99:
                    await conn.drain(until=0)
            await eventually(lambda: r.relay_agent.gauges()["relay_dropped_total:not_member"] >= N, timeout=10,
                             what="the relay saw every packet")
        finally:
            await client.stop()
        # a node of another realm cannot even reach the relay
        other: Node = await nodes.start(realm="other-realm", relay=RelayConfig(mode="never"))
        with pytest.raises((RealmMismatch, TransportError)):
            await other.transport.dial(b.relay_agent.relayed_addresses()[0], b.id)
        g = r.relay_agent.gauges()
        print(f"non-members: {g['relay_forwarded_packets_total']:.0f} of {N:,} packets forwarded "
              f"(dropped not_member {g['relay_dropped_total:not_member']:.0f}); "
              f"reservations refused {g['relay_reservations_refused_total']:.0f}; "
              f"other realm: 0 connections")
        assert g["relay_forwarded_packets_total"] == 0
        assert isinstance(b.transport, QuicTransport) and b.transport.relay.received == 0
        assert g["relay_reservations_refused_total"] == 1 and g["relay_reservations"] == 1


async def test_budgets_hold_under_a_flood() -> None:
    rate = 200.0
    async with NodeGroup(REALM) as nodes:
        r, b = await _relay_and_target(nodes, peer_packets_per_second=rate, peer_bytes_per_second=1e9)
        a: Node = await nodes.start(relay=RelayConfig(mode="never"))
        conn = await a.transport.dial(r.address, r.id)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        flood = 5 * N
        for i in range(flood):
            conn.send(RelayData(b.id.raw, b"\x00" * 1000))
            if i % 50 == 49:
                await conn.drain(until=0)
        await eventually(lambda: sum(v for k, v in r.relay_agent.gauges().items()
                                     if k.startswith("relay_dropped_total") or k == "relay_forwarded_packets_total")
                         >= flood, timeout=20, what="the relay handled the flood")
        elapsed = loop.time() - t0
        g = r.relay_agent.gauges()
        fwd = g["relay_forwarded_packets_total"]
        allowed = rate + rate * elapsed  # the burst plus the refill
        print(f"flood of {flood:,} packets in {elapsed:.2f} s at a {rate:.0f} packets/s budget: "
              f"{fwd:.0f} forwarded (budget allows {allowed:.0f}), {g['relay_dropped_total:packets']:.0f} dropped")
        assert fwd <= allowed
        assert g["relay_dropped_total:packets"] >= flood - allowed
        # the flood did not cost b its other traffic: the relayed connection still opens
        assert await a.connect(b.relay_agent.relayed_addresses()[0]) == b.id


async def test_cap_on_relayed_peers_holds() -> None:
    cap = 3
    async with NodeGroup(REALM) as nodes:
        r: Node = await nodes.start(relay=RelayConfig(serve=True, mode="never", max_relayed_peers=cap))
        wanting: list[Node] = [await nodes.start(relay=RelayConfig(mode="never")) for _ in range(2 * cap)]
        results = []
        for n in wanting:
            try:
                assert isinstance(n.transport, QuicTransport)
                await n.transport.relay.reserve(r.address, r.id)
                results.append("ok")
            except TransportError as exc:
                results.append(str(exc).rpartition(": ")[2])
        g = r.relay_agent.gauges()
        print(f"{len(wanting)} peers asked a relay capped at {cap}: {results.count('ok')} reserved, "
              f"{results.count('max_relayed_peers')} refused max_relayed_peers; relay_peers {g['relay_peers']:.0f}")
        assert results.count("ok") == cap and results.count("max_relayed_peers") == cap
        assert g["relay_peers"] == cap and g["relay_reservations_refused_total"] == cap
