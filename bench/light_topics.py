"""Light-client cycles against a gateway node that holds many topics (#14).

    python bench/light_topics.py [--topics 0,100,1000] [--cycles 200] [--peers 1] [--base OTHER/src]
                                 [--json bench/results/light_topics.json]

For each topic count N: a node process (the gateway) subscribes to N topics of N different
swarms and ``--peers`` other node processes join it (a gateway in a mesh, not alone), then this
process runs ``--cycles`` light-client cycles against it, one after another:
``Client.connect``, subscribe, publish one message, receive it, unsubscribe, ``close`` (what
``bench/peers.py`` times as light-client cycles, without the bench's other scenarios around it).
Prints the cycle time p50 / p90 / p99 per N, the p50 of each step of a cycle, the CPU a cycle
costs each side (the client process, and the gateway process over the same cycles) with the part
spent in qh3's TLS handshake (``qh3.tls.Context.handle_message``, timed in both processes: the
key exchange, certificates and signatures, run by qh3's TLS 1.3 state machine in Python), and
writes JSON.
With ``--base`` the same runs against a second source tree too (its ``src`` directory), the two
trees alternating case by case in one run, and the table shows both and their ratio. Loopback only; every process it
starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

_TLS_TIMER = """
import time as _time
import qh3.tls as _tls

TLS = {"seconds": 0.0, "handshakes": 0, "skip": 0}

def _timed_tls(self, *a, __orig=_tls.Context.handle_message, **k):
    t = _time.perf_counter()
    try:
        return __orig(self, *a, **k)
    finally:
        if self._bench_serial > TLS["skip"]:
            TLS["seconds"] += _time.perf_counter() - t

def _counted_init(self, *a, __orig=_tls.Context.__init__, **k):
    TLS["handshakes"] += 1
    self._bench_serial = TLS["handshakes"]
    __orig(self, *a, **k)

_tls.Context.handle_message = _timed_tls
_tls.Context.__init__ = _counted_init
"""
"""Times qh3's TLS handshake in a process (``TLS``: seconds in ``Context.handle_message`` of the
handshakes after the first ``skip``, and how many TLS contexts, one per handshake, were made)."""

_SERVER = _TLS_TIMER + """
import asyncio, json, signal, sys
import quicmesh
from quicmesh.config.discovery import DiscoveryConfig

