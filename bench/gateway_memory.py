#!/usr/bin/env python3
"""What a gateway holds per connected light client: its resident size with N idle clients.

    python bench/gateway_memory.py [--clients 800] [--mode none|shared|own] [--base ../wt-base/src]
                                   [--json bench/results/gateway_memory.json]

A gateway node runs in a child process (the tree under test on ``PYTHONPATH``,
``PYTHONMALLOC=malloc`` as ``quicmesh node`` runs); this process connects ``--clients`` light
clients to it one after another, each subscribing per ``--mode`` (``none``: connected only;
``shared``: all to one topic; ``own``: each to a topic of its own), and reads the gateway's
``VmRSS`` before the first and a second after the last: KiB per client. With ``--base`` the
same is measured for that tree too (current first, then base, then current again; the
table shows each tree's median).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CURRENT = HERE.parent / "src"

GATEWAY = """
import asyncio, sys
import quicmesh
from quicmesh.config.discovery import DiscoveryConfig

async def main():
    node = await quicmesh.Node.start(quicmesh.NodeConfig(realm="gwmem", listen="127.0.0.1:0",
                                                         discovery=DiscoveryConfig(local=False)))
    print(node.address, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told
    await node.stop()

asyncio.run(main())
"""


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    """Tell a gateway child process to stop (a line on its stdin) and wait for it; after 30 s it
    is killed, by its pid (``bench/gateway_fanout.py`` uses it too)."""
    assert proc.stdin is not None
    proc.stdin.write(b"stop\n")
    await proc.stdin.drain()
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


async def one(tree: Path, clients: int, mode: str) -> dict[str, float]:
    import quicmesh

    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONMALLOC": "malloc"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", GATEWAY, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdin is not None
    held: list[Any] = []
    try:
        address = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        await asyncio.sleep(1.0)
        before = _rss_kib(proc.pid)
        for i in range(clients):
            client = await quicmesh.Client.connect(address, realm="gwmem", reconnect=False)
            held.append(client)
            if mode != "none":
                held.append(await client.subscribe("gwmem.all" if mode == "shared" else f"gwmem.{i}"))
        await asyncio.sleep(1.0)
        after = _rss_kib(proc.pid)
    finally:
        for c in held:
            if isinstance(c, quicmesh.Client):
                await c.close()
        await stop_child(proc)
    return {"rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
            "kib_per_client": (after - before) / clients}


async def run(clients: int, mode: str, base: Path | None) -> dict[str, Any]:
    order = [("current", CURRENT)] + ([("base", base), ("current", CURRENT)] if base else [])
    samples: dict[str, list[dict[str, float]]] = {}
    for name, tree in order:
        samples.setdefault(name, []).append(await one(tree, clients, mode))
    return {name: {k: statistics.median(s[k] for s in runs) for k in runs[0]} | {"runs": len(runs)}
            for name, runs in samples.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=800)
    p.add_argument("--mode", choices=("none", "shared", "own"), default="none")
    p.add_argument("--base", help="src directory of a tree to compare with")
    p.add_argument("--json", default=str(HERE / "results" / "gateway_memory.json"))
    a = p.parse_args()
    if not 1 <= a.clients <= 5000:
        p.error("--clients is 1-5000")
    res = asyncio.run(run(a.clients, a.mode, Path(a.base).resolve() if a.base else None))
    print(f"| tree | gateway RSS before MiB | with {a.clients} clients ({a.mode}) MiB | KiB per client |")
    print("|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['rss_before_mib']:.1f} | {r['rss_after_mib']:.1f} | {r['kib_per_client']:.1f} |")
    out = {"command": " ".join(["python", "bench/gateway_memory.py", *sys.argv[1:]]), "python": sys.version.split()[0],
           "clients": a.clients, "mode": a.mode, "results": res}
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
