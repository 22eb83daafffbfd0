"""Ping-pong RTT of two ``quicmesh node`` processes with and without the node's garbage-collector
setting (#14, config ``gc_young_threshold``).

    python bench/gc_rtt.py [--rounds 3] [--pings 2000] [--rate 1000] [--json bench/results/gc_rtt.json]

Each round starts two node processes per setting (Python's own thresholds,
``QUICMESH_GC_YOUNG_THRESHOLD=0``, and the default), the settings taking turns, and runs four
ping-pong windows of ``--pings`` pings at ``--rate`` per second between them (the first warms up
and is not counted; the harness's ``pingpong`` command: publish on one topic, the other node
echoes on another, one in flight). Prints p50 / p99 per setting (medians over the windows) and
their ratio, and writes JSON with every window. Loopback only; every process it starts is
stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairlib import process_pair

SETTINGS = {"python": "0", "quicmesh": ""}
"""Setting name -> ``QUICMESH_GC_YOUNG_THRESHOLD`` ("" = the default of ``quicmesh node``)."""


async def _windows(threshold: str, pings: int, rate: int) -> list[tuple[float, float]]:
    env = {"QUICMESH_GC_YOUNG_THRESHOLD": threshold} if threshold else {}
    async with process_pair("bench", env) as (_a, b):
        out = []
        for _ in range(4):
            pp = await b.request("pingpong", "pingpong_done", topic="rt.ping", reply="rt.pong",
                                 count=pings, rate=rate, wait=120)
            out.append((float(pp["p50_us"]), float(pp["p99_us"])))
        return out[1:]

async def run(rounds: int, pings: int, rate: int) -> dict[str, Any]:
    windows: dict[str, list[tuple[float, float]]] = {k: [] for k in SETTINGS}
    for _ in range(rounds):
        for name, threshold in SETTINGS.items():
            windows[name] += await _windows(threshold, pings, rate)
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                              "command": sys.argv, "windows": windows, "medians": {}}
    for name, ws in windows.items():
        result["medians"][name] = {"p50_us": statistics.median(w[0] for w in ws),
                                   "p99_us": statistics.median(w[1] for w in ws)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "gc_rtt.json"))
    args = ap.parse_args()
    res = asyncio.run(run(args.rounds, args.pings, args.rate))
    m = res["medians"]
    print(f"{'gc thresholds':<28} {'RTT p50 us':>11} {'RTT p99 us':>11}")
    for name in SETTINGS:
        label = "Python's (700, 10, 10)" if name == "python" else "quicmesh node (50000, 50, 100)"
        print(f"{label:<28} {m[name]['p50_us']:>11,.0f} {m[name]['p99_us']:>11,.0f}")
    print(f"{'ratio quicmesh / Python':<28} {m['quicmesh']['p50_us'] / m['python']['p50_us']:>11.2f} "
          f"{m['quicmesh']['p99_us'] / m['python']['p99_us']:>11.2f}")
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
