"""The node's delivery FIFO (:mod:`quicmesh.runtime.delivery`): ``full`` follows what waits in
both directions (a plain attribute every ``publish`` reads), and ``room()`` wakes a waiter once
the FIFO drained below half."""

from __future__ import annotations

import asyncio
from typing import Any

from quicmesh.bounded import ContainerRegistry
from quicmesh.bounded.aio import BoundedQueue
from quicmesh.config import NodeConfig
from quicmesh.core.effects import Deliver
from quicmesh.identity import NodeId
from quicmesh.runtime.delivery import CHUNK, HIGH, HIGH_BYTES, Delivery

P = NodeId(bytes([7]) * 32)


def _delivery(got: list[Deliver], rooms: list[int]) -> Delivery:
    def route(topic: str) -> list[BoundedQueue[Any]]:
        return []

    return Delivery(NodeConfig(), ContainerRegistry("t"), route=route, deliver=got.append,
                    deliver_batch=lambda eff: None, on_room=lambda: rooms.append(len(got)))


async def test_full_follows_the_messages_waiting_and_room_wakes_below_half() -> None:
    got: list[Deliver] = []
    rooms: list[int] = []
    d = _delivery(got, rooms)
    d.loop = asyncio.get_running_loop()
    # the first CHUNK of an iteration is delivered inline; the rest waits in the FIFO
    for i in range(CHUNK + HIGH - 1):
        d.put(Deliver("t", b"x", P, i, 0))
    assert len(got) == CHUNK and d.pending == HIGH - 1 and not d.full
    d.put(Deliver("t", b"x", P, CHUNK + HIGH, 0))
    assert d.pending == HIGH and d.full
    async with asyncio.timeout(10):  # room() starts here, while full; drains run CHUNK a turn
        await d.room()
    assert d.pending < HIGH // 2 and not d.full  # a waiter wakes below half (hysteresis)
    assert len(rooms) == 1  # and so does the driver's inbox
    await asyncio.wait_for(_drained(d), 10)
    assert len(got) == CHUNK + HIGH and not d.full and len(rooms) == 1


async def test_full_by_bytes() -> None:
    got: list[Deliver] = []
    d = _delivery(got, [])
    d.loop = asyncio.get_running_loop()
    big = bytes(HIGH_BYTES // 4)
    for i in range(CHUNK):  # this iteration's inline budget: delivered at once
        d.put(Deliver("t", b"x", P, i, 0))
    for i in range(3):
        d.put(Deliver("t", big, P, CHUNK + i, 0))
    assert d.pending == 3 and not d.full
    d.put(Deliver("t", big, P, CHUNK + 3, 0))
    assert d.pending == 4 and d.full
    await asyncio.wait_for(_drained(d), 10)
    assert len(got) == CHUNK + 4 and not d.full


async def _drained(d: Delivery) -> None:
    while d.pending:
        await asyncio.sleep(0)
