#!/usr/bin/env python3
"""Sleeps and CPU per operation of two ``quicmesh node`` processes: this tree against another,
alternating, in one run (#14).

    python bench/wakeups.py --base ../base/src [--rounds 4] [--count 2000] [--json bench/results/wakeups.json]

Each round starts two node processes on this tree and two on ``--base`` (their ``PYTHONPATH``),
the order alternating from round to round, and runs ``bench/busy_poll.py``'s phases between
them with busy polling off, one operation in flight: RPC calls back to back, pub/sub round trips
back to back, and round trips 5 ms apart (``rtt paced``: each starts from sleeping loops, as a
sparse request does). For each: latency p50, the CPU both processes spent per operation, and how
often each process went to sleep per operation (its voluntary context switches: a sleep in the
event loop's poll, and the wake-up after it, is most of what a lone hop costs an idle process
here). Prints the medians over the rounds and this tree / base; writes JSON with every run.

A change to when a node wakes (its timers, its ACKs) shows in the sleeps, which the machine's
load moves much less than the latencies (two processes' round trips moved by a fifth from one
run to the next on this shared machine). Loopback only; every process it starts is stopped by
pid.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))

from busy_poll import _phases, write_json  # noqa: E402  (bench/, beside this script)

FIGURES = ("p50_us", "cpu_us_per_op", "sleeps_a", "sleeps_b")


async def run(base: str, rounds: int, count: int) -> dict[str, Any]:
    trees = {"current": str(SRC), "base": base}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(list(trees)))
        for name in order:
            print(f"round {r + 1}/{rounds}: {name}", flush=True)
            runs[name].append(await _phases(0, count, env={"PYTHONPATH": trees[name]}, client=False))
    med = {name: {ph: {k: statistics.median(x[ph][k] for x in rs) for k in rs[0][ph]} for ph in rs[0]}
           for name, rs in runs.items()}
    return {"trees": trees, "runs": runs, "medians": med}


def table(med: dict[str, dict[str, dict[str, float]]]) -> str:
    head = (f"{'phase':10} | {'tree':7} | {'p50 µs':>7} | {'CPU µs/op (both)':>16} | "
            f"{'sleeps/op (A, B)':>16}")
    lines = [head, "-" * len(head)]
    for ph in med["current"]:
        for name in ("current", "base"):
            v = med[name][ph]
            lines.append(f"{ph:10} | {name:7} | {v['p50_us']:7,.0f} | {v['cpu_us_per_op']:16,.0f} | "
                         f"{v['sleeps_a']:7.2f}, {v['sleeps_b']:6.2f}")
    lines.append("")
    for ph, v in med["current"].items():
        b = med["base"][ph]
        lines.append(f"{ph}: current / base: p50 {v['p50_us'] / b['p50_us']:.2f}x, CPU/op "
                     f"{v['cpu_us_per_op'] / b['cpu_us_per_op']:.2f}x, sleeps/op "
                     f"{(v['sleeps_a'] + v['sleeps_b']) / (b['sleeps_a'] + b['sleeps_b']):.2f}x")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="src directory of the tree to compare with")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--count", type=int, default=2000, help="operations per back-to-back phase (paced: a fifth)")
    p.add_argument("--json", default=str(HERE / "results" / "wakeups.json"))
    args = p.parse_args()
    if not (Path(args.base) / "quicmesh" / "__init__.py").is_file():
        p.error(f"--base: {args.base} holds no quicmesh package")
    res = asyncio.run(run(str(Path(args.base).resolve()), args.rounds, args.count))
    print(table(res["medians"]))
    write_json(args, res)


if __name__ == "__main__":
    main()
