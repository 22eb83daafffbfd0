"""Gateway budgets (#11): a light client's timeouts and payloads cannot pin more than its budget.

Before: a client's calls held their payload (up to 1 MiB each) for a timeout of the client's
choosing (600 s), limits counted calls, not bytes. Now the gateway clamps call timeouts to
``max_client_call_timeout`` and holds at most ``max_client_pending_bytes`` of a client's call
payloads; a call beyond it fails at once with ``LimitExceeded``, and the bytes come back when
the call ends.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from quicmesh.config import GatewayConfig, NodeConfig, TransportConfig
from quicmesh.errors import CallTimeout, LimitExceeded
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

pytestmark = pytest.mark.timeout(90)

FAST = TransportConfig(handshake_timeout=10.0, idle_timeout=30.0, keepalive_interval=2.0)
BUDGET = 256 * 1024
CLAMP = 2.0
PAYLOAD = 50 * 1024


async def test_a_clients_calls_hold_at_most_its_byte_budget_and_release_it_when_they_end() -> None:
    gw = await Node.start(NodeConfig(realm="bud", transport=FAST, gateway=GatewayConfig(
        max_client_pending_bytes=BUDGET, max_client_call_timeout=CLAMP)))
    provider = await Node.start(NodeConfig(realm="bud", transport=FAST, bootstrap=(gw.address,)))
    never = asyncio.Event()

    async def stuck(payload: bytes) -> bytes:
        await never.wait()  # never answers: the call lasts as long as its timeout
        return b""

    client: Client | None = None
    try:
        await provider.advertise("stuck", stuck)
        await gw.wait_for_provider("stuck", 10)
        client = await Client.connect(gw.address, realm="bud", transport=FAST)
        budgets = gw.gateway.budgets
        peak = 0
        calls = []
        t0 = time.monotonic()
        for _ in range(5):  # 5 x 50 KiB fit in 256 KiB
            calls.append(asyncio.ensure_future(client.call("stuck", b"x" * PAYLOAD, timeout=600)))
        await eventually(lambda: budgets.pending_bytes == 5 * PAYLOAD, timeout=10)
        refused = 0
        for _ in range(10):  # the next ones would exceed it: refused at once, whatever their timeout
            with pytest.raises(LimitExceeded) as li:
                await asyncio.wait_for(client.call("stuck", b"y" * PAYLOAD, timeout=600), 20)
            assert li.value.limit == "gateway.max_client_pending_bytes" and li.value.capacity == BUDGET
            refused += 1
            peak = max(peak, budgets.pending_bytes)
        small = asyncio.ensure_future(client.call("stuck", b"z" * 1000, timeout=600))  # fits in what is left
        await eventually(lambda: budgets.pending_bytes == 5 * PAYLOAD + 1000, timeout=10)
        peak = max(peak, budgets.pending_bytes)
        results = await asyncio.gather(*calls, small, return_exceptions=True)
        elapsed = time.monotonic() - t0
        await eventually(lambda: budgets.pending_bytes == 0, timeout=10)
        print(f"\nclient asked 600 s timeouts: 6 calls held {peak:,} B of a {BUDGET:,} B budget at the peak, "
              f"{refused} calls refused at once; all ended after {elapsed:.1f} s (clamp {CLAMP} s); "
              f"held afterwards: {budgets.pending_bytes} B")
        assert peak <= BUDGET
        assert all(isinstance(r, CallTimeout) for r in results), results
        assert elapsed < CLAMP + 20  # not 600 s
        assert gw.gateway.health()["held_payload_bytes"] == 0
    finally:
        never.set()
        if client is not None:
            await client.close()
        await provider.stop()
        await gw.stop()


async def test_bytes_held_for_a_client_are_released_when_it_leaves() -> None:
    gw = await Node.start(NodeConfig(realm="bud", transport=FAST, gateway=GatewayConfig(
        max_client_pending_bytes=BUDGET, max_client_call_timeout=30.0)))
    provider = await Node.start(NodeConfig(realm="bud", transport=FAST, bootstrap=(gw.address,)))
    never = asyncio.Event()

    async def stuck(payload: bytes) -> bytes:
        await never.wait()
        return b""

    try:
        await provider.advertise("stuck", stuck)
        await gw.wait_for_provider("stuck", 10)
        client = await Client.connect(gw.address, realm="bud", transport=FAST)
        calls = [asyncio.ensure_future(client.call("stuck", b"x" * PAYLOAD, timeout=30)) for _ in range(4)]
        await eventually(lambda: gw.gateway.budgets.pending_bytes == 4 * PAYLOAD, timeout=10)
        held = gw.gateway.budgets.pending_bytes
        await client.close()
        await asyncio.gather(*calls, return_exceptions=True)
        await eventually(lambda: gw.gateway.budgets.pending_bytes == 0, timeout=10)
        print(f"\n{held:,} B held for a client with 4 calls in flight; 0 B once it left")
    finally:
        never.set()
        await provider.stop()
        await gw.stop()
