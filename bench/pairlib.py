"""Two nodes over QUIC on loopback in this process, set up for the request paths (#14): ``a``
subscribes to ``ping`` and republishes every message to ``pong`` (``b`` subscribes to that), and
advertises ``echo``. Shared by ``bench/call_counts.py`` and ``bench/loop_budget.py``. And the same
between two ``quicmesh node`` processes (:func:`process_pair`: ``bench/gc_rtt.py``,
``bench/busy_poll.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from quicmesh.config import NodeConfig
from quicmesh.runtime.node import Node
from quicmesh.runtime.subscription import Subscription
from quicmesh.testing.process import NodeProcess
from quicmesh.testing.wait import eventually

PAYLOAD = b"x" * 64


@dataclass
class Pair:
    """The two nodes and ``b``'s subscriptions (``pong``; ``flood`` on ``a``'s side when asked)."""

    a: Node
    b: Node
    pong: Subscription
    flood: Subscription | None

    async def round_trip(self) -> int:
        """``b`` publishes to ``ping``; ``a`` republishes it to ``pong``; ``b`` reads it."""
        await self.b.publish("ping", PAYLOAD)
        await self.pong.get()
        return 1

    async def call(self) -> int:
        """``b`` calls ``echo`` on ``a``."""
        await self.b.call("echo", PAYLOAD)
        return 1


@contextlib.asynccontextmanager
async def echo_pair(
    realm: str, *, flood: bool = False, transport: dict[str, Any] | None = None
) -> AsyncIterator[Pair]:
    """Start the pair (see the module docstring), ready to measure; stopped on exit. ``flood``:
    ``a`` also subscribes to ``flood`` (``Pair.flood``), and ``b`` waits until it sees that.
    ``transport``: settings of both nodes' ``transport`` section (default: the defaults)."""
    cfg: dict[str, Any] = {"realm": realm, "discovery": {"local": False}}
    if transport is not None:
        cfg["transport"] = dict(transport)
    a = await Node.start(NodeConfig(**cfg))
    b = await Node.start(NodeConfig(bootstrap=(a.address,), **cfg))
    task: asyncio.Future[None] | None = None
    try:
        await eventually(lambda: bool(a.peers() and b.peers()), timeout=20)
        ping, pong = await a.subscribe("ping"), await b.subscribe("pong")
        flood_sub = await a.subscribe("flood") if flood else None

        async def echo() -> None:
            async for m in ping:
                await a.publish("pong", m.payload)

        task = asyncio.ensure_future(echo())

        async def handler(p: bytes) -> bytes:
            return p

        await a.advertise("echo", handler)
        await b.wait_for_subscriber("ping", 10)
        await a.wait_for_subscriber("pong", 10)
        if flood:
            await b.wait_for_subscriber("flood", 10)
        await b.wait_for_provider("echo", 10)
        yield Pair(a, b, pong, flood_sub)
    finally:
        if task is not None:
            task.cancel()
        await b.stop()
        await a.stop()


@contextlib.asynccontextmanager
async def process_pair(realm: str, env: dict[str, str]) -> AsyncIterator[tuple[NodeProcess, NodeProcess]]:
    """Two ``quicmesh node`` processes with ``env``: ``A``, then ``B`` joining through it; ``A``
    republishes ``rt.ping`` to ``rt.pong`` and ``B`` sees it subscribed. Both stopped (by pid)
    on exit."""
    extra = ["--no-local-discovery"]
    a = await NodeProcess.spawn("A", realm=realm, extra=extra, env=env)
    try:
        b = await NodeProcess.spawn("B", realm=realm, bootstrap=[a.address], extra=extra, env=env)
        try:
            await a.wait_peers(1)
            await b.wait_peers(1)
            await a.request("echo", "echoing", pattern="rt.ping", to="rt.pong")
            await b.request("wait_subscriber", "ready", topic="rt.ping")
            yield a, b
        finally:
            await b.stop()
    finally:
        await a.stop()
