"""Replicated logs between real ``quicmesh node --control --data-dir`` processes over QUIC on
loopback: a replicated map reaches every node (also one that was down when it was written), an
acknowledged append survives ``kill -9`` and the restarted node continues the same log, and the
five-node scenario of issue #7 (a writer appends 1,000 unique values while another node is
killed and restarted; afterwards nothing is lost and every head matches)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from quicmesh.testing.process import NodeProcess
from quicmesh.testing.wait import eventually

pytestmark = pytest.mark.processes


async def spawn(name: str, realm: str, data: Path, bootstrap: Sequence[str] = ()) -> NodeProcess:
    return await NodeProcess.spawn(name, realm=realm, bootstrap=bootstrap, extra=["--data-dir", str(data / name)])


async def heads(node: NodeProcess, log: str) -> dict[str, int]:
    ev = await node.request("log_heads", "log_heads", log=log)
    return dict(ev["heads"])


async def wait_heads(nodes: Sequence[NodeProcess], log: str, want: dict[str, int], timeout: float = 30.0) -> None:
    """Poll every node's heads of ``log`` until they all equal ``want``."""

    async def every_head() -> list[dict[str, int]]:
        return [await heads(n, log) for n in nodes]

    await eventually(every_head, until=lambda got: all(g == want for g in got), timeout=timeout, interval=0.1,
                     what=f"heads of {log!r} converge to {want}")


async def kv_value(node: NodeProcess, m: str, key: str, until: str, timeout: float = 20.0) -> dict[str, Any]:
    return await node.request("kv_get", "kv_value", wait=timeout + 5, map=m, key=key, until=until, timeout=timeout)


async def stop_all(nodes: Sequence[NodeProcess | None]) -> list[int]:
    return [await n.stop() for n in nodes if n is not None]


async def test_replicated_map_reaches_all_nodes_and_one_that_was_down(tmp_path: Path) -> None:
    a = await spawn("A", "kvp", tmp_path)
    b = await spawn("B", "kvp", tmp_path, [a.address])
    c: NodeProcess | None = await spawn("C", "kvp", tmp_path, [a.address, b.address])
    assert c is not None
    try:
        for n in (a, b, c):
            await n.wait_peers(2)
            await n.request("kv_open", "kv_opened", map="cfg")
        await b.request("kv_set", "kv_set", map="cfg", key="colour", payload="blue")
        for n in (a, b, c):
            ev = await kv_value(n, "cfg", "colour", "blue")
            assert ev["payload"] == "blue"
        # C goes down; A writes; C comes back on the same data dir and catches up
        c_id = c.node_id
        assert await c.stop() == 0
        c = None
        await a.request("kv_set", "kv_set", map="cfg", key="mode", payload="maintenance")
        await a.request("kv_delete", "kv_deleted", map="cfg", key="colour")
        # restarted with no bootstrap, so what it shows first can only come from its own disk
        c = await spawn("C", "kvp", tmp_path)
        assert c.node_id == c_id
        ev = await c.request("kv_items", "kv_items", map="cfg")
        assert ev["items"] == {"colour": "blue"}  # what it had stored before it went down
        for peer in (a, b):
            await c.request("connect", "connected", address=peer.address)
        ev = await kv_value(c, "cfg", "mode", "maintenance")
        assert ev["payload"] == "maintenance"
        ev = await c.request("kv_get", "kv_value", map="cfg", key="colour")
        assert ev["found"] is False
        for n in (a, b, c):
            assert (await n.request("kv_items", "kv_items", map="cfg"))["items"] == {"mode": "maintenance"}
    finally:
        assert await stop_all([c, b, a]) == [0] * (3 if c is not None else 2)


async def test_appended_log_survives_kill_9_and_continues(tmp_path: Path) -> None:
    p = await spawn("P", "kill9", tmp_path)
    q = await spawn("Q", "kill9", tmp_path, [p.address])
    try:
        await p.wait_peers(1)
        await q.request("log_open", "log_opened", log="journal")
        ev = await p.request("append", "appended", log="journal", payload="entry", count=200)
        assert (ev["first_seq"], ev["last_seq"]) == (0, 199)
        pid = p.node_id
        p.kill()  # right after the acknowledgement: every acknowledged append must be on disk
        assert await p.stop() != 0
        p = await spawn("P", "kill9", tmp_path, [q.address])
        assert p.node_id == pid
        assert await heads(p, "journal") == {pid: 199}
        ev = await p.request("append", "appended", log="journal", payload="after-restart")
        assert ev["first_seq"] == 200
        # Q validates the chain (signature, seq, backlink to seq 199) before storing seq 200
        await wait_heads([p, q], "journal", {pid: 200})
        entries = (await q.request("log_read", "log_entries", log="journal", author=pid, **{"from": 198}))["entries"]
        assert entries == [
            {"seq": 198, "payload": "entry#198"},
            {"seq": 199, "payload": "entry#199"},
            {"seq": 200, "payload": "after-restart"},
        ]
        health = (await q.request("health", "health"))["health"]
        assert health["store"]["kind"] == "sqlite" and health["store"]["operations"] == 201
        assert health["logs"]["invalid_ops_total"] == 0
    finally:
        assert await stop_all([q, p]) == [0, 0]


async def test_five_nodes_writer_and_a_killed_node_lose_nothing(tmp_path: Path) -> None:
    nodes: list[NodeProcess] = []
    for i in range(5):
        nodes.append(await spawn(f"N{i}", "five", tmp_path, [n.address for n in nodes]))
    writer, victim = nodes[0], nodes[3]
    try:
        for n in nodes:
            await n.wait_peers(4)
            await n.request("log_open", "log_opened", log="values")
        await writer.send("append", log="values", payload="value", count=1000, rate=400)
        await eventually(lambda: heads(victim, "values"), until=lambda hs: hs.get(writer.node_id, -1) >= 200,
                         timeout=20, interval=0.05)
        victim.kill()
        await victim.stop()
        h = (await heads(writer, "values"))[writer.node_id]
        # stay down while at least 200 more values are written
        await eventually(lambda: heads(writer, "values"), until=lambda hs: hs[writer.node_id] >= h + 200,
                         timeout=20, interval=0.05)
        victim = nodes[3] = await spawn("N3", "five", tmp_path, [n.address for n in nodes if n is not victim])
        await victim.request("log_open", "log_opened", log="values")
        done = await writer.expect("appended", timeout=30)
        assert (done["first_seq"], done["last_seq"]) == (0, 999)
        await wait_heads(nodes, "values", {writer.node_id: 999}, timeout=40)
        # lost = 0: the restarted node holds all 1,000 unique values, in order
        got: list[str] = []
        for start in (0, 500):
            ev = await victim.request(
                "log_read", "log_entries", log="values", author=writer.node_id, limit=500, **{"from": start}
            )
            got += [e["payload"] for e in ev["entries"]]
        assert got == [f"value#{i}" for i in range(1000)]
        for n in nodes:
            health = (await n.request("health", "health"))["health"]
            assert health["logs"]["invalid_ops_total"] == 0
            assert health["store"]["operations"] == 1000
    finally:
        assert await stop_all(nodes) == [0] * 5
