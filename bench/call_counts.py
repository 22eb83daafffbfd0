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

Each is counted in three chunks and the quietest is reported (``CHUNKS``; the JSON lists all).
Both nodes give an owed ACK the longest wait allowed (``transport.ack_delay`` 10 ms, see
:data:`ACK_DELAY`), so whether it rides on the reply does not depend on the profiler's slowdown.

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

from quicmesh.runtime.client import Client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pairlib import PAYLOAD, echo_pair  # noqa: E402  (bench/, beside this script)

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


CHUNKS = 3
"""Each operation is counted in this many chunks and the quietest one is reported: a count is
load-independent only while nothing is late, and under a loaded machine (a parallel test run)
a slowed round trip lets QUIC's loss-detection timer fire and the loop run extra passes (seen:
+20 % on the pub/sub round trip); a chunk without that is the path's own count."""


ACK_DELAY = 0.01
"""``transport.ack_delay`` of both nodes here (the default is 0.5 ms): how long a datagram's ACK
waits for the reply to carry it. cProfile slows every path about twofold, and a pub/sub reply
(the slowest path) then often came later than 0.5 ms: the ACK timer fired and sent a datagram of
its own, which the peer read, processed and timed. Twelve chunks of 60 round trips on an idle
machine spread 1,258-1,506 calls per round trip with the default (1,456-1,544 in every chunk of
a measurement in a busy hour), 1,222-1,354 with 10 ms. What remains is the loop's other timers
(QUIC's probe timer re-armed, the timer heap's comparisons), which a loaded machine still adds
to: the quietest chunk and the test's repeated measurements absorb that."""


async def _count(op: Op, count: int) -> dict[str, Any]:
    """Run ``op`` until ``count`` operations ran, in :data:`CHUNKS` chunks each under its own
    profiler; calls per operation of the chunk with the fewest (the others in ``chunks``)."""
    runs: list[dict[str, Any]] = []
    per_chunk = max(1, -(-count // CHUNKS))
    done_all = 0
    while done_all < count:
        prof = cProfile.Profile()
        done = 0
        prof.enable()
        try:
            while done < per_chunk and done_all + done < count:
                done += await op()
        finally:
            prof.disable()
        done_all += done
        runs.append(_tally(prof, done))
    best = min(runs, key=lambda r: float(r["calls_per_op"]))
    return {**best, "operations": done_all, "chunks": [round(float(r["calls_per_op"]), 1) for r in runs]}


def _tally(prof: cProfile.Profile, done: int) -> dict[str, Any]:
    stats = pstats.Stats(prof)
    by_module: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    for (path, line, fn), (_cc, calls, _tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        by_module[_module(path)] += calls
        by_function[f"{_module(path)}:{line} {fn}"] += calls
    total: int = stats.total_calls  # type: ignore[attr-defined]
    return {
        "calls_per_op": total / done,
        "top_modules": {m: round(n / done, 1) for m, n in by_module.most_common(8)},
        "top_functions": {f: round(n / done, 2) for f, n in by_function.most_common(40)},
    }


async def measure(count: int) -> dict[str, dict[str, Any]]:
    """Every operation's counts (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    async with echo_pair("calls", flood=True, transport={"ack_delay": ACK_DELAY}) as pair:
        a, b, flood = pair.a, pair.b, pair.flood
        assert flood is not None

        async def calls_64() -> int:
            await asyncio.gather(*(b.call("echo", PAYLOAD) for _ in range(64)))
            return 64

        async def publish_64() -> int:
            for _ in range(64):
                await b.publish("flood", PAYLOAD)
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
            ("pubsub_round_trip", pair.round_trip, count), ("rpc_call", pair.call, count),
            ("rpc_call_64_in_flight", calls_64, 64 * max(4, count // 16)),
            ("publish_64B_delivered", publish_64, 64 * max(4, count // 4)),
            ("light_client_cycle", light_cycle, max(5, count // 10)),
        ]
        for name, op, n in ops:
            await op()  # warm: first-use paths (a route, a swarm's first batch) are not the steady state
            out[name] = await _count(op, n)
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
