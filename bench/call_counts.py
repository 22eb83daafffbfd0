#!/usr/bin/env python3
"""Python function calls per operation on the request paths (#14), counted, not timed.

    python bench/call_counts.py [--count 300] [--json bench/results/call_counts.json]

Two nodes over QUIC on loopback in this process (one loop), under ``cProfile``, which counts
every Python function call and every call into C. For each operation the count is the total over
``--count`` operations divided by their number, both nodes together (and, for the light client,
the client and its gateway node together):

* a pub/sub round trip (publish -> subscriber -> reply publish -> reader), one at a time;
* an RPC call (call -> handler -> reply), one at a time, and with 64 in flight;
* a 64-byte message published and delivered, 64 publishes per batch awaited;
* a light-client cycle (connect, subscribe, publish, receive it, unsubscribe, close).

The machine's load does not change a count, so a change to the hot paths can be judged on this
shared machine where a timing cannot resolve it (a call is worth ~0.1-0.3 µs of CPU here). The
top modules by calls show where they go. ``tests/test_call_counts.py`` holds the paths to a
budget. JSON: the per-operation counts and the top modules.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import pstats
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from quicmesh.config import NodeConfig
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

HERE = Path(__file__).resolve().parent

Op = Callable[[], Awaitable[int]]
"""One measured unit of work; returns how many operations it did."""


def _module(path: str) -> str:
    if path == "~":
        return "(C)"
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/lib/python3" in path:  # the standard library: lib/python3.N/<module>
        return path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return path


async def _count(op: Op, count: int) -> dict[str, Any]:
    """Run ``op`` until ``count`` operations ran, under a profiler; calls per operation."""
    prof = cProfile.Profile()
    done = 0
    prof.enable()
    try:
        while done < count:
            done += await op()
    finally:
        prof.disable()
    stats = pstats.Stats(prof)
    by_module: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    for (path, line, fn), (_cc, calls, _tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        by_module[_module(path)] += calls
        by_function[f"{_module(path)}:{line} {fn}"] += calls
    total: int = stats.total_calls  # type: ignore[attr-defined]
    return {
        "operations": done,
        "calls_per_op": total / done,
        "top_modules": {m: round(n / done, 1) for m, n in by_module.most_common(8)},
        "top_functions": {f: round(n / done, 2) for f, n in by_function.most_common(40)},
    }


async def measure(count: int) -> dict[str, dict[str, Any]]:
    """Every operation's counts (see the module docstring)."""
    cfg: dict[str, Any] = {"realm": "calls", "discovery": {"local": False}}
    a = await Node.start(NodeConfig(**cfg))
    b = await Node.start(NodeConfig(bootstrap=(a.address,), **cfg))
    out: dict[str, dict[str, Any]] = {}
    try:
        await eventually(lambda: bool(a.peers() and b.peers()), timeout=20)
        ping, pong, flood = await a.subscribe("ping"), await b.subscribe("pong"), await a.subscribe("flood")

        async def echo() -> None:
            async for m in ping:
                await a.publish("pong", m.payload)

        echo_task = asyncio.ensure_future(echo())

        async def handler(p: bytes) -> bytes:
            return p

        await a.advertise("echo", handler)
        await b.wait_for_subscriber("ping", 10)
        await a.wait_for_subscriber("pong", 10)
        await b.wait_for_subscriber("flood", 10)
        await b.wait_for_provider("echo", 10)
        payload = b"x" * 64

        async def round_trip() -> int:
            await b.publish("ping", payload)
            await pong.get()
            return 1

        async def call() -> int:
            await b.call("echo", payload)
            return 1

        async def calls_64() -> int:
            await asyncio.gather(*(b.call("echo", payload) for _ in range(64)))
            return 64

        async def publish_64() -> int:
            for _ in range(64):
                await b.publish("flood", payload)
            for _ in range(64):
                await flood.get()
            return 64

        async def light_cycle() -> int:
            c = await Client.connect(a.address, realm="calls", reconnect=False)
            s = await c.subscribe("lc")
            await c.publish("lc", b"x")
            await s.get()
            await s.close()
            await c.close()
            return 1

        ops: list[tuple[str, Op, int]] = [
            ("pubsub_round_trip", round_trip, count), ("rpc_call", call, count),
            ("rpc_call_64_in_flight", calls_64, 64 * max(4, count // 16)),
            ("publish_64B_delivered", publish_64, 64 * max(4, count // 4)),
            ("light_client_cycle", light_cycle, max(5, count // 10)),
        ]
        for name, op, n in ops:
            await op()  # warm: first-use paths (a route, a swarm's first batch) are not the steady state
            out[name] = await _count(op, n)
        echo_task.cancel()
    finally:
        await b.stop()
        await a.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=300, help="operations per measurement")
    p.add_argument("--json", default=str(HERE / "results" / "call_counts.json"))
    args = p.parse_args(argv)
    res = asyncio.run(measure(args.count))
    print(f"{'operation (both ends, one process)':36} | {'Python calls / op':>17} | top modules (calls / op)")
    print(f"{'-' * 36}-|-{'-' * 17}-|-{'-' * 40}")
    for name, r in res.items():
        top = ", ".join(f"{m} {n:g}" for m, n in list(r["top_modules"].items())[:4])
        print(f"{name:36} | {r['calls_per_op']:17,.0f} | {top}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"count": args.count, "python": sys.version.split()[0],
                                           "operations": res}, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
