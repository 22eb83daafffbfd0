#!/usr/bin/env python3
"""What a script that connects per task pays: a fresh process that imports quicmesh, connects a
light client to a gateway, publishes one message the gateway confirms, closes and exits (#14);
and the same from a shell, ``quicmesh pub --connect``.

    python bench/client_start.py [--runs 15] [--base ../wt-base/src] [--json bench/results/client_start.json]

This process runs the gateway node (on 127.0.0.1); each run starts a new interpreter for the
client (``PYTHONPATH`` = the tree under test) and measures the process's wall time from spawn to
exit, and inside it the import of ``quicmesh.Client``, the task (connect, ``publish(...,
confirm=True)``, close; the QUIC modules load at the first connect), its peak resident size
(``VmHWM``; ``ru_maxrss`` would carry the spawning process's over ``exec``) and the modules it
loaded. With ``--base`` the runs alternate between the base tree and this one, so the machine's
load falls on both alike, and the table shows the ratio current / base. Medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CURRENT = HERE.parent / "src"

CLIENT = """
import time
t0 = time.perf_counter()
import asyncio, json, sys
import quicmesh
quicmesh.Client
t1 = time.perf_counter()

async def main():
    async with await quicmesh.Client.connect(sys.argv[1], realm="start", reconnect=False) as client:
        await client.publish("start.t", b"x", confirm=True)

asyncio.run(main())
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "task_ms": (t2 - t1) * 1e3,
                  "maxrss_mib": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024,
                  "modules": len(sys.modules), "quicmesh_modules": sum(m.startswith("quicmesh") for m in sys.modules)}))
"""

FIGURES = (
    ("process wall ms", "wall_ms"),
    ("`quicmesh pub --connect` wall ms", "cli_wall_ms"),
    ("import quicmesh.Client ms", "import_ms"),
    ("connect (loads QUIC), publish confirmed, close ms", "task_ms"),
    ("peak RSS MiB", "maxrss_mib"),
    ("modules loaded", "modules"),
    ("quicmesh modules", "quicmesh_modules"),
)


async def one(tree: Path, address: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, address, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    wall = (time.perf_counter() - start) * 1e3
    if proc.returncode != 0:
        raise RuntimeError(f"client in {tree} failed: {err.decode()[-2000:]}")
    res: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    res["wall_ms"] = wall
    # the same task from a shell: the command-line client
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "quicmesh", "pub", "--connect", address,
                                                "--realm", "start", "start.t", "x", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    res["cli_wall_ms"] = (time.perf_counter() - start) * 1e3
    if proc.returncode != 0:
        raise RuntimeError(f"quicmesh pub in {tree} failed: {err.decode()[-2000:]}")
    return res


async def run(runs: int, trees: dict[str, Path]) -> dict[str, Any]:
    import quicmesh
    from quicmesh.config import NodeConfig
    from quicmesh.config.discovery import DiscoveryConfig

    node = await quicmesh.Node.start(NodeConfig(realm="start", listen="127.0.0.1:0",
                                                discovery=DiscoveryConfig(local=False)))
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    try:
        address = str(node.address)
        for tree in trees.values():  # a warm-up run each (disk cache, bytecode)
            await one(tree, address)
        for _ in range(runs):
            for name, tree in trees.items():
                samples[name].append(await one(tree, address))
    finally:
        await node.stop()
    return {name: {key: statistics.median(s[key] for s in runs_) for _, key in FIGURES} | {"runs": len(runs_)}
            for name, runs_ in samples.items()}


def table(res: dict[str, Any]) -> str:
    names = list(res)
    head = "| figure (median) | " + " | ".join(names) + (" | current / base |" if len(names) == 2 else " |")
    lines = [head, "|" + "---|" * (len(names) + 1 + (len(names) == 2))]
    for label, key in FIGURES:
        cells = [f"{res[n][key]:,.1f}" if key.endswith(("ms", "mib")) else f"{res[n][key]:,.0f}" for n in names]
        ratio = [f"{res['current'][key] / res['base'][key]:.2f}"] if len(names) == 2 and res["base"][key] else []
        lines.append(f"| {label} | " + " | ".join(cells + ratio) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=15, help="client processes per tree (after one warm-up each)")
    p.add_argument("--base", help="src directory of a tree to compare with, alternating")
    p.add_argument("--json", default=str(HERE / "results" / "client_start.json"))
    a = p.parse_args()
    if not 1 <= a.runs <= 200:
        p.error("--runs is 1-200")
    trees = {"base": Path(a.base).resolve(), "current": CURRENT} if a.base else {"current": CURRENT}
    res = asyncio.run(run(a.runs, trees))
    print(table(res))
    out = {"command": " ".join(["python", "bench/client_start.py", *sys.argv[1:]]), "python": sys.version.split()[0],
           "results": res}
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
