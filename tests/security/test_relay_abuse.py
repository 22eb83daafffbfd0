"""#13 relays under abuse, over QUIC on loopback: a relay serves no one who is not an admitted
member of its realm, its per-peer budgets hold under a flood, and its cap on relayed peers holds.
Each test prints its figure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from quicmesh.config import NodeConfig, TransportConfig
from quicmesh.config.relay import RelayConfig
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.relay_messages import RelayData, RelayReserve
from quicmesh.core.wire import Codec, Message
from quicmesh.errors import RealmMismatch, TransportError
from quicmesh.identity import KeyPair
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic_transport import QuicTransport
from quicmesh.runtime.transport import Connection
from quicmesh.testing.wait import eventually

REALM = "relay-sec"
N = 1_000


@asynccontextmanager
async def nodes() -> AsyncIterator[Callable[..., object]]:
    started: list[Node] = []

    async def start(realm: str = REALM, **kw: object) -> Node:
        node = await Node.start(NodeConfig(realm=realm, **kw))  # type: ignore[arg-type]
        started.append(node)
        return node

    try:
        yield start
    finally:
        for n in reversed(started):
            await n.stop()


class _Quiet:
    def on_connection(self, conn: Connection) -> None:
        pass

    def on_message(self, conn: Connection, message: Message) -> None:
        pass

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        pass


async def _relay_and_target(start: Callable[..., object], **relay: object) -> tuple[Node, Node]:
    r: Node = await start(relay=RelayConfig(serve=True, mode="never", **relay))  # type: ignore[arg-type, misc]
    b: Node = await start(relay=RelayConfig(mode="always", via=(r.address,), relays_wanted=1))  # type: ignore[misc]
    await eventually(lambda: b.relay_agent.relayed_addresses(), timeout=10, what="b reserved at r")
    return r, b


async def test_non_members_get_nothing_relayed() -> None:
    async with nodes() as start:
        r, b = await _relay_and_target(start)
        # a light client (not a member of the overlay) connects to the relay and sends packets for b
        client = QuicTransport(KeyPair.generate(), REALM, TransportConfig(), Codec(ALL_MESSAGES), role="client")
        await client.start(_Quiet())
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
        other: Node = await start(realm="other-realm", relay=RelayConfig(mode="never"))  # type: ignore[misc]
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
    async with nodes() as start:
        r, b = await _relay_and_target(start, peer_packets_per_second=rate, peer_bytes_per_second=1e9)
        a: Node = await start(relay=RelayConfig(mode="never"))  # type: ignore[misc]
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
    async with nodes() as start:
        r: Node = await start(relay=RelayConfig(serve=True, mode="never", max_relayed_peers=cap))  # type: ignore[misc]
        wanting: list[Node] = [await start(relay=RelayConfig(mode="never")) for _ in range(2 * cap)]  # type: ignore[misc]
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
