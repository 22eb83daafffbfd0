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


async def test_deliveries_one_at_a_time_schedule_no_callback_and_a_burst_still_yields() -> None:
    """#14: the inline budget is renewed by a drain, not by a callback each loop iteration: a
    message a turn, delivered at once, schedules nothing (it scheduled the budget's reset, one
    loop callback per message received alone); a burst still hands at most ``CHUNK`` at once and
    leaves the rest to the drains (readers get their turn), after which the budget is whole."""
    got: list[Deliver] = []
    d = _delivery(got, [])
    loop = asyncio.get_running_loop()
    d.loop = loop
    scheduled = [0]
    inner = loop.call_soon

    def counting(cb: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        scheduled[0] += 1
        return inner(cb, *args, context=context)

    vars(loop)["call_soon"] = counting
    try:
        for i in range(100):  # one message an iteration
            d.put(Deliver("t", b"x", P, i, 0))
            await asyncio.sleep(0)
        calls_alone = scheduled[0] - 100  # each sleep(0) schedules its own wake-up
        assert len(got) == 100 and calls_alone == 0, calls_alone
        for i in range(CHUNK + 10):  # a burst in one iteration, the budget already part spent
            d.put(Deliver("t", b"x", P, 100 + i, 0))
        assert len(got) == CHUNK and d.pending == 110
        await asyncio.wait_for(_drained(d), 10)
        assert len(got) == CHUNK + 110
        for i in range(CHUNK):  # renewed by the drain: a whole CHUNK inline again
            d.put(Deliver("t", b"x", P, CHUNK + 110 + i, 0))
        assert d.pending == 0 and len(got) == 2 * CHUNK + 110
    finally:
        vars(loop).pop("call_soon")
