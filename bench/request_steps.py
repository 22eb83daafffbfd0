#!/usr/bin/env python3
"""Per-step timing of the request path (#14), two nodes over QUIC on loopback in this process.

    python bench/request_steps.py [--count 300] [--loop asyncio|uvloop]

Prints, for a pub/sub round trip (publish -> subscriber -> reply publish -> reader) and an RPC
call (call -> handler -> reply), the median time in µs from the start at which each step ran
(the functions named in the table are wrapped with a timestamp), then a light-client cycle
(connect, subscribe, publish, unsubscribe, close) split by step, in ms. Both nodes share one
process and one loop: read the steps and their differences, not the absolute totals.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
from collections.abc import Callable
from typing import Any

from quicmesh.bounded.aio import BoundedQueue
from quicmesh.config import NodeConfig
from quicmesh.runtime import _quic_adapter as qa
from quicmesh.runtime import driver as drv
from quicmesh.runtime import quic_connection as qc
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

marks: list[tuple[str, float]] = []
on = [False]


def _wrap(cls: Any, name: str, label: str) -> None:
    orig: Callable[..., Any] | None = getattr(cls, name, None)
    if orig is None:
        return

    def f(self: Any, *a: Any, **k: Any) -> Any:
        if on[0]:
            marks.append((label, time.perf_counter()))
        return orig(self, *a, **k)

    setattr(cls, name, f)


for cls, name, label in (
    (drv.NodeDriver, "_rearm_now", "end of iteration (batch flush)"), (qc.QuicConnection, "send", "conn.send"),
    (qc.QuicConnection, "_flush", "conn write"), (qa.Proto, "transmit", "transmit"),
    (qa.Proto, "datagram_received", "datagram received"), (drv.NodeDriver, "on_message", "node.on_message"),
    (drv.NodeDriver, "_drain_inbox", "inbox drained"), (BoundedQueue, "put_many", "subscription queue put"),
    (BoundedQueue, "put_nowait", "subscription queue put"),
):
    _wrap(cls, name, label)


def _table(title: str, runs: list[list[tuple[str, float]]]) -> None:
    steps: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    for run in runs:
        for i, (label, t) in enumerate(run):
            steps[(i, label)].append(t)
    common = collections.Counter(tuple(label for label, _ in run) for run in runs).most_common(1)[0][0]
    print(f"\n{title} (median over {len(runs)} runs, µs from the start):")
    for i, label in enumerate(common):
        print(f"  {statistics.median(steps[(i, label)]):8.0f}  {label}")


async def _measure(count: int) -> None:
    cfg: dict[str, Any] = {"realm": "steps", "discovery": {"local": False}}
    a = await Node.start(NodeConfig(**cfg))
    b = await Node.start(NodeConfig(bootstrap=(a.address,), **cfg))
    await eventually(lambda: bool(a.peers() and b.peers()), timeout=20)
    sub_a, sub_b = await a.subscribe("ping"), await b.subscribe("pong")

    async def echo() -> None:
        async for m in sub_a:
            if on[0]:
                marks.append(("subscriber got it; reply published", time.perf_counter()))
            await a.publish("pong", m.payload)

    task = asyncio.ensure_future(echo())
    await b.wait_for_subscriber("ping", 10)
    await a.wait_for_subscriber("pong", 10)

    async def handler(p: bytes) -> bytes:
        if on[0]:
            marks.append(("handler runs", time.perf_counter()))
        return p

    await a.advertise("echo", handler)
    await b.wait_for_provider("echo", 10)

    async def pubsub() -> None:
        await b.publish("ping", b"x" * 64)
        await sub_b.get()

    async def call() -> None:
        await b.call("echo", b"x" * 64)

    for title, op in (("pub/sub round trip", pubsub), ("RPC call", call)):
        runs = []
        for _ in range(count):
            await asyncio.sleep(0.002)
            marks.clear()
            on[0] = True
            t0 = time.perf_counter()
            await op()
            marks.append(("done", time.perf_counter()))
            on[0] = False
            runs.append([(label, (t - t0) * 1e6) for label, t in marks])
        _table(title, runs)
    task.cancel()
    gw = a
    cycle: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(max(5, count // 20)):
        t = [time.perf_counter()]
        c = await Client.connect(gw.address, realm="steps")
        t.append(time.perf_counter())
        s = await c.subscribe("lc")
        t.append(time.perf_counter())
        await c.publish("lc", b"x")
        t.append(time.perf_counter())
        await s.close()
        t.append(time.perf_counter())
        await c.close()
        t.append(time.perf_counter())
        for i, k in enumerate(("connect", "subscribe", "publish", "unsubscribe", "close")):
            cycle[k].append((t[i + 1] - t[i]) * 1e3)
        cycle["cycle"].append((t[-1] - t[0]) * 1e3)
    print("\nlight-client cycle (median ms): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in cycle.items()))
    await b.stop()
    await a.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = p.parse_args()
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_measure(args.count))


if __name__ == "__main__":
    main()
