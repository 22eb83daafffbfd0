"""``bench/loop_budget.py`` (#14): the per-callback budget of a pub/sub round trip and a call.

The figures are timings (not asserted: this machine is shared); what is asserted is that the
tool measures what it says: every operation's time is accounted to the loop's callbacks and its
selector, and each operation's datagrams are received once per end (one read per datagram).
"""

from __future__ import annotations

import asyncio

from benchkit import load_bench


def test_every_operation_is_accounted_to_the_loops_callbacks() -> None:
    bench = load_bench("loop_budget")
    handle_run = asyncio.events.Handle._run
    undo = bench.install()
    try:
        assert asyncio.events.Handle._run is not handle_run
        results = asyncio.run(bench.measure(200))
    finally:
        undo()
    assert asyncio.events.Handle._run is handle_run  # the wrappers are removed again
    assert set(results) == {"pubsub_round_trip", "rpc_call"}
    for op, r in results.items():
        rows = {row["callback"]: row for row in r["callbacks"]}
        accounted = sum(row["us_per_op"] for row in r["callbacks"])
        # what the loop ran plus its waits is the operation's time (the rest: the loop's own steps)
        assert 0.6 * r["wall_us_per_op"] <= accounted <= 1.01 * r["wall_us_per_op"], (op, accounted, r)
        reads = rows["OptimizedDatagramTransport._on_readable"]["runs_per_op"]
        assert 1.8 <= reads <= 2.6, (op, reads)  # one datagram each way, each read once
