"""``quicmesh demo``: three node processes on loopback exchange topic messages and calls.

Each node is a separate ``quicmesh node --control`` process; this script drives them through
their JSON-lines control channel (see :mod:`quicmesh.testing.control`) with the process harness
:class:`~quicmesh.testing.process.NodeProcess` and prints a summary.
"""

from __future__ import annotations

import asyncio
import sys

from .testing.process import NodeProcess

__all__ = ["run_demo"]


async def _demo() -> list[str]:
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    say("quicmesh demo: three nodes on loopback, realm 'demo', QUIC with Ed25519 identities")
    a = await NodeProcess.spawn("A")
    b = await NodeProcess.spawn("B", bootstrap=[a.address])
    c = await NodeProcess.spawn("C", bootstrap=[a.address, b.address])
    nodes = [a, b, c]
    try:
        for n in nodes:
            say(f"  node {n.name}  {n.node_id[:16]}…  listening on {n.address}")
        await a.wait_peers(2)
        await b.wait_peers(2)
        await c.wait_peers(2)
        say("  all three connected (each proved its node id; realm checked at the handshake)")

        await a.request("subscribe", "subscribed", pattern="sensors.>", id=1)
        await b.request("subscribe", "subscribed", pattern="sensors.temp", id=1)
        await b.request("advertise", "advertised", name="demo.upper", kind="upper")
        await a.request("advertise", "advertised", name="demo.add", kind="add")
        say("  A subscribed to 'sensors.>', B to 'sensors.temp'; B offers demo.upper, A offers demo.add")
        for what in ("demo.upper", "demo.add"):
            await c.request("wait_provider", "ready", name=what)
        await c.request("wait_subscriber", "ready", topic="sensors.humidity")

        await c.send("publish", topic="sensors.temp", payload="23.5", count=1)
        await c.send("publish", topic="sensors.humidity", payload="41%", count=1)
        await c.expect("published")
        await c.expect("published")
        got_a = [await a.expect("message", timeout=10) for _ in range(2)]
        got_b = [await b.expect("message", timeout=10)]
        for who, got in (("A", got_a), ("B", got_b)):
            for m in got:
                say(f"  {who} received {m['topic']} = {m['payload']!r} from C")

        r1 = await c.request("call", "reply", name="demo.upper", payload="hello mesh", id=1)
        say(f"  C called demo.upper('hello mesh') -> {r1['payload']!r} in {r1['ms']} ms")
        r2 = await c.request("call", "reply", name="demo.add", payload="2+3", id=2)
        say(f"  C called demo.add('2+3') -> {r2['payload']!r} in {r2['ms']} ms")
        await c.send("call", name="demo.missing", payload="", id=3, timeout=2)
        err = await c.expect("error")
        say(f"  C called demo.missing -> {err['type']} (typed error, as expected)")
        if r1["payload"] != "HELLO MESH" or r2["payload"] != "5" or err["type"] != "NoProvider":
            raise RuntimeError("unexpected results")
    finally:
        codes = [await n.stop() for n in nodes]
    say(f"  nodes stopped cleanly (exit codes {codes})")
    if any(codes):
        raise RuntimeError(f"a node exited with {codes}")
    say("demo OK")
    return lines


def run_demo(timeout: float = 60.0) -> int:
    """Run the demo; 0 on success."""

    async def go() -> None:
        async with asyncio.timeout(timeout):
            await _demo()

    try:
        asyncio.run(go())
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    return 0
