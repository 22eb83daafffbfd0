#!/usr/bin/env python3
"""The same two-node bench against two source trees, alternating, in one run.

    python bench/before_after.py --base ../wt-base/src [--rounds 3] [--messages 100000] [--loop uvloop]

Runs the quicmesh part of ``bench/two_nodes.py`` (pub/sub 64 B and 1 KiB, round trip, RPC
sequential and 64 in flight; two node processes on loopback) ``--rounds`` times for each tree,
alternating base and current so that the machine's load falls on both alike, and prints each
figure's median per tree and the ratio current / base. Node processes import quicmesh from the
tree under test (``PYTHONPATH``). Writes JSON (``--json``).
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
FIGURES = (
    ("pub/sub 64 B msg/s", ("pubsub_64B", "msgs_per_s"), True),
    ("pub/sub 1 KiB msg/s", ("pubsub_1024B", "msgs_per_s"), True),
    ("round trip p50 µs", ("pubsub_round_trip", "p50_us"), False),
    ("round trip p99 µs", ("pubsub_round_trip", "p99_us"), False),
    ("back-to-back round trip p50 µs", ("pubsub_round_trip_b2b", "p50_us"), False),
    ("back-to-back round trip p99 µs", ("pubsub_round_trip_b2b", "p99_us"), False),
    ("RPC sequential calls/s", ("rpc_sequential", "calls_per_s"), True),
    ("RPC 64 in flight calls/s", ("rpc_64_in_flight", "calls_per_s"), True),
)


def child(messages: int, loop: str) -> None:
    sys.path.insert(0, str(HERE))
    import two_nodes  # bench/two_nodes.py, importing quicmesh from PYTHONPATH

    args = argparse.Namespace(messages=messages, repeat=1, loop=loop, only="pubsub,rtt,rpc", no_raw=True)
    res: dict[str, Any] = asyncio.run(two_nodes.run(args))
    lost = sum(int(res[k]["lost"]) for k in ("pubsub_64B", "pubsub_1024B"))
    print(json.dumps({"results": res, "lost": lost}))


def one(tree: Path, messages: int, loop: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, __file__, "--child", "--messages", str(messages), "--loop", loop], env=env,
                         capture_output=True, text=True, timeout=900, check=True)
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="src directory of the tree to compare with (required)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--json", default=str(HERE / "results" / "before_after.json"))
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the nodes' event loop")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.messages, args.loop)
        return 0
    if not args.base:
        p.error("--base is required")
    trees = {"base": Path(args.base).resolve(), "current": CURRENT}
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "current": []}
    started = time.time()
    for r in range(args.rounds):
        for label in (("base", "current") if r % 2 == 0 else ("current", "base")):
            runs[label].append(one(trees[label], args.messages, args.loop))
            print(f"round {r + 1}/{args.rounds}: {label} done", file=sys.stderr)
    rows = [("figure", "base (median)", "current (median)", "current / base")]
    summary: dict[str, Any] = {}
    for name, (k1, k2), higher_better in FIGURES:
        b = statistics.median(x["results"][k1][k2] for x in runs["base"])
        c = statistics.median(x["results"][k1][k2] for x in runs["current"])
        summary[name] = {"base": b, "current": c, "ratio": c / b if b else None, "higher_is_better": higher_better}
        rows.append((name, f"{b:,.0f}", f"{c:,.0f}", f"{c / b:.2f}" if b else "-"))
    lost = {label: sum(x["lost"] for x in rs) for label, rs in runs.items()}
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print(f"messages lost: base {lost['base']}, current {lost['current']}")
    Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "lost": lost, "runs": runs,
                                           "seconds": round(time.time() - started, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
