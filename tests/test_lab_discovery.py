"""Local discovery on a real kernel network (the lab, #13): ``quicmesh node`` processes, each in
its own network namespace, all on ONE LAN (a Linux bridge), started with NO bootstrap list.

1. Eight nodes of one realm form one mesh (the graph of every node's connections is connected)
   within 5 s of the last start; a node of another realm on the same LAN hears their
   announcements, ignores them, and is never connected to any of them.
2. Eight nodes started all at once (groups may form apart before they hear each other) form one
   mesh within 5 s as well.
3. With discovery switched off (``--no-local-discovery``), nodes without a bootstrap list stay
   alone while discovering nodes beside them on the same LAN find each other.

Every figure is printed. ``QMLAB_DISCOVERY_LIMIT_S`` (default 5) is the time allowed to form
the mesh.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from quicmesh.testing.lab import Lab, LabNode

LIMIT_S = float(os.environ.get("QMLAB_DISCOVERY_LIMIT_S", "5"))
ENV = {"QUICMESH_DISCOVERY__INTERVAL": "2"}
"""Re-announce every 2 s (the default is 10), so the "stays alone" checks take a few seconds."""


async def _health(node: LabNode) -> dict[str, Any]:
    return await node.process.request("health", "health", wait=10)


async def _edges(nodes: list[LabNode]) -> dict[str, set[str]]:
    evs = await asyncio.gather(*(_health(n) for n in nodes))
    return {n.process.node_id: set(ev["peers"]) for n, ev in zip(nodes, evs, strict=True)}


def _connected(ids: set[str], edges: dict[str, set[str]]) -> bool:
    start = next(iter(ids))
    seen, todo = {start}, [start]
    while todo:
        for p in edges.get(todo.pop(), set()) & ids:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return seen == ids


async def _discovery(node: LabNode) -> dict[str, Any]:
    doc: dict[str, Any] = (await _health(node))["health"]["local_discovery"]
    return doc


@pytest.mark.timeout(240)
def test_eight_nodes_on_one_lan_form_one_mesh_and_another_realm_is_never_connected(lab: Lab) -> None:
    async def run() -> None:
        lab.add_lan("a")
        hosts = [lab.add_host(f"h{i}", "a") for i in range(9)]
        nodes: list[LabNode] = []
        for i, h in enumerate(hosts[:8]):
            nodes.append(await lab.spawn(h, f"n{i}", env=ENV))
        ids = {n.process.node_id for n in nodes}
        formed = await _formed(nodes)
        print(f"8 nodes, one LAN, no bootstrap: one mesh {formed:.2f} s after the last start (limit {LIMIT_S:g} s)")
        assert formed <= LIMIT_S

        stranger = await lab.spawn(hosts[8], "x", realm="lab-other", env=ENV)
        # wait until it heard (and ignored) every node of the other realm, and they heard it
        deadline = time.monotonic() + 30
        while True:
            st = await _discovery(stranger)
            seen_by = [(await _discovery(n))["ignored_other_realm"] for n in nodes]
            if st["ignored_other_realm"] >= 8 and min(seen_by) >= 1:
                break
            assert time.monotonic() < deadline, f"announcements not heard: stranger {st}, others {seen_by}"
            await asyncio.sleep(0.1)
        # and past two more announcements of the others (interval 2 s)
        announced = [(await _discovery(n))["announced"] for n in nodes]
        while min([(await _discovery(n))["announced"] - a for n, a in zip(nodes, announced, strict=True)]) < 2:
            assert time.monotonic() < deadline + 30
            await asyncio.sleep(0.2)
        edges = await _edges([*nodes, stranger])
        touching = len(edges[stranger.process.node_id]) + sum(stranger.process.node_id in e for e in edges.values())
        assert _connected(ids, edges)
        print(f"node of another realm on the same LAN: {touching} connections "
              f"(it ignored {st['ignored_other_realm']} announcements; the 8 ignored {sum(seen_by)} of its)")
        assert touching == 0
        d0 = await _discovery(nodes[0])
        print(f"node n0 discovery: seen {d0['seen']}, accepted {d0['accepted']}, ignored other realm "
              f"{d0['ignored_other_realm']}, self {d0['ignored_self']}, rate {d0['ignored_rate']}, "
              f"dialled {d0['dialled']} in {d0['joins']} joins, announced {d0['announced']}")
        await lab.stop_nodes()

    asyncio.run(run())


async def _formed(nodes: list[LabNode], limit: float = 30.0) -> float:
    """Seconds until the nodes' connections form one connected graph (fails after ``limit``)."""
    start = time.monotonic()
    ids = {n.process.node_id for n in nodes}
    while time.monotonic() - start < limit:
        if _connected(ids, await _edges(nodes)):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"the {len(nodes)} nodes did not form one mesh within {limit:g} s")


@pytest.mark.timeout(120)
def test_eight_nodes_started_at_once_form_one_mesh(lab: Lab) -> None:
    async def run() -> None:
        lab.add_lan("a")
        hosts = [lab.add_host(f"h{i}", "a") for i in range(8)]
        nodes = list(await asyncio.gather(*(lab.spawn(h, f"n{i}", env=ENV) for i, h in enumerate(hosts))))
        formed = await _formed(nodes)
        print(f"8 nodes started at once, no bootstrap: one mesh {formed:.2f} s after the last start "
              f"(limit {LIMIT_S:g} s)")
        assert formed <= LIMIT_S
        await lab.stop_nodes()

    asyncio.run(run())


@pytest.mark.timeout(180)
def test_with_discovery_off_nodes_without_bootstrap_stay_alone(lab: Lab) -> None:
    async def run() -> None:
        lab.add_lan("a")
        hosts = [lab.add_host(f"h{i}", "a") for i in range(5)]
        off = [await lab.spawn(h, f"off{i}", extra=("--no-local-discovery",), env=ENV) for i, h in enumerate(hosts[:3])]
        on = [await lab.spawn(h, f"on{i}", env=ENV) for i, h in enumerate(hosts[3:])]
        await on[0].process.wait_peers(1, timeout=15)  # discovery works on this LAN meanwhile
        deadline = time.monotonic() + 30
        base = [(await _discovery(n))["announced"] for n in on]
        while min([(await _discovery(n))["announced"] - b for n, b in zip(on, base, strict=True)]) < 2:
            assert time.monotonic() < deadline  # two more announcements the silent nodes could have heard
            await asyncio.sleep(0.2)
        alone = [len((await _health(n))["peers"]) for n in off]
        states = {(await _discovery(n))["state"] for n in off}
        known = [(await _discovery(n))["peers"] for n in on]
        print(f"discovery off: connections of the 3 silent nodes {alone}; the 2 discovering nodes "
              f"discovered {known} peers each (the silent nodes announce nothing)")
        assert alone == [0, 0, 0] and states == {"off"}
        assert known == [1, 1]
        await lab.stop_nodes()

    asyncio.run(run())