async def main() -> None:
    TLS["skip"] = int(sys.argv[2])  # the mesh peers' handshakes and the client's warm-up cycles
    cfg = quicmesh.NodeConfig(listen="127.0.0.1:0", realm="bench", discovery=DiscoveryConfig(local=False))
    node = await quicmesh.Node.start(cfg)
    subs = [await node.subscribe(f"s{i}.x") for i in range(int(sys.argv[1]))]
    print(node.address, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for s in subs:
        await s.close()
    await node.stop()
    print(json.dumps(TLS), flush=True)

asyncio.run(main())
"""

_PEER = """
import asyncio, signal, sys
import quicmesh
from quicmesh.config.discovery import DiscoveryConfig

async def main() -> None:
    cfg = quicmesh.NodeConfig(listen="127.0.0.1:0", realm="bench", bootstrap=(sys.argv[1],),
                              discovery=DiscoveryConfig(local=False))
    node = await quicmesh.Node.start(cfg)
    await node.wait_until(lambda: len(node.peers()) > 0, timeout=20)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await node.stop()

asyncio.run(main())
"""

_CLIENT = _TLS_TIMER + """
import asyncio, json, sys, time
import psutil
import quicmesh

async def main() -> None:
    address, cycles, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
    TLS["skip"] = warm  # the TLS timer counts the handshakes of the measured cycles only
    gateway = psutil.Process(int(sys.argv[3]))
    took = []
    for i in range(cycles):
        if i == warm:  # the CPU of the cycles after the warm-up ones, on both sides
            cpu0, g0 = time.process_time(), gateway.cpu_times()
        t = [time.perf_counter()]
        client = await quicmesh.Client.connect(address, realm="bench", reconnect=False)
        t.append(time.perf_counter())
        sub = await client.subscribe("lc.t")
        t.append(time.perf_counter())
        await client.publish("lc.t", b"x")
        await asyncio.wait_for(sub.get(), 5)
        t.append(time.perf_counter())
        await sub.close()
        t.append(time.perf_counter())
        await client.close()
        t.append(time.perf_counter())
        took.append([t[-1] - t[0]] + [b - a for a, b in zip(t, t[1:])])
    g1, n = gateway.cpu_times(), cycles - warm
    cpu = {"client_ms": (time.process_time() - cpu0) / n * 1e3, "client_tls_ms": TLS["seconds"] / n * 1e3,
           "gateway_ms": (g1.user + g1.system - g0.user - g0.system) / n * 1e3}
    print(json.dumps({"took": took, "cpu": cpu}))

asyncio.run(main())
"""

WARM = 5
"""Cycles run first and left out (imports, caches, the first swarm)."""

PHASES = ("connect", "subscribe", "publish_receive", "unsubscribe", "close")
"""The steps of one cycle, each timed on its own (their p50s are in the JSON and the table)."""


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def run_case(src: Path, topics: int, cycles: int, peers: int) -> dict[str, Any]:
    """One gateway with ``topics`` topics and ``peers`` mesh peers, and ``cycles`` light-client
    cycles against it."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(topics), str(peers + WARM)], stdout=subprocess.PIPE,
                              text=True, env=env)
    procs = [server]
    try:
        assert server.stdout is not None
        address = server.stdout.readline().strip()
        if not address:
            raise RuntimeError("the gateway node did not start")
        for _ in range(peers):  # mesh peers of the gateway (idle: they hold none of its topics)
            peer = subprocess.Popen([sys.executable, "-c", _PEER, address], stdout=subprocess.PIPE, text=True,
                                    env=env)
            procs.append(peer)
            assert peer.stdout is not None
            if peer.stdout.readline().strip() != "ready":
                raise RuntimeError("a peer node did not join the gateway")
        done = subprocess.run([sys.executable, "-c", _CLIENT, address, str(cycles + WARM), str(server.pid), str(WARM)],
                              capture_output=True, text=True, env=env, timeout=60 + cycles * 2, check=True)
        out = json.loads(done.stdout.strip().splitlines()[-1])
        rows = out["took"][WARM:]  # the first few warm up imports and caches
        cpu = out["cpu"]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    tail = server.stdout.read().strip().splitlines() if server.stdout is not None else []
    tls = json.loads(tail[-1]) if tail else {"seconds": 0.0, "handshakes": 0, "skip": 0}
    # the gateway's TLS time per handshake of the measured cycles (a handshake per cycle)
    cpu["gateway_tls_ms"] = tls["seconds"] / max(1, tls["handshakes"] - tls["skip"]) * 1e3
    ms = [1e3 * r[0] for r in rows]
    phases = {name: _pct([1e3 * r[i + 1] for r in rows], 0.5) for i, name in enumerate(PHASES)}
    return {"topics": topics, "peers": peers, "cycles": len(ms), "p50_ms": _pct(ms, 0.5), "p90_ms": _pct(ms, 0.9),
            "p99_ms": _pct(ms, 0.99), "cycles_per_s": len(ms) / (sum(ms) / 1e3), "phase_p50_ms": phases,
            "cpu_per_cycle": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", default="0,100,1000", help="comma-separated topic counts")
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--peers", type=int, default=1, help="mesh peers of the gateway (idle node processes)")
    ap.add_argument("--base", type=Path, help="src directory of a second tree to compare with")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "light_topics.json")
    args = ap.parse_args()
    counts = [int(x) for x in args.topics.split(",")]
    trees = {"current": SRC, **({"base": args.base.resolve()} if args.base else {})}
    t0 = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    for n in counts:
        order = list(trees.items()) if n % 2 == 0 else list(reversed(trees.items()))
        for name, src in order:
            results[name].append(run_case(src, n, args.cycles, args.peers))
            print(f"{name}: {n} topics done", file=sys.stderr, flush=True)
    head = "| topics held by the gateway | " + " | ".join(f"{k}: cycle p50 / p90 / p99 ms" for k in trees)
    head += " | current / base (p50) |" if args.base else " |"
    print(head)
    print("|---" * (len(trees) + 1 + (1 if args.base else 0)) + "|")
    for i, n in enumerate(counts):
        cells = [f"{r[i]['p50_ms']:.1f} / {r[i]['p90_ms']:.1f} / {r[i]['p99_ms']:.1f}" for r in results.values()]
        ratio = [f"{results['current'][i]['p50_ms'] / results['base'][i]['p50_ms']:.2f}"] if args.base else []
        print(f"| {n:,} | " + " | ".join(cells + ratio) + " |")
    print("\nstep p50s, ms (" + ", ".join(PHASES) + "):")
    for name, rs in results.items():
        for r in rs:
            print(f"  {name}, {r['topics']:,} topics: " + " / ".join(f"{r['phase_p50_ms'][p]:.2f}" for p in PHASES))
    print("\nCPU per cycle, ms: client (of it qh3's TLS handshake), gateway (its TLS per handshake):")
    for name, rs in results.items():
        for r in rs:
            c = r["cpu_per_cycle"]
            print(f"  {name}, {r['topics']:,} topics: client {c['client_ms']:.2f} ({c['client_tls_ms']:.2f}), "
                  f"gateway {c['gateway_ms']:.2f} ({c['gateway_tls_ms']:.2f})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv,
                                     "trees": {k: str(v) for k, v in trees.items()}, "results": results,
                                     "seconds": time.monotonic() - t0}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
