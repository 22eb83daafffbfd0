#!/usr/bin/env python3
"""What a gateway spends to forward topic messages to many light clients (fan-out).

    python bench/gateway_fanout.py [--clients 200] [--messages 200] [--rounds 5] [--size 64]
                                   [--base ../wt-base/src] [--json bench/results/gateway_fanout.json]

A gateway node runs in a child process (the tree under test on ``PYTHONPATH``,
``PYTHONMALLOC=malloc`` as ``quicmesh node`` runs); this process connects ``--clients`` light
clients to it, each subscribed to one shared topic. Per round the gateway's node publishes
``--messages`` messages of ``--size`` bytes on that topic (from its own process: the bench
times the forwarding, not a publisher's hop), and the round ends when every client received
every message. Printed per tree: the gateway's CPU time per delivered message (one message to
one client: its node's delivery to the subscription it holds for the client, and the write to
the client's connection), deliveries per second of wall time, and the gateway's RSS. Medians of
``--rounds`` rounds after a warm-up round. With ``--base`` another tree is measured in the same
run (current, base, current; the table shows each tree's median and the ratio). Loopback only;
the gateway process is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway_memory import stop_child  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
CURRENT = HERE.parent / "src"
TOPIC = "fan.all"

GATEWAY = """
import asyncio, sys
import quicmesh
from quicmesh.config.discovery import DiscoveryConfig

async def main():
    node = await quicmesh.Node.start(quicmesh.NodeConfig(realm="fanout", listen="127.0.0.1:0",
                                                         discovery=DiscoveryConfig(local=False)))
    print(node.address, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "stop":
            break
        count, size = int(line[1]), int(line[2])
        payload = bytes(size)
        for _ in range(count):
            await node.publish(TOPIC, payload)
        print("published", flush=True)
    await node.stop()

asyncio.run(main())
""".replace("TOPIC", repr(TOPIC))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


class Rounds:
    """Deliveries counted per consumer and rounds timed against a child process that publishes
    ``pub COUNT SIZE`` messages when told on its stdin (``bench/http_fanout.py`` uses it too)."""

    def __init__(self, proc: asyncio.subprocess.Process, consumers: int, size: int) -> None:
        self.proc, self.size = proc, size
        self.got = [0] * consumers
        self.done = asyncio.Event()
        self.target = 0
        self.samples: list[tuple[float, float]] = []

    def count(self, i: int, n: int = 1) -> None:
        """Consumer ``i`` received ``n`` more messages."""
        self.got[i] += n
        if self.got[i] >= self.target and all(g >= self.target for g in self.got):
            self.done.set()

    async def round(self, n: int) -> tuple[float, float]:
        """The child publishes ``n`` messages; (its CPU seconds, wall seconds) until every
        consumer received them."""
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        self.done.clear()
        self.target += n
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        proc.stdin.write(f"pub {n} {self.size}\n".encode())
        await proc.stdin.drain()
        await asyncio.wait_for(self.done.wait(), 120)
        wall = time.perf_counter() - t0
        await asyncio.wait_for(proc.stdout.readline(), 30)
        return _cpu_seconds(proc.pid) - cpu0, wall

    async def measure(self, messages: int, rounds: int) -> None:
        """A warm-up round, then ``rounds`` timed ones (kept in ``samples``)."""
        await self.round(min(messages, 50))
        self.samples = [await self.round(messages) for _ in range(rounds)]

    def medians(self, prefix: str, messages: int) -> dict[str, float]:
        """``<prefix>_cpu_us_per_delivery``, ``deliveries_per_second`` and ``<prefix>_rss_mib``."""
        per = len(self.got) * messages
        return {f"{prefix}_cpu_us_per_delivery": statistics.median(1e6 * c / per for c, _ in self.samples),
                "deliveries_per_second": statistics.median(per / w for _, w in self.samples),
                f"{prefix}_rss_mib": _rss_mib(self.proc.pid)}


async def one(tree: Path, clients: int, messages: int, rounds: int, size: int) -> dict[str, float]:
    """One gateway of ``tree``: warm-up round, then ``rounds`` timed rounds; medians."""
    import quicmesh

    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONMALLOC": "malloc"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", GATEWAY, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdin is not None
    held: list[Any] = []
    rounds_ = Rounds(proc, clients, size)
    readers: list[asyncio.Task[None]] = []

    async def read(i: int, sub: Any) -> None:
        async for _ in sub:
            rounds_.count(i)

    try:
        address = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        for i in range(clients):
            client = await quicmesh.Client.connect(address, realm="fanout", reconnect=False)
            held.append(client)
            sub = await client.subscribe(TOPIC, queue_size=4 * messages)
            readers.append(asyncio.ensure_future(read(i, sub)))
        await asyncio.sleep(0.5)
        await rounds_.measure(messages, rounds)
        return rounds_.medians("gateway", messages)
    finally:
        for t in readers:
            t.cancel()
        for c in held:
            await c.close()
        await stop_child(proc)


async def alternate(measure: Callable[[Path], Awaitable[dict[str, float]]], base: Path | None) -> dict[str, Any]:
    """``measure`` this tree, and with ``base`` that one and this one again; medians per tree."""
    order = [("current", CURRENT)] + ([("base", base), ("current", CURRENT)] if base else [])
    samples: dict[str, list[dict[str, float]]] = {}
    for name, tree in order:
        samples.setdefault(name, []).append(await measure(tree))
    return {name: {k: statistics.median(s[k] for s in runs) for k in runs[0]} | {"runs": len(runs)}
            for name, runs in samples.items()}


def report(res: dict[str, Any], prefix: str, who: str, caption: str) -> None:
    """Print the table of :func:`alternate`'s result (``prefix``: the measured process's key)."""
    print(f"| tree | {who} CPU µs per delivery | deliveries/s | {who} RSS MiB |  ({caption})")
    print("|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r[prefix + '_cpu_us_per_delivery']:.2f} | {r['deliveries_per_second']:,.0f} | "
              f"{r[prefix + '_rss_mib']:.1f} |")
    if "base" in res:
        cur, base = res["current"], res["base"]
        cpu = cur[prefix + "_cpu_us_per_delivery"] / base[prefix + "_cpu_us_per_delivery"]
        print(f"current / base: CPU per delivery {cpu:.2f}x, "
              f"deliveries/s {cur['deliveries_per_second'] / base['deliveries_per_second']:.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--base", help="src directory of a tree to compare with")
    p.add_argument("--json", default=str(HERE / "results" / "gateway_fanout.json"))
    a = p.parse_args()
    if not 1 <= a.clients <= 2000 or not 1 <= a.messages <= 10_000 or not 1 <= a.rounds <= 50:
        p.error("--clients is 1-2000, --messages 1-10000, --rounds 1-50")
    if not 0 <= a.size <= 60_000:
        p.error("--size is 0-60000")
    base = Path(a.base).resolve() if a.base else None
    res = asyncio.run(alternate(lambda tree: one(tree, a.clients, a.messages, a.rounds, a.size), base))
    report(res, "gateway", "gateway", f"{a.clients} clients x {a.messages} messages of {a.size} B, "
           f"medians of {a.rounds} rounds")
    out = {"command": " ".join(["python", "bench/gateway_fanout.py", *sys.argv[1:]]), "python": sys.version.split()[0],
           "clients": a.clients, "messages": a.messages, "rounds": a.rounds, "size": a.size, "results": res}
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
