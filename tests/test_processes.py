"""Real node processes over QUIC on loopback: the two-node acceptance checks of issue #3."""

from __future__ import annotations

import asyncio
import gc
import os

import psutil
import pytest
from containers import static_sizes

from quicmesh.config import NodeConfig
from quicmesh.demo import run_demo
from quicmesh.errors import CallTimeout, ConnectionLost, PeerIdMismatch, RealmMismatch
from quicmesh.identity import KeyPair
from quicmesh.runtime.node import Node
from quicmesh.testing.process import NodeProcess
from quicmesh.testing.wait import eventually

pytestmark = pytest.mark.processes


def test_demo_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(timeout=60) == 0
    out = capsys.readouterr().out
    assert "C called demo.upper('hello mesh') -> 'HELLO MESH'" in out
    assert "demo OK" in out


async def test_ten_thousand_messages_between_processes_none_lost() -> None:
    p1 = await NodeProcess.spawn("P1", realm="load")
    p2 = await NodeProcess.spawn("P2", realm="load", bootstrap=[p1.address])
    node = await Node.start(NodeConfig(realm="load", bootstrap=(p1.address, p2.address)))
    try:
        await node.wait_until(lambda: len(node.peers()) == 2, timeout=20)
        # script -> P1
        await p1.request("subscribe", "subscribed", pattern="load.a", id=1, quiet=True)
        await node.wait_for_subscriber("load.a", timeout=10)
        for i in range(10_000):
            await node.publish("load.a", b"m%d" % i)
            if i % 500 == 499:
                await asyncio.sleep(0)
        counts = (await eventually(lambda: p1.request("counts", "counts"), timeout=30, interval=0.1,
                                   until=lambda ev: ev["counts"].get("1", 0) >= 10_000))["counts"]
        assert counts["1"] == 10_000
        # P2 -> script, checking order and completeness
        sub = await node.subscribe("load.b")
        got: list[bytes] = []

        async def read() -> None:
            while len(got) < 10_000:
                got.append((await sub.get()).payload)

        reader = asyncio.create_task(read())
        await p2.request("wait_subscriber", "ready", topic="load.b")
        await p2.request("publish", "published", topic="load.b", payload="x", count=10_000, wait=30)
        await asyncio.wait_for(reader, 30)
        assert got == [b"x#%d" % i for i in range(10_000)]
        assert sub.dropped == 0
    finally:
        await node.stop()
        assert await p2.stop() == 0
        assert await p1.stop() == 0


async def test_realm_isolation_and_expected_id_over_quic() -> None:
    a = await Node.start(NodeConfig(realm="a"))
    b = await Node.start(NodeConfig(realm="b"))
    c = await Node.start(NodeConfig(realm="a"))
    try:
        with pytest.raises(RealmMismatch):
            await b.connect(a.address)
        assert a.peers() == []
        assert a.transport.stats().connections == 0
        with pytest.raises(PeerIdMismatch):
            await c.connect(a.address, expected=KeyPair.generate().node_id)
        assert await c.connect(a.address, expected=a.id) == a.id
    finally:
        for n in (a, b, c):
            await n.stop()


async def test_calls_to_a_killed_callee_all_end_within_timeout() -> None:
    callee = await NodeProcess.spawn("callee", realm="kill", extra=["--advertise", "slow=sleep"])
    caller = await Node.start(NodeConfig(realm="kill", bootstrap=(callee.address,)))
    try:
        await caller.wait_for_provider("slow", timeout=20)
        loop = asyncio.get_running_loop()
        started = loop.time()
        calls = [asyncio.create_task(caller.call("slow", b"60", timeout=3.0)) for _ in range(100)]
        await eventually(lambda: caller.pending_calls >= 100, timeout=5)
        callee.kill()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        elapsed = loop.time() - started
        assert all(isinstance(r, CallTimeout | ConnectionLost) for r in results), results[:3]
        assert elapsed < 3.0 + 1.0
        assert caller.pending_calls == 0
    finally:
        await caller.stop()
        await callee.stop()


async def test_subscribe_close_cycles_keep_rss_and_containers_flat() -> None:
    """10,000+ subscribe/close cycles (each creates and frees a topic swarm) return every
    container to its size and keep RSS flat after warm-up (allocator pools, bounded histories)."""
    peer = await Node.start(NodeConfig(realm="cyc"))
    node = await Node.start(NodeConfig(realm="cyc", bootstrap=(peer.address,)))
    proc = psutil.Process(os.getpid())
    try:
        await node.wait_until(lambda: bool(node.peers()), timeout=10)

        async def cycles(n: int) -> None:
            for i in range(n):
                sub = await node.subscribe(f"cyc{i % 100}.x")
                await sub.close()
                if i % 100 == 99:
                    await asyncio.sleep(0)

        await cycles(5_000)  # warm-up: allocator pools, interned strings, bounded histories
        await node.wait_until(lambda: bool(node.rpc._peer_services.peek(peer.id) is not None), timeout=5)
        # the realm-wide service swarm forms in the background: take the baseline once it has
        await node.wait_until(lambda: node.mesh.swarm_neighbours("$svc") > 0, timeout=10)
        transient = {"node.inbox", "node.delivery_queue"}  # messages in flight at the instant

        def sizes() -> dict[str, int]:
            # time-driven containers (the sentinel's history gains a sample every few seconds,
            # however long the cycles take) are not compared as static: see tests/containers.py
            return static_sizes(node.registry, transient)

        baseline = sizes()
        gc.collect()
        rss0 = proc.memory_info().rss
        await cycles(20_000)
        gc.collect()
        rss1 = proc.memory_info().rss
        assert all(node.topic_state(f"cyc{i}.x") == 0 for i in range(100))
        assert sizes() == baseline
        per_cycle = (rss1 - rss0) / 20_000
        assert per_cycle < 50, f"RSS grew {rss1 - rss0} bytes over 20,000 cycles"
    finally:
        await node.stop()
        await peer.stop()


async def test_node_daemon_keeps_python_objects_in_the_c_heap_and_trims_it() -> None:
    """``quicmesh node`` re-executes itself (same pid) with ``PYTHONMALLOC=malloc`` unless the
    variable is set, and its trimmer runs and is exported; an explicit choice is kept."""
    import re
    import urllib.request

    a = await NodeProcess.spawn("A", realm="alloc", extra=["--http", "127.0.0.1:0"],
                                env={"QUICMESH_OBSERVABILITY__MALLOC_TRIM_INTERVAL": "0.1"})
    b: NodeProcess | None = None
    try:
        want = os.environ.get("PYTHONMALLOC", "malloc")  # a caller's own choice is kept
        assert psutil.Process(a.proc.pid).environ().get("PYTHONMALLOC") == want
        loop = asyncio.get_running_loop()

        def trims() -> float:
            with urllib.request.urlopen(f"http://{a.http}/metrics", timeout=5) as r:
                text = r.read().decode()
            m = re.search(r'^quicmesh_node_events_total\{name="malloc_trims_total"\} (\S+)$', text, re.M)
            return float(m.group(1)) if m else 0.0

        await eventually(lambda: loop.run_in_executor(None, trims), until=lambda n: n >= 3, timeout=20, interval=0.1)
        b = await NodeProcess.spawn("B", realm="alloc", env={"PYTHONMALLOC": "pymalloc"})
        assert psutil.Process(b.proc.pid).environ().get("PYTHONMALLOC") == "pymalloc"
    finally:
        codes = [await n.stop() for n in (b, a) if n is not None]
    assert codes == [0] * len(codes)
