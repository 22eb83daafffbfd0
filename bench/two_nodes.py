#!/usr/bin/env python3
"""Two quicmesh node processes on loopback, side by side with the raw QUIC ceilings.

    python bench/two_nodes.py [--messages 100000] [--repeat 3] [--loop asyncio|uvloop|both] [--no-raw]
                              [--only pubsub,rtt,rpc] [--json bench/results/two_nodes.json]

Measures, in one run: pub/sub delivered msg/s at 64 B and 1 KiB (loss counted), pub/sub round
trip p50/p99 at a low rate (200 a second) and back to back, RPC calls/s sequential and with 64
in flight (p50/p99), and the raw one-stream ceiling of qh3 and aioquic with the same 4-byte
length-prefixed framing (bench/quic_raw.py). Prints a table with ratios and writes JSON.
quicmesh figures are medians of ``--repeat`` runs; the raw ceilings are the best of at least
five runs (qh3's one-stream rate is bimodal on the 2-core machine: ~290k or ~560k msg/s at 64 B,
so a median could halve the ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from quicmesh.testing.process import NodeProcess
except ImportError:  # a tree from before the harness moved (bench/before_after.py runs it too)
    from quicmesh.demo import NodeProcess  # type: ignore[attr-defined,no-redef]


async def pubsub_throughput(a: NodeProcess, b: NodeProcess, size: int, n: int, sid: int) -> dict[str, float]:
    topic = f"bench{sid}.s{size}"  # a fresh swarm per run: no LEAVE of the previous run in flight
    await a.request("subscribe", "subscribed", pattern=topic, id=sid, quiet=True)
    await b.request("wait_subscriber", "ready", topic=topic)
    payload = "x" * max(0, size - 8)  # the publisher appends "#<i>"
    await b.send("publish", topic=topic, payload=payload, count=n)
    published = await b.expect("published", timeout=120)
    done = await a.request("await_count", "count_reached", id=sid, count=n, timeout=30, wait=40)
    await a.request("unsubscribe", "unsubscribed", id=sid)
    received = done["count"]
    elapsed = max(done["t_last"] - published["t_start"], 1e-9)
    return {"msgs_per_s": received / elapsed, "lost": n - received, "publish_s": published["seconds"],
            "publisher_dropped": published.get("dropped_sends"), "subscriber_dropped": done.get("sub_dropped"),
            "inbox_dropped": done.get("inbox_dropped"), "delivery_dropped": done.get("delivery_dropped")}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    extra = ["--loop", args.loop, "--no-local-discovery"]
    a = await NodeProcess.spawn("A", realm="bench", extra=extra)
    b = await NodeProcess.spawn("B", realm="bench", bootstrap=[a.address], extra=extra)
    results: dict[str, Any] = {}
    only = set(args.only.split(","))
    try:
        await a.wait_peers(1)
        await b.wait_peers(1)
        sid = 0
        for size, n in ((64, args.messages), (1024, max(1000, args.messages // 4))) if "pubsub" in only else ():
            runs = []
            for _ in range(args.repeat):
                sid += 1
                runs.append(await pubsub_throughput(a, b, size, n, sid))
            results[f"pubsub_{size}B"] = {
                "msgs_per_s": statistics.median(r["msgs_per_s"] for r in runs),
                "lost": sum(int(r["lost"]) for r in runs),
                "sent": n * args.repeat,
                "runs": runs,
            }
        if "rtt" in only:
            await a.request("echo", "echoing", pattern="rt.ping", to="rt.pong")
            await b.request("wait_subscriber", "ready", topic="rt.ping")
            pp = await b.request("pingpong", "pingpong_done", topic="rt.ping", reply="rt.pong", count=300, rate=200,
                                 wait=60)
            results["pubsub_round_trip"] = {"p50_us": pp["p50_us"], "p99_us": pp["p99_us"], "lost": pp["lost"]}
            # back to back: the next ping as soon as the pong is in (a rate no loop reaches)
            pp = await b.request("pingpong", "pingpong_done", topic="rt.ping", reply="rt.pong", count=3000,
                                 rate=1e9, wait=60)
            results["pubsub_round_trip_b2b"] = {"p50_us": pp["p50_us"], "p99_us": pp["p99_us"], "lost": pp["lost"]}
        if "rpc" in only:
            await a.request("advertise", "advertised", name="bench.echo", kind="echo")
            await b.request("wait_provider", "ready", name="bench.echo")
        rpc_cases = (("rpc_sequential", 3000, 1), ("rpc_64_in_flight", 30000, 64)) if "rpc" in only else ()
        for label, count, conc in rpc_cases:
            runs = []
            for _ in range(args.repeat):
                ev = await b.request("calls", "calls_done", name="bench.echo", payload="x" * 64, count=count,
                                     concurrency=conc, timeout=10, wait=120)
                runs.append({"calls_per_s": ev["outcomes"].get("ok", 0) / ev["seconds"], "p50_ms": ev["p50_ms"],
                             "p99_ms": ev["p99_ms"], "errors": {k: v for k, v in ev["outcomes"].items() if k != "ok"}})
            results[label] = {
                "calls_per_s": statistics.median(r["calls_per_s"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "runs": runs,
            }
    finally:
        await b.stop()
        await a.stop()
    return results


RAW_REPEAT = 5
"""Raw runs at least (each ~1 s per figure); the ceiling is the best of them."""


def raw_ceilings(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import quic_raw  # bench/quic_raw.py
    except ImportError:
        return {}
    fn = getattr(quic_raw, "measure_ceilings", None)
    if fn is None:
        return {}
    out: dict[str, Any] = fn(repeat=max(RAW_REPEAT, args.repeat))
    return out


def table(res: dict[str, Any], raw: dict[str, Any]) -> str:
    rows = [("test", "quicmesh", "qh3 raw (best)", "aioquic raw (best)", "quicmesh / qh3")]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.0%}" if a and b else "-"

    for size in (64, 1024):
        if f"pubsub_{size}B" not in res:
            continue
        q = res[f"pubsub_{size}B"]
        r_q = raw.get("qh3", {}).get(f"stream_{size}B_msgs_per_s")
        r_a = raw.get("aioquic", {}).get(f"stream_{size}B_msgs_per_s")
        rows.append((f"pub/sub {size} B msg/s (lost {q['lost']}/{q['sent']})", f"{q['msgs_per_s']:,.0f}",
                     f"{r_q:,.0f}" if r_q else "-", f"{r_a:,.0f}" if r_a else "-", ratio(q["msgs_per_s"], r_q)))
    rt = res.get("pubsub_round_trip")
    if rt is not None:
        rows.append(("pub/sub round trip p50 / p99", f"{rt['p50_us']:.0f} / {rt['p99_us']:.0f} µs", "", "", ""))
    rt = res.get("pubsub_round_trip_b2b")
    if rt is not None:
        rows.append(("  back to back p50 / p99", f"{rt['p50_us']:.0f} / {rt['p99_us']:.0f} µs", "", "", ""))
    for label, key in (("RPC sequential", "rpc_sequential"), ("RPC 64 in flight", "rpc_64_in_flight")):
        if key not in res:
            continue
        q = res[key]
        rawkey = "reqrep_1_req_per_s" if key == "rpc_sequential" else "reqrep_64_req_per_s"
        r_q = raw.get("qh3", {}).get(rawkey)
        r_a = raw.get("aioquic", {}).get(rawkey)
        rows.append((f"{label} calls/s (p50 / p99 ms)",
                     f"{q['calls_per_s']:,.0f} ({q['p50_ms']} / {q['p99_ms']})",
                     f"{r_q:,.0f}" if r_q else "-", f"{r_a:,.0f}" if r_a else "-", ratio(q["calls_per_s"], r_q)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000, help="64 B messages per run (1 KiB: a quarter)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="asyncio",
                   help="the nodes' event loop (both: each in turn, one table per loop)")
    p.add_argument("--no-raw", action="store_true", help="skip the raw QUIC ceilings")
    p.add_argument("--only", default="pubsub,rtt,rpc", help="comma-separated parts to run: pubsub, rtt, rpc")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "two_nodes.json"))
    args = p.parse_args()
    started = time.time()
    loops = ("asyncio", "uvloop") if args.loop == "both" else (args.loop,)
    per_loop: dict[str, Any] = {}
    for loop in loops:
        per_loop[loop] = asyncio.run(asyncio.wait_for(run(argparse.Namespace(**{**vars(args), "loop": loop})), 600))
    raw = {} if args.no_raw else raw_ceilings(args)
    for loop, res in per_loop.items():
        print(f"\nnodes on {loop}:")
        print(table(res, raw))
    out = {"machine": {"python": platform.python_version(), "platform": platform.platform()},
           "args": vars(args), "quicmesh": per_loop[loops[0]], "quicmesh_by_loop": per_loop, "raw": raw,
           "seconds": round(time.time() - started, 1)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
