#!/usr/bin/env python3
"""CPU time per RPC call and per pub/sub round trip, both ends in one process, for this tree and
optionally another (#14).

    python bench/call_cpu.py [--base ../wt-base/src] [--rounds 5] [--batches 150] [--json FILE]

Two nodes over QUIC on loopback in one process (``bench/pairlib.py``'s echo pair): ``--batches``
batches of 64 calls in flight (``asyncio.gather``), then sequential calls, then pub/sub round
trips one at a time (publish -> subscriber -> reply publish -> reader; ``--round-trips``), each
measured as the process's CPU time per operation over five windows (the least is reported: a window the machine's
load slowed costs more CPU, never less). With ``--base`` each round runs a child process per
tree, alternating which goes first, so the load of the hour falls on both alike; the table shows
each tree's median over the rounds and the ratio this tree / base.

Between two processes the rate of calls moved by a third from one 3 s window to the next on
this shared machine, which a change of ~10 % cannot be read from; both ends' CPU per call in
one process is steadier (the load adds to every window, and the least of five is kept), and
``bench/call_counts.py`` counts the same operations' Python calls, which the load does not
change at all. Writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CURRENT = HERE.parent / "src"
WINDOWS = 5
"""Windows per measurement; the least CPU per operation of them is the tree's figure for the round."""
FIGURES = (("in_flight_64_us", "RPC call, 64 in flight"), ("sequential_us", "RPC call, sequential"),
           ("round_trip_us", "pub/sub round trip"))
"""The JSON keys and table rows, in order."""


async def measure(batches: int, sequential: int, round_trips: int) -> dict[str, float]:
    """µs of this process's CPU per operation: a call with 64 in flight and one at a time, a pub/sub
    round trip."""
    sys.path.insert(0, str(HERE))
    from pairlib import PAYLOAD, echo_pair

    async with echo_pair("callcpu") as pair:
        b = pair.b

        async def batch() -> None:
            await asyncio.gather(*(b.call("echo", PAYLOAD) for _ in range(64)))

        for _ in range(max(1, batches // 3)):  # warm: routes, the connection's windows
            await batch()
        flight: list[float] = []
        for _ in range(WINDOWS):
            c0 = time.process_time()
            for _ in range(batches):
                await batch()
            flight.append((time.process_time() - c0) / (batches * 64) * 1e6)
        seq: list[float] = []
        for _ in range(WINDOWS):
            c0 = time.process_time()
            for _ in range(sequential):
                await b.call("echo", PAYLOAD)
            seq.append((time.process_time() - c0) / sequential * 1e6)
        for _ in range(max(1, round_trips // 3)):  # warm: the tree, the subscriptions' routes
            await pair.round_trip()
        rtt: list[float] = []
        for _ in range(WINDOWS):
            c0 = time.process_time()
            for _ in range(round_trips):
                await pair.round_trip()
            rtt.append((time.process_time() - c0) / round_trips * 1e6)
    return {"in_flight_64_us": min(flight), "sequential_us": min(seq), "round_trip_us": min(rtt)}


def _child(src: str, batches: int, sequential: int, round_trips: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--batches", str(batches),
                           "--sequential", str(sequential), "--round-trips", str(round_trips)], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child for {src} failed: {done.stderr[-2000:]}")
    res: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="the src/ directory of the tree to compare with")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=150, help="batches of 64 calls per window")
    p.add_argument("--sequential", type=int, default=1500, help="sequential calls per window")
    p.add_argument("--round-trips", type=int, default=1000, help="pub/sub round trips per window")
    p.add_argument("--json", default=str(HERE / "results" / "call_cpu.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batches < 1 or args.sequential < 1 or args.round_trips < 1 or args.rounds < 1:
        p.error("--batches, --sequential, --round-trips and --rounds must be at least 1")
    if args.child:
        print(json.dumps(asyncio.run(measure(args.batches, args.sequential, args.round_trips))))
        return 0
    trees = {"current": str(CURRENT)}
    if args.base:
        base = Path(args.base).resolve()
        if not (base / "quicmesh" / "__init__.py").is_file():
            p.error(f"--base {args.base}: no quicmesh package there")
        trees = {"base": str(base), "current": str(CURRENT)}
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}  # bounded: --rounds per tree
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for t in order:
            res = _child(trees[t], args.batches, args.sequential, args.round_trips)
            runs[t].append(res)
            print(f"round {r + 1}, {t}: 64 in flight {res['in_flight_64_us']:.2f} µs/call, "
                  f"sequential {res['sequential_us']:.2f} µs/call, "
                  f"pub/sub round trip {res['round_trip_us']:.2f} µs", flush=True)
    med = {t: {k: statistics.median(x[k] for x in v) for k, _ in FIGURES} for t, v in runs.items()}
    print()
    head = "| CPU µs per operation (both ends, one process) | " + " | ".join(trees)
    print(head + (" | current / base |" if "base" in trees else " |"))
    print("|" + "---|" * (len(trees) + 1 + ("base" in trees)))
    out: dict[str, Any] = {"rounds": args.rounds, "batches": args.batches, "sequential": args.sequential,
                           "round_trips": args.round_trips, "trees": trees, "runs": runs, "medians": med}
    ratios: dict[str, float] = {}
    for key, label in FIGURES:
        row = f"| {label} | " + " | ".join(f"{med[t][key]:.2f}" for t in trees)
        if "base" in trees:
            ratios[key] = med["current"][key] / med["base"][key]
            row += f" | {ratios[key]:.3f}"
        print(row + " |")
    out["ratios"] = ratios
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
