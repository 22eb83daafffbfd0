"""``quicmesh pub|sub|call --connect HOST:PORT``: the CLI as a light client of a gateway process."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from quicmesh.identity import KeyPair
from quicmesh.testing.process import NodeProcess

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]


async def cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quicmesh", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def gateway() -> AsyncIterator[NodeProcess]:
    """A gateway process (one client at most) and a mesh peer process providing ``up``."""
    gw = await NodeProcess.spawn("gw", realm="cli", extra=["--max-clients", "1"])
    provider = await NodeProcess.spawn("provider", realm="cli", bootstrap=[gw.address],
                                       extra=["--advertise", "up=upper"])
    try:
        await gw.request("wait_provider", "ready", name="up", wait=20)
        yield gw
    finally:
        await provider.stop()
        await gw.stop()


async def test_pub_sub_call_through_the_gateway(gateway: NodeProcess) -> None:
    addr = gateway.address
    sub = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quicmesh", "sub", "--connect", addr, "--realm", "cli", "--gateway-id",
        gateway.node_id, "news.>", "--count", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert sub.stderr is not None and sub.stdout is not None
        line = await asyncio.wait_for(sub.stderr.readline(), 30)
        assert line.decode().startswith("subscribed to news.> via ")
        # the gateway holds max_clients=1: a second client is refused, with a one-line typed error
        code, out, err = await cli("pub", "--connect", addr, "--realm", "cli", "news.a", "x")
        assert code == 1 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: AdmissionRefused: ") and "max_clients" in lines[0], err
        # the gateway node itself publishes (the subscriber is its only client)
        await gateway.send("publish", topic="news.a", payload="first", count=1)
        await gateway.send("publish", topic="news.b", payload="second", count=1)
        out_b, _ = await asyncio.wait_for(sub.communicate(), 30)
        assert out_b.decode().splitlines() == ["news.a first", "news.b second"]
        assert sub.returncode == 0
    finally:
        if sub.returncode is None:
            sub.kill()
            await sub.wait()
    # the slot is free again: publish and call as clients
    code, out, err = await cli("pub", "--connect", addr, "--realm", "cli", "news.c", "third")
    assert (code, out, err) == (0, "", "")
    code, out, err = await cli("call", "--connect", addr, "--realm", "cli", "up", "hello")
    assert (code, out) == (0, "HELLO\n"), err


async def test_typed_errors_exit_non_zero(gateway: NodeProcess) -> None:
    addr = gateway.address
    cases = [
        (("call", "--connect", addr, "--realm", "cli", "missing", "x"), "NoProvider"),
        (("call", "--connect", addr, "--realm", "other", "up", "x"), "RealmMismatch"),
        (("pub", "--connect", addr, "--realm", "cli", "--gateway-id", str(KeyPair.generate().node_id), "t", "x"),
         "PeerIdMismatch"),
        (("pub", "--connect", addr, "--realm", "cli", "bad..topic", "x"), "InvalidTopic"),
    ]
    for args, error in cases:
        code, out, err = await cli(*args)
        lines = err.strip().splitlines()
        assert code == 1 and out == "", (args, code, out, err)
        assert len(lines) == 1 and lines[0].startswith(f"error: {error}: "), (args, err)
    code, _, err = await cli("call", "--node", addr, "--connect", addr, "x", "y")
    assert code == 2 and "not allowed with argument" in err  # one target only


async def test_short_lived_node_subscribes_publishes_and_calls_through_node() -> None:
    """``--node``: the CLI joins the realm as a short-lived node through that node, so it finds the
    topic's swarm and the provider over the overlay (a bare connection found neither)."""
    node = await NodeProcess.spawn("node", realm="cli", extra=["--advertise", "up=upper"])
    try:
        sub = asyncio.ensure_future(cli("sub", "--node", node.address, "--realm", "cli", "t.x", "--count", "1"))
        await node.request("wait_subscriber", "ready", topic="t.x", timeout=20, wait=25)
        await node.request("publish", "published", topic="t.x", payload="hello", count=1)
        code, out, err = await sub
        assert (code, out) == (0, "t.x hello\n"), err
        await node.send("subscribe", pattern="t.y", id=1, quiet=True)
        await node.expect("subscribed")
        code, _, err = await cli("pub", "--node", node.address, "--realm", "cli", "t.y", "hi")
        assert code == 0, err
        ev = await node.request("await_count", "count_reached", id=1, count=1, timeout=10, wait=15)
        assert ev["count"] == 1
        code, out, err = await cli("call", "--node", node.address, "--realm", "cli", "up", "abc")
        assert (code, out) == (0, "ABC\n"), err
    finally:
        await node.stop()
