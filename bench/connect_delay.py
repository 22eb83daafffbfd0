"""A light client's connect over a link with a round-trip delay, in round trips (#14).

    python bench/connect_delay.py [--delay-ms 10] [--connects 20] [--base OTHER/src] [--json FILE]

On loopback a connect is bound by CPU; on the links users have (sites, cellular, a cloud region
away) it is bound by round trips. This runs a gateway node and, in the same process, a UDP relay
on 127.0.0.1 that holds every datagram ``--delay-ms`` in each direction (so one round trip costs
twice that), then times ``--connects`` light-client connects through it one after another
(``Client.connect`` to the connection being usable, then ``close``), and the first publish
received back after a subscribe. It prints the p50 in milliseconds and in round trips of the
added delay. With ``--base`` the same runs against a second source tree (its ``src``), the two
trees alternating. No netem needed; loopback only; each tree runs in a child process it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

_CHILD = """
import asyncio, json, statistics, sys, time
import quicmesh
from quicmesh.config.discovery import DiscoveryConfig

DELAY, CONNECTS = float(sys.argv[1]) / 1000.0, int(sys.argv[2])

class Relay(asyncio.DatagramProtocol):
    # client side: one upstream socket per client address (one client at a time here)
    def __init__(self, upstream):
        self.upstream, self.ups, self.loop = upstream, {}, asyncio.get_running_loop()
    def connection_made(self, transport):
        self.t = transport
    def datagram_received(self, data, addr):
        up = self.ups.get(addr)
        if up is None:
            return self.loop.create_task(self._open(addr, data))
        self.loop.call_later(DELAY, up.sendto, data)
    async def _open(self, addr, first):
        relay = self
        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, _):
                relay.loop.call_later(DELAY, relay.t.sendto, data, addr)
        t, _ = await self.loop.create_datagram_endpoint(Back, remote_addr=self.upstream)
        if len(self.ups) > 4:  # old clients' sockets: a bounded few
            for k in list(self.ups)[:-4]:
                self.ups.pop(k).close()
        self.ups[addr] = t
        self.loop.call_later(DELAY, t.sendto, first)

async def main():
    node = await quicmesh.Node.start(quicmesh.NodeConfig(listen="127.0.0.1:0", realm="bench",
                                                         discovery=DiscoveryConfig(local=False)))
    host, port = node.address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    t, relay = await loop.create_datagram_endpoint(lambda: Relay((host, int(port))), local_addr=("127.0.0.1", 0))
    via = "127.0.0.1:%d" % t.get_extra_info("sockname")[1]
    connects, firsts = [], []
    for i in range(CONNECTS + 2):
        t0 = time.perf_counter()
        c = await quicmesh.Client.connect(via, realm="bench", reconnect=False, gateway_id=node.id)
        t1 = time.perf_counter()
        sub = await c.subscribe("t")
        await c.publish("t", b"x")
        await asyncio.wait_for(sub.get(), 10)
        t2 = time.perf_counter()
        await c.close()
        if i >= 2:  # warm-up
            connects.append(t1 - t0)
            firsts.append(t2 - t0)
    t.close()
    for u in relay.ups.values():
        u.close()
    await node.stop()
    print(json.dumps({"connect_ms": statistics.median(connects) * 1e3,
                      "first_message_ms": statistics.median(firsts) * 1e3}))

asyncio.run(main())
"""


def run_tree(src: Path, delay_ms: float, connects: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(delay_ms), str(connects)], capture_output=True,
                          text=True, env=env, timeout=120 + connects * (delay_ms / 1000.0) * 40)
    if done.returncode != 0:
        raise SystemExit(f"tree {src}: child failed\n{done.stderr[-2000:]}")
    res: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay the relay adds (ms)")
    ap.add_argument("--connects", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="runs per tree, alternating")
    ap.add_argument("--base", type=Path, help="src directory of a second tree to compare with")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    trees = [("current", SRC)] + ([("base", args.base)] if args.base else [])
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, src in trees:
            results[name].append(run_tree(src, args.delay_ms, args.connects))
    rtt = 2 * args.delay_ms
    print(f"| tree | connect p50 ms (round trips of {rtt:g} ms) | connect to first message back p50 ms (round trips) |")
    print("|---|---|---|")
    out: dict[str, Any] = {}
    for name, _ in trees:
        for r in results[name]:
            print(f"| {name} | {r['connect_ms']:.1f} ({r['connect_ms'] / rtt:.2f}) | "
                  f"{r['first_message_ms']:.1f} ({r['first_message_ms'] / rtt:.2f}) |")
        out[name] = results[name]
    if args.json:
        args.json.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv,
                                         "delay_ms": args.delay_ms, "results": out}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
