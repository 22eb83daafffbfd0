"""Light clients connect and close cheaply (#14): ``close()`` sends the close and returns,
without waiting for the gateway; what was published just before it still leaves; a drain is
waited for only when asked (``close(drain=True)``, ``drain()``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from quicmesh.config import NodeConfig, TransportConfig
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

pytestmark = pytest.mark.timeout(90)

FAST = TransportConfig(handshake_timeout=5.0, idle_timeout=3.0, keepalive_interval=0.5)


@pytest.fixture
async def gw() -> AsyncIterator[Node]:
    node = await Node.start(NodeConfig(realm="lc", transport=FAST, discovery={"local": False}))  # type: ignore[arg-type]
    yield node
    await node.stop()


async def test_close_does_not_wait_for_the_gateway(gw: Node) -> None:
    c = await Client.connect(gw.address, realm="lc", transport=FAST)
    await eventually(lambda: gw.gateway.clients == 1)
    ep = gw.transport._endpoint  # type: ignore[attr-defined]
    ep.transport.pause_reading()  # the gateway answers nothing: a lingering close would wait for it
    try:
        t0 = time.perf_counter()
        await c.close()
        seconds = time.perf_counter() - t0
    finally:
        ep.transport.resume_reading()
    print(f"\nclose() with a silent gateway returned in {seconds * 1e3:.1f} ms")
    assert seconds < 0.5  # before #14: up to 2 s (waiting for the QUIC close to finish)
    await eventually(lambda: gw.gateway.clients == 0, timeout=10)  # the close frame got there


async def test_publish_right_before_close_is_delivered(gw: Node) -> None:
    sub = await gw.subscribe("lc.last")
    for i in range(20):
        c = await Client.connect(gw.address, realm="lc", transport=FAST)
        await c.publish("lc.last", str(i).encode())
        await c.close()  # same loop iteration as the publish
    got = [(await asyncio.wait_for(sub.get(), 5)).payload for _ in range(20)]
    assert got == [str(i).encode() for i in range(20)]
    print("\n20 of 20 publishes made right before close() delivered")


async def test_close_writes_out_what_quic_held_back(gw: Node) -> None:
    """200 KB published then ``close()`` at once: more than QUIC's initial congestion window, so
    QUIC holds most of it back (as pacing holds a small publish back on a busy machine); the
    close waits until it is on the wire, else QUIC's close would discard it."""
    sub = await gw.subscribe("lc.held")
    c = await Client.connect(gw.address, realm="lc", transport=FAST)
    for i in range(200):
        await c.publish("lc.held", b"x" * 1000 + i.to_bytes(2, "big"))
    t0 = time.perf_counter()
    await c.close()
    seconds = time.perf_counter() - t0
    got = [(await asyncio.wait_for(sub.get(), 5)).payload[-2:] for _ in range(200)]
    assert got == [i.to_bytes(2, "big") for i in range(200)]
    print(f"\n200 of 200 publishes (200 KB) made right before close() delivered; close() took {seconds * 1e3:.1f} ms")


async def test_drain_when_asked(gw: Node) -> None:
    sub = await gw.subscribe("lc.bulk")
    c = await Client.connect(gw.address, realm="lc", transport=FAST)
    for i in range(200):
        await c.publish("lc.bulk", b"x" * 1000 + i.to_bytes(2, "big"))
    await c.close(drain=True)
    got = [(await asyncio.wait_for(sub.get(), 5)).payload[-2:] for _ in range(200)]
    assert got == [i.to_bytes(2, "big") for i in range(200)]


async def test_connect_close_cycles(gw: Node) -> None:
    """connect, subscribe, publish, unsubscribe, close: the light-client cycle of bench/peers.py."""
    n = 10
    t0 = time.perf_counter()
    for _ in range(n):
        c = await Client.connect(gw.address, realm="lc", transport=FAST)
        s = await c.subscribe("lc.cycle")
        await c.publish("lc.cycle", b"x")
        await s.close()
        await c.close()
    per = (time.perf_counter() - t0) / n
    print(f"\nlight-client cycle: {per * 1e3:.1f} ms ({1 / per:.0f} cycles/s)")
    await eventually(lambda: gw.gateway.clients == 0, timeout=10)
    assert gw.gateway.clients == 0
