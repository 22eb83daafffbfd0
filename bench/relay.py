#!/usr/bin/env python3
"""Pub/sub through a relay against a direct pair, on loopback, with each process's CPU per message.

    python bench/relay.py [--messages 50000] [--repeat 3] [--size 64] [--py-spy DIR]
                          [--json bench/results/relay.json]

Five ``quicmesh node`` processes: a relay R (``--relay``), a subscriber B that is reachable only
through R (``--relay-mode always --relay-via R``), a publisher A that dials B's relayed address,
and a direct pair D1, D2. Hole punching and local discovery are off, so A -> B stays relayed (on
loopback a punch would always succeed). Each round runs the relayed case and then the direct one
(interleaved, so both see the same machine); the table gives the median of ``--repeat`` rounds,
the relayed/direct ratio (issue #13's goal: >= 50 %) and the CPU seconds per message of publisher,
relay and subscriber. ``--py-spy DIR`` records the relay during one extra relayed run (collapsed
stacks ``DIR/relay.folded``, for any flame-graph viewer) and prints the functions with the most
samples of their own, when ``py-spy`` is on the PATH.

The lab test (``tests/test_lab_relay.py``) measures the same across real NAT routers; this bench
is the quick loop for work on the relay's per-packet path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from quicmesh.testing.process import NodeProcess

ENV = {"QUICMESH_PUNCH__ENABLED": "false", "QUICMESH_DISCOVERY__LOCAL": "false"}


def cpu_of(nodes: list[NodeProcess]) -> list[float]:
    """CPU seconds (user + system) each process has used so far."""
    out = []
    for n in nodes:
        t = psutil.Process(n.proc.pid).cpu_times()
        out.append(t.user + t.system)
    return out


async def throughput(pub: NodeProcess, sub: NodeProcess, topic: str, sid: int, n: int, size: int) -> float:
    """Messages per second from ``pub`` to ``sub`` (first to last delivery at ``sub``)."""
    await sub.request("subscribe", "subscribed", pattern=f"{topic}.>", id=sid, quiet=True)
    await pub.request("wait_subscriber", "ready", topic=f"{topic}.m", wait=20)
    await pub.request("publish", "published", topic=f"{topic}.m", payload="x" * max(0, size - 8), count=n, wait=120)
    ev = await sub.request("await_count", "count_reached", id=sid, count=n, timeout=120, wait=125)
    await sub.request("unsubscribe", "unsubscribed", id=sid)
    return float(n / max(ev["t_last"] - ev["t_first"], 1e-6))


async def health(node: NodeProcess) -> dict[str, Any]:
    ev = await node.request("health", "health")
    doc: dict[str, Any] = ev["health"]
    return doc


async def wait_for(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:  # bounded by timeout
        v = await check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    procs: list[NodeProcess] = []

    async def spawn(name: str, *extra: str, bootstrap: tuple[str, ...] = ()) -> NodeProcess:
        p = await NodeProcess.spawn(name, realm="relaybench", bootstrap=bootstrap, env=ENV,
                                    extra=("--relay-mode", "never", *extra) if "--relay-mode" not in extra else extra)
        procs.append(p)
        return p

    try:
        r = await spawn("relay", "--relay")
        b = await spawn("b", "--relay-mode", "always", "--relay-via", r.address, bootstrap=(r.address,))
        a = await spawn("a", bootstrap=(r.address,))
        announced = await wait_for("b reserved at the relay", lambda: _announced(b))
        await a.request("connect", "connected", address=announced[0], wait=20)

        async def relayed_path() -> str | None:  # a's health lists the path once the connection is its peer
            return next((p["path"] for p in (await health(a))["relay"]["peers"] if p["address"] == announced[0]), None)

        path = await wait_for("a's path to b in its health", relayed_path)
        assert path.startswith("relayed:"), path
        d1 = await spawn("d1")
        d2 = await spawn("d2", bootstrap=(d1.address,))
        await d2.wait_peers(1)
        rows: dict[str, list[float]] = {"relayed": [], "direct": []}
        cpu: dict[str, list[float]] = {"relayed": [0.0, 0.0, 0.0], "direct": [0.0, 0.0, 0.0]}
        for i in range(args.repeat):
            before = cpu_of([a, r, b])
            rows["relayed"].append(await throughput(a, b, f"rel{i}", 10 + i, args.messages, args.size))
            cpu["relayed"] = [c + x - y for c, x, y in zip(cpu["relayed"], cpu_of([a, r, b]), before, strict=True)]
            before = cpu_of([d1, d2])
            rows["direct"].append(await throughput(d1, d2, f"dir{i}", 20 + i, args.messages, args.size))
            after = cpu_of([d1, d2])
            cpu["direct"][0] += after[0] - before[0]
            cpu["direct"][2] += after[1] - before[1]
        if args.py_spy:
            await profile(args, a, r, b)
        relay_doc = (await health(r))["relay"]
        per = {k: [1e6 * c / (args.repeat * args.messages) for c in v] for k, v in cpu.items()}
        relayed, direct = statistics.median(rows["relayed"]), statistics.median(rows["direct"])
        return {"messages": args.messages, "size": args.size, "repeat": args.repeat, "cpus": os.cpu_count(),
                "relayed_msg_s": relayed, "direct_msg_s": direct, "ratio": relayed / direct, "runs": rows,
                "cpu_us_per_msg": per, "cpu_ratio": sum(per["relayed"]) / max(sum(per["direct"]), 1e-9),
                "relay_counters": {k: v for k, v in relay_doc.items() if isinstance(v, int)}}
    finally:
        for p in reversed(procs):
            await p.stop(timeout=5)


async def _announced(b: NodeProcess) -> list[str] | None:
    doc = (await health(b))["relay"]
    return list(doc["announced"]) if doc["announced"] else None


def _spy() -> str | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return spy if Path(spy).exists() else None


async def profile(args: argparse.Namespace, a: NodeProcess, r: NodeProcess, b: NodeProcess) -> None:
    spy = _spy()
    if spy is None:
        print("py-spy not found: no profile")
        return
    out = Path(args.py_spy)
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    rec = await asyncio.create_subprocess_exec(
        spy, "record", "-p", str(r.proc.pid), "-o", str(out / "relay.folded"), "-f", "raw", "-r", "250",
        "--nonblocking", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(1.0)  # py-spy attaches (a bounded wait: the profile only loses its start)
    await throughput(a, b, "prof", 99, args.messages, args.size)
    rec.send_signal(2)
    await asyncio.wait_for(rec.wait(), 30)
    folded = await asyncio.to_thread((out / "relay.folded").read_text)
    own: dict[str, int] = {}
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
    print(f"relay profile ({total} samples): {out / 'relay.folded'}; own time by function:")
    for leaf, n in sorted(own.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {100 * n / max(total, 1):5.1f} %  {leaf}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--py-spy", metavar="DIR", help="record the relay with py-spy during one extra run")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "relay.json"))
    args = ap.parse_args()
    res = asyncio.run(run(args))
    per = res["cpu_us_per_msg"]
    print(f"pub/sub {res['messages']:,} x {res['size']} B on loopback, median of {res['repeat']} "
          f"({res['cpus']} cores):")
    print("| path | msg/s | CPU µs/msg publisher | relay | subscriber | total |")
    print("|---|---|---|---|---|---|")
    for k in ("relayed", "direct"):
        p = per[k]
        print(f"| {k} | {res[f'{k}_msg_s']:,.0f} | {p[0]:.1f} | {p[1]:.1f} | {p[2]:.1f} | {sum(p):.1f} |")
    print(f"relayed / direct: {100 * res['ratio']:.0f} % of the throughput (goal >= 50 %), "
          f"{res['cpu_ratio']:.2f}x the CPU per message")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
