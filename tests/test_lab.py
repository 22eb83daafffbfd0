"""The network lab (``quicmesh.testing.lab``): real ``quicmesh node`` processes in network
namespaces on two LANs joined by a router; a partition and its heal, and loss, injected by nftables.

Needs root, ``ip`` and ``nft``: on a machine without them the tests skip with one line saying why;
under CI (``CI`` set, as ``.ci/run`` runs as root after installing nftables) a missing capability
fails instead, so the lab never silently stops being tested.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from quicmesh.testing.lab import PREFIX, Lab, cleanup_stale, one_overlay, unavailable

REASON = unavailable()


@pytest.fixture(scope="module", autouse=True)
def _lab_or_skip() -> None:
    if REASON is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the network lab: {REASON}")
        pytest.skip(REASON)


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lb:
        yield lb
    assert not [ns for ns in _netns() if ns.startswith(f"{PREFIX}{lb.run_id}")]


def test_lab_has_no_link_to_the_machine() -> None:
    """No interface of a lab namespace has a peer in the root namespace, and no host has a default
    route: nothing can leave the lab."""
    with Lab() as lb:
        lb.add_lan("a")
        lb.add_lan("b")
        h1 = lb.add_host("h1", "a")
        lb.add_host("h2", "b")
        lb.add_router("r", ["a", "b"])
        root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        for ns in lb.namespaces():
            assert ns not in root_links
        routes = subprocess.run(["ip", "netns", "exec", h1.ns, "ip", "route"], capture_output=True, text=True,
                                check=True).stdout
        assert "default" not in routes
        assert "10.2.0.0/24 via 10.1.0." in routes
        made = lb.namespaces()
    left = [ns for ns in _netns() if ns in made]
    print(f"lab of {len(made)} namespaces torn down; left: {len(left)}")
    assert left == []


def test_stale_run_is_cleaned() -> None:
    """A namespace left by a crashed run (its process gone) is deleted by the next run."""
    dead = f"{PREFIX}{0x7ffffff0:x}xdead-h-x"  # a pid that does not exist
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        gone = cleanup_stale()
        assert dead in gone
        assert dead not in _netns()
    finally:
        subprocess.run(["ip", "netns", "del", dead], check=False, capture_output=True)


async def _count(node: object, sid: int) -> int:
    from quicmesh.testing.lab import LabNode

    assert isinstance(node, LabNode)
    ev = await node.process.request("counts", "counts")
    return int(ev["counts"].get(str(sid), 0))


async def _wait_count(node: object, sid: int, want: int, timeout: float) -> float:
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        got = await _count(node, sid)
        if got >= want:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise AssertionError(f"{got} of {want} messages within {timeout} s")
        await asyncio.sleep(0.1)


def test_partition_heal_and_loss(lab: Lab) -> None:
    """Four nodes on two LANs behind a router. Split 2|2 by nftables: messages published on one
    side do not cross; after the heal they cross again within 30 s. With 20 % loss on every host,
    1,000 messages all arrive (QUIC retransmits)."""

    async def run() -> None:
        lab.add_lan("a")
        lab.add_lan("b")
        hosts = [lab.add_host("a1", "a"), lab.add_host("a2", "a"), lab.add_host("b1", "b"), lab.add_host("b2", "b")]
        lab.add_router("r", ["a", "b"])
        first = await lab.spawn(hosts[0], "n0")
        nodes = [first] + [await lab.spawn(h, f"n{i + 1}", bootstrap=[first.address]) for i, h in enumerate(hosts[1:])]
        for n in nodes:
            await n.process.wait_peers(1, timeout=30)
        sub = nodes[3]
        await sub.process.request("subscribe", "subscribed", pattern="lab.>", id=1, quiet=True)
        await nodes[0].process.request("wait_subscriber", "ready", topic="lab.x", wait=30)
        await nodes[0].process.request("publish", "published", topic="lab.x", payload="m", count=10)
        await _wait_count(sub, 1, 10, 30)

        lab.partition(hosts[:2], hosts[2:])
        await nodes[0].process.request("publish", "published", topic="lab.x", payload="p", count=10)
        await asyncio.sleep(2.0)  # a window in which nothing may cross the cut (not a wait for a result)
        crossed = await _count(sub, 1) - 10
        assert crossed == 0, f"{crossed} messages crossed the partition"
        lab.heal()
        healed_at = time.monotonic()
        # After the heal the overlay repairs itself; a fresh publish must cross within 30 s.
        delivered = 0
        while time.monotonic() - healed_at < 30:
            await nodes[0].process.request("publish", "published", topic="lab.x", payload="h", count=1)
            before = await _count(sub, 1)
            await asyncio.sleep(0.5)
            delivered = await _count(sub, 1) - before
            if delivered:
                break
        heal_s = time.monotonic() - healed_at
        print(f"partition 2|2: heal to first cross-cut delivery {heal_s:.1f} s (crossed during cut: {crossed})")
        assert delivered, "no delivery across the former cut within 30 s of the heal"

        lab.loss(20)
        base = await _count(sub, 1)
        await nodes[0].process.request("publish", "published", topic="lab.x", payload="l", count=1000, rate=2000,
                                        wait=60)
        took = await _wait_count(sub, 1, base + 1000, 90)
        lab.heal()
        print(f"20 % loss on every host: 1,000 of 1,000 delivered in {took:.1f} s")
        await lab.stop_nodes()

    asyncio.run(run())


def test_one_overlay_reads_the_graph_of_connections() -> None:
    """The scenarios' "one overlay again" check: connected, split, and a node with no connection
    among the others (connections to nodes outside the set do not join it)."""
    assert one_overlay({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}})
    assert not one_overlay({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})
    assert not one_overlay({"a": {"b", "x"}, "b": {"a"}, "c": {"x"}})
    assert one_overlay({})
