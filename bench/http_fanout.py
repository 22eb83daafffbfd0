#!/usr/bin/env python3
"""What a node's HTTP face spends to stream topic messages to many SSE or WebSocket consumers.

    python bench/http_fanout.py [--streams 50] [--messages 200] [--rounds 5] [--size 64] [--kind sse]
                                [--base ../wt-base/src] [--json bench/results/http_fanout.json]

A node with its HTTP face runs in a child process (the tree under test on ``PYTHONPATH``,
``PYTHONMALLOC=malloc`` as ``quicmesh node`` runs); this process opens ``--streams`` streams
(``--kind sse`` or ``ws``, aiohttp clients) to one topic. Per round the node publishes
``--messages`` messages of ``--size`` bytes on it (from its own process: the bench times the
streaming, not a publisher's hop), and the round ends when every stream received every message.
Printed per tree: the node's CPU time per delivered message (one message to one stream: the
node's delivery, the JSON encoding, the stream's queue and the write to its socket), deliveries
per second of wall time, and the node's RSS. Medians of ``--rounds`` rounds after a warm-up
round. With ``--base`` another tree is measured in the same run (current, base, current; the
table shows each tree's median and the ratio). Loopback only; the node process is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway_fanout import Rounds, alternate, report  # type: ignore[import-not-found]
from gateway_memory import stop_child  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
TOPIC = "fan.all"
MARK = b"event: message\n"
"""What starts each delivered message of an SSE stream (a WebSocket delivers one frame each)."""

FACE = """
import asyncio, sys
import quicmesh
from quicmesh.config import HttpApiConfig
from quicmesh.config.discovery import DiscoveryConfig

async def main():
    streams, queue = int(sys.argv[1]), int(sys.argv[2])
    node = await quicmesh.Node.start(quicmesh.NodeConfig(
        realm="httpfan", listen="127.0.0.1:0", discovery=DiscoveryConfig(local=False),
        http_api=HttpApiConfig(listen="127.0.0.1:0", max_streams=streams, stream_queue_size=queue,
                               max_connections=streams + 16)))
    print(node.http_api_address, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "stop":
            break
        count, size = int(line[1]), int(line[2])
        payload = b"x" * size
        for _ in range(count):
            await node.publish(TOPIC, payload)
        print("published", flush=True)
    await node.stop()

asyncio.run(main())
""".replace("TOPIC", repr(TOPIC))


async def one(tree: Path, streams: int, messages: int, rounds: int, size: int, kind: str) -> dict[str, float]:
    """One node of ``tree``: warm-up round, then ``rounds`` timed rounds; medians."""
    import aiohttp

    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONMALLOC": "malloc"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", FACE, str(streams), str(4 * messages), env=env,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdin is not None
    rounds_ = Rounds(proc, streams, size)
    readers: list[asyncio.Task[None]] = []

    async def read_sse(i: int, resp: Any) -> None:
        tail = b""
        while chunk := await resp.content.readany():
            data = tail + chunk
            rounds_.count(i, data.count(MARK))
            tail = data[-(len(MARK) - 1):]

    async def read_ws(i: int, ws: Any) -> None:
        async for _ in ws:
            rounds_.count(i)

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), read_bufsize=1 << 20)
    try:
        address = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        url = f"http://{address}/v1/subscribe/{TOPIC}"
        for i in range(streams):
            if kind == "ws":
                ws = await session.ws_connect(url.replace("http://", "ws://"), max_msg_size=1 << 20)
                assert (await ws.receive_json(timeout=10))["event"] == "subscribed"
                readers.append(asyncio.ensure_future(read_ws(i, ws)))
            else:
                resp = await session.get(url, headers={"Accept": "text/event-stream"})
                assert resp.status == 200, resp.status
                assert (await resp.content.readuntil(b"\n\n")).startswith(b"event: subscribed")
                readers.append(asyncio.ensure_future(read_sse(i, resp)))
        await rounds_.measure(messages, rounds)
        return rounds_.medians("node", messages)
    finally:
        for t in readers:
            t.cancel()
        await session.close()
        await stop_child(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--kind", choices=("sse", "ws"), default="sse")
    p.add_argument("--base", help="src directory of a tree to compare with")
    p.add_argument("--json", default=str(HERE / "results" / "http_fanout.json"))
    a = p.parse_args()
    if not 1 <= a.streams <= 1000 or not 1 <= a.messages <= 5000 or not 1 <= a.rounds <= 50:
        p.error("--streams is 1-1000, --messages 1-5000, --rounds 1-50")
    if not 0 <= a.size <= 60_000:
        p.error("--size is 0-60000")
    base = Path(a.base).resolve() if a.base else None
    res = asyncio.run(alternate(lambda tree: one(tree, a.streams, a.messages, a.rounds, a.size, a.kind), base))
    report(res, "node", "node", f"{a.streams} {a.kind} streams x {a.messages} messages of {a.size} B, "
           f"medians of {a.rounds} rounds")
    out = {"command": " ".join(["python", "bench/http_fanout.py", *sys.argv[1:]]), "python": sys.version.split()[0],
           "streams": a.streams, "messages": a.messages, "rounds": a.rounds, "size": a.size, "kind": a.kind,
           "results": res}
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
