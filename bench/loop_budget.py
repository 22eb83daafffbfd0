#!/usr/bin/env python3
"""Where an operation's time goes, by event-loop callback (#14): two nodes over QUIC on loopback
in this process (one loop), every callback the loop runs timed.

    python bench/loop_budget.py [--count 3000] [--loop asyncio|uvloop] [--inner] [--json FILE]

For a pub/sub round trip (publish -> subscriber -> reply publish -> reader) and an RPC call
(call -> handler -> reply), one at a time, the table lists each kind of callback the loop ran
while ``--count`` operations ran: µs per operation spent in it and how often it ran per
operation (a task's steps are named by its coroutine; ``select`` is the loop's wait for I/O,
``select(0)`` its poll when callbacks were ready). Only the loop's callbacks and its selector
are wrapped (``asyncio.events.Handle._run`` and ``select``), not the code they run, so the
figures are close to an unwrapped run (a wrapper costs ~0.3 µs per callback). Both nodes share
the process: a datagram's receive and its reply's send are each counted once per side, and the
sum is the CPU of both ends, not a latency. ``bench/call_counts.py`` counts the Python calls of
the same operations; ``bench/request_steps.py`` shows when each step of one runs.

``--inner`` also times a few steps inside those callbacks (``INNER``: the core's handling of a
message and of a flush, the batch signature, QUIC's receive and send, the deadline walk), each
wrapped the same way and listed below the callbacks with the same columns; the wrappers nest, so
these rows overlap the callbacks' and each other's (a sign is inside a flush).

Only the asyncio loop runs Python ``Handle`` objects; under uvloop (callbacks run in C) the
table shows the totals per operation only.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import collections
import contextlib
import json
import selectors
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairlib import echo_pair  # bench/, beside this script

_spent: dict[str, float] = collections.defaultdict(float)
_runs: collections.Counter[str] = collections.Counter()
_on = [False]

INNER = (
    ("quicmesh.core.node", "NodeCore", "message"),
    ("quicmesh.core.node", "NodeCore", "flush"),
    ("quicmesh.core.node", "NodeCore", "call"),
    ("quicmesh.core.node", "NodeCore", "next_deadline"),
    ("quicmesh.core.guard", "Guard", "sign_gossip"),
    ("quicmesh.runtime.driver", "NodeDriver", "_run_now"),
    ("quicmesh.runtime.delivery", "Delivery", "put"),
    ("qh3.quic.connection", "QuicConnection", "receive_datagram"),
    ("quicmesh.runtime._quic_adapter", "Proto", "transmit"),
)
"""The steps ``--inner`` times: (module, class, method)."""


def _name(handle: asyncio.Handle) -> str:
    cb = handle._callback  # type: ignore[attr-defined]
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return "task: " + str(getattr(owner.get_coro(), "__qualname__", "?"))
    if isinstance(owner, asyncio.Future):
        return "future callback"
    return str(getattr(cb, "__qualname__", type(cb).__name__))


def install() -> Callable[[], None]:
    """Time the loop's callbacks and its selector (asyncio's loop); returns the undo."""
    run = asyncio.events.Handle._run
    select = selectors.EpollSelector.select

    def timed_run(self: asyncio.Handle) -> None:
        if not _on[0]:
            return run(self)
        t = time.perf_counter()
        try:
            return run(self)
        finally:
            key = _name(self)
            _spent[key] += time.perf_counter() - t
            _runs[key] += 1

    def timed_select(self: Any, timeout: float | None = None) -> Any:
        if not _on[0]:
            return select(self, timeout)
        t = time.perf_counter()
        try:
            return select(self, timeout)
        finally:
            key = "select(0)" if timeout == 0 else "select"
            _spent[key] += time.perf_counter() - t
            _runs[key] += 1

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    selectors.EpollSelector.select = timed_select  # type: ignore[method-assign]

    def undo() -> None:
        asyncio.events.Handle._run = run  # type: ignore[method-assign]
        selectors.EpollSelector.select = select  # type: ignore[method-assign]

    return undo


def install_inner() -> Callable[[], None]:
    """Time the steps of :data:`INNER` as well (rows named ``  Class.method``); returns the undo."""
    import importlib

    saved: list[tuple[type, str, Any]] = []  # (class, name, its own attribute or None: inherited)
    for module, cls_name, attr in INNER:
        cls = getattr(importlib.import_module(module), cls_name)
        orig = getattr(cls, attr)
        key = f"  {cls_name}.{attr}"

        def timed(*a: Any, __orig: Any = orig, __key: str = key, **k: Any) -> Any:
            if not _on[0]:
                return __orig(*a, **k)
            t = time.perf_counter()
            try:
                return __orig(*a, **k)
            finally:
                _spent[__key] += time.perf_counter() - t
                _runs[__key] += 1

        saved.append((cls, attr, cls.__dict__.get(attr)))
        setattr(cls, attr, timed)

    def undo() -> None:
        for cls, attr, own in saved:
            if own is None:
                delattr(cls, attr)
            else:
                setattr(cls, attr, own)

    return undo


async def _budget(op: Callable[[], Awaitable[int]], count: int) -> dict[str, Any]:
    for _ in range(max(100, count // 10)):  # warm-up: caches, trees, the timers' steady state
        await op()
    _spent.clear()
    _runs.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    _on[0] = True
    for _ in range(count):
        await op()
    _on[0] = False
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    order = sorted(_spent.items(), key=lambda kv: (kv[0].startswith("  "), -kv[1]))  # callbacks, then inner steps
    rows = [{"callback": k, "us_per_op": v / count * 1e6, "runs_per_op": _runs[k] / count} for k, v in order]
    return {"operations": count, "wall_us_per_op": wall / count * 1e6, "cpu_us_per_op": cpu / count * 1e6,
            "callbacks": rows}


async def measure(count: int) -> dict[str, dict[str, Any]]:
    """The budget of each operation (see the module docstring)."""
    async with echo_pair("budget") as pair:
        return {"pubsub_round_trip": await _budget(pair.round_trip, count), "rpc_call": await _budget(pair.call, count)}


def _print(results: dict[str, dict[str, Any]], top: int = 9) -> None:
    for op, r in results.items():
        print(f"\n{op}: {r['wall_us_per_op']:.1f} µs per operation (wall), {r['cpu_us_per_op']:.1f} µs CPU "
              f"(both ends, {r['operations']} operations)")
        if r["callbacks"]:
            print("   µs / op   runs / op  callback")
        callbacks = [row for row in r["callbacks"] if not row["callback"].startswith("  ")]
        inner = [row for row in r["callbacks"] if row["callback"].startswith("  ") and row["runs_per_op"] > 0]
        for row in callbacks[:top] + inner:
            print(f"  {row['us_per_op']:8.1f}  {row['runs_per_op']:10.2f}  {row['callback']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3000, help="operations of each kind (default 3000)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--inner", action="store_true", help="also time the steps of INNER inside the callbacks")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    factory = None
    with contextlib.ExitStack() as undo:  # the wrappers come off again, whatever happens
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        else:
            undo.callback(install())
        if args.inner:
            undo.callback(install_inner())
        with asyncio.Runner(loop_factory=factory) as runner:
            results = runner.run(measure(max(1, args.count)))
    _print(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"count": args.count, "loop": args.loop, "operations": results},
                                              indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
