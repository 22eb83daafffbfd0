"""What the network-lab tests share: the ``lab`` fixture (skip with one line where the lab cannot
run, fail instead under CI), an eight-node mesh on two LANs, a node's peers, and the pause fault
on a fixed schedule.

``tests/conftest.py`` loads this module as a plugin, so every test module can ask for ``lab``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Protocol

import pytest

from quicmesh.testing.lab import Lab, LabNode, unavailable

__all__ = ["Pausable", "lab", "mesh", "pause_every_second", "peers"]


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab of network namespaces, torn down after the test. Needs root, ``ip`` and ``nft``:
    without them the test skips with the reason, except under CI (``CI`` set), where ``.ci/run``
    installed them and a missing capability is a failure, so the lab never silently goes untested."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the network lab: {reason}")
        pytest.skip(reason)
    with Lab() as lb:
        yield lb


async def mesh(lab: Lab, n: int = 8) -> list[LabNode]:
    """``n`` nodes on two LANs (alternating) joined by a router, all bootstrapped through the
    first, each with at least two peers."""
    lab.add_lan("a")
    lab.add_lan("b")
    hosts = [lab.add_host(f"h{i}", "a" if i % 2 == 0 else "b") for i in range(n)]
    lab.add_router("r", ["a", "b"])
    first = await lab.spawn(hosts[0], "n0")
    nodes = [first]
    for i, h in enumerate(hosts[1:], start=1):
        nodes.append(await lab.spawn(h, f"n{i}", bootstrap=[first.address]))
    for node in nodes:
        await node.process.wait_peers(2, timeout=30)
    return nodes


async def peers(node: LabNode) -> set[str]:
    """The node ids ``node`` holds a connection to (its ``health`` control command)."""
    ev = await node.process.request("health", "health", wait=10)
    return set(ev["peers"])


class Pausable(Protocol):
    """A node process that can be stopped and continued (SIGSTOP / SIGCONT by its pid)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


async def pause_every_second(node: Pausable, seconds: float, stopped: float = 0.3) -> tuple[int, float]:
    """Stop ``node`` for ``stopped`` s at the start of each of ``seconds`` seconds; returns the
    pauses made and the seconds they took. The pauses keep to a schedule fixed at the start, so a
    late wake-up shortens the next wait rather than pushing every later pause back (sleeping 0.3 s
    and 0.7 s in turn drifted: 598 pauses in 600 s under ``make lab``). The loop is bounded in
    count; the node is continued whatever ends it."""
    start = time.monotonic()
    pauses = 0
    try:
        while pauses < int(seconds):
            node.pause()
            await asyncio.sleep(max(0.0, start + pauses + stopped - time.monotonic()))
            node.resume()
            pauses += 1
            await asyncio.sleep(max(0.0, start + pauses - time.monotonic()))
    finally:
        node.resume()
    return pauses, time.monotonic() - start
