"""Real node processes forming a mesh over QUIC on loopback (issues #4 and #5).

Node processes run with a short idle timeout (``QUICMESH_TRANSPORT__IDLE_TIMEOUT``) so that a
SIGKILLed peer is detected in seconds rather than the default 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from quicmesh.config import NodeConfig, TransportConfig
from quicmesh.errors import NoProvider
from quicmesh.runtime.node import Node
from quicmesh.testing.process import NodeProcess
from quicmesh.testing.wait import eventually

pytestmark = pytest.mark.processes

FAST_FAILURE = {"QUICMESH_TRANSPORT__IDLE_TIMEOUT": "3", "QUICMESH_TRANSPORT__KEEPALIVE_INTERVAL": "1"}


@contextlib.asynccontextmanager
async def chain(
    n: int, realm: str, extra: dict[int, list[str]] | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[list[NodeProcess]]:
    """``n`` node processes, each bootstrapping only through the previous one."""
    nodes: list[NodeProcess] = []
    try:
        for i in range(n):
            boot = [nodes[-1].address] if nodes else []
            nodes.append(await NodeProcess.spawn(
                f"n{i + 1}", realm=realm, bootstrap=boot, extra=(extra or {}).get(i + 1, []),
                env={**FAST_FAILURE, **(env or {})},
            ))
        yield nodes
    finally:
        for p in nodes:
            await p.stop()


async def counts(p: NodeProcess) -> dict[str, int]:
    return dict((await p.request("counts", "counts"))["counts"])


async def all_counts(subs: list[NodeProcess], sid: str) -> list[int]:
    return [(await counts(s)).get(sid, 0) for s in subs]


async def warm_until_all_receive(pub: NodeProcess, subs: list[NodeProcess], sid: int, timeout: float) -> None:
    """Publish warm-up messages until every subscriber got at least one more than before."""
    before = {s.name: (await counts(s)).get(str(sid), 0) for s in subs}

    async def publish_and_count() -> dict[str, int]:
        await pub.request("publish", "published", topic="chain.warm", payload="w", count=1)
        return {s.name: (await counts(s)).get(str(sid), 0) for s in subs}

    await eventually(publish_and_count, until=lambda got: all(got[n] > before[n] for n in got), timeout=timeout,
                     interval=0.2, what=f"every subscriber gets a warm-up message (before: {before})")


async def test_eight_processes_deliver_across_hops_and_survive_two_middle_nodes_dying() -> None:
    async with chain(8, "chain") as nodes:
        pub, subs = nodes[0], nodes[1:]
        for s in subs:
            await s.request("subscribe", "subscribed", pattern="chain.warm", id=1, quiet=True)
            await s.request("subscribe", "subscribed", pattern="chain.data", id=2, quiet=True)
        await pub.request("wait_subscriber", "ready", topic="chain.data", timeout=20, wait=25)
        await warm_until_all_receive(pub, subs, 1, timeout=45)
        await pub.request("publish", "published", topic="chain.data", payload="d", count=100, rate=100, wait=30)
        await eventually(lambda: all_counts(subs, "2"), until=lambda ns: all(n >= 100 for n in ns), timeout=20,
                         interval=0.2)
        assert [(await counts(s))["2"] for s in subs] == [100] * 7  # every message once, none lost

        for dead in (nodes[3], nodes[4]):  # two nodes in the middle of the bootstrap chain
            dead.kill()
            await dead.proc.wait()
        live = [s for s in subs if s.proc.returncode is None]
        await warm_until_all_receive(pub, live, 1, timeout=60)  # the overlay repaired
        await pub.request("publish", "published", topic="chain.data", payload="e", count=100, rate=100, wait=30)
        await eventually(lambda: all_counts(live, "2"), until=lambda ns: all(n >= 200 for n in ns), timeout=20,
                         interval=0.2)
        assert [(await counts(s))["2"] for s in live] == [200] * len(live)


async def test_call_reaches_a_provider_several_hops_away_and_fails_over_when_it_is_killed() -> None:
    extra = {4: ["--advertise", "svc.slow=sleep"], 5: ["--advertise", "svc.slow=sleep", "--advertise", "svc.up=upper"]}
    async with chain(5, "rpc", extra) as nodes:
        caller = nodes[0]
        await caller.request("wait_provider", "ready", name="svc.up", timeout=30, wait=35)
        reply = await caller.request("call", "reply", name="svc.up", payload="hello", id=1, timeout=5, wait=10)
        assert reply["payload"] == "HELLO"  # node 5 is not a neighbour of node 1: dialled directly

        await caller.request("wait_provider", "ready", name="svc.slow", timeout=30, wait=35)
        await caller.send("calls", name="svc.slow", payload="1.0", count=100, concurrency=100, timeout=12)
        await asyncio.sleep(0.3)  # the 100 calls are in flight (each handler sleeps 1 s)
        nodes[4].kill()  # one of the two providers dies with calls pending on it
        done = await caller.expect("calls_done", timeout=30)
        assert done["outcomes"] == {"ok": 100}, done
        assert done["pending"] == 0

        await caller.send("call", name="nobody.offers.this", payload="", id=2, timeout=5)
        err = await caller.expect("error", timeout=10)
        assert err["type"] == "NoProvider"


async def test_cancelling_a_thousand_callers_leaves_no_pending_entry() -> None:
    room = {"QUICMESH_RPC__MAX_CONCURRENT_HANDLERS": "2000"}  # the provider runs all 1,000 at once
    async with chain(3, "cancel", {3: ["--advertise", "svc.slow=sleep"]}, env=room) as nodes:
        cfg = NodeConfig(realm="cancel", bootstrap=(nodes[0].address,),
                         transport=TransportConfig(idle_timeout=3.0, keepalive_interval=1.0))
        node = await Node.start(cfg)
        try:
            await node.wait_for_provider("svc.slow", timeout=30)
            tasks = [asyncio.create_task(node.call("svc.slow", b"30", timeout=60)) for _ in range(1000)]
            await eventually(lambda: node.rpc.pending >= 1000, timeout=20, interval=0.05)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert node.pending_calls == 0
            assert all(v == 0 for v in node.caller.pending_entries().values()), node.caller.pending_entries()
            with pytest.raises(NoProvider):
                await node.call("nobody.offers.this", b"", timeout=5)
        finally:
            await node.stop()
