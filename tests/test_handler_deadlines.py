"""#14: one timer watches every running handler's deadline (no ``asyncio.timeout`` per call).

A handler may run for the timeout its request carries; past it, the provider cancels it and
replies ``timeout``. The deadlines wait in a heap whose finished entries are skipped and pruned,
and one timer is armed at the earliest: a short deadline behind a long one is still kept, a
handler cancelled because its caller's connection went is not reported as a timeout, and the heap
stays bounded by the running handlers however many calls pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from quicmesh.config import NodeConfig
from quicmesh.errors import CallTimeout, RemoteError
from quicmesh.identity import NodeId
from quicmesh.runtime.memory import MemoryNetwork
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    net = MemoryNetwork()
    a = await Node.start(NodeConfig(realm="t"), network=net)
    b = await Node.start(NodeConfig(realm="t", bootstrap=(a.address,)), network=net)
    await eventually(lambda: bool(a.peers() and b.peers()), interval=0)
    yield a, b
    await b.stop()
    await a.stop()


def _record_outcomes(node: Node) -> list[tuple[int, bytes | None, Any]]:
    """What the node's handlers reported to its core: (call id, result, error) per handler."""
    seen: list[tuple[int, bytes | None, Any]] = []
    inner = node.core.handler_done

    def recording(peer: NodeId, call_id: int, result: bytes | None, error: Any, now: float) -> list[object]:
        seen.append((call_id, result, error))
        return inner(peer, call_id, result, error, now)

    vars(node.core)["handler_done"] = recording
    return seen


async def _stuck_call(a: Node, b: Node) -> asyncio.Future[bytes]:
    """``b`` calls a handler of ``a`` that never ends; returns once the handler runs."""
    started = asyncio.Event()

    async def stuck(payload: bytes) -> bytes:
        started.set()
        await asyncio.Event().wait()
        return b""

    await a.advertise("stuck", stuck)
    await b.wait_for_provider("stuck", timeout=5)
    call = asyncio.ensure_future(b.call("stuck", b"", timeout=30))
    await asyncio.wait_for(started.wait(), 5)
    return call


async def test_a_handler_past_its_timeout_is_cancelled_and_reported_as_timeout(pair: tuple[Node, Node]) -> None:
    a, b = pair
    outcomes = _record_outcomes(a)
    loop = asyncio.get_running_loop()
    ran: list[float] = []
    never = asyncio.Event()

    async def stuck(payload: bytes) -> bytes:
        start = loop.time()
        try:
            await never.wait()
        finally:
            ran.append(loop.time() - start)
        return b"late"

    await a.advertise("stuck", stuck)
    await b.wait_for_provider("stuck", timeout=5)
    with pytest.raises(CallTimeout):
        await b.call("stuck", b"", timeout=0.3)
    await eventually(lambda: bool(outcomes), timeout=5, what="the provider's handler ended")
    (_, result, error), = outcomes
    assert result is None and isinstance(error, RemoteError) and error.code == "timeout", outcomes
    # cut at its request's 0.3 s (less the way there), not before, and not much after
    assert len(ran) == 1 and 0.25 <= ran[0] < 2.0, ran
    assert not a._running and a.core.rpc.running == 0
    assert not a._timed_out


async def test_a_short_deadline_behind_a_long_one_is_kept(pair: tuple[Node, Node]) -> None:
    a, b = pair
    outcomes = _record_outcomes(a)
    release = asyncio.Event()

    async def waits(payload: bytes) -> bytes:
        await release.wait()
        return payload

    await a.advertise("waits", waits)
    await b.wait_for_provider("waits", timeout=5)
    long_call = asyncio.ensure_future(b.call("waits", b"long", timeout=30))
    await eventually(lambda: len(a._running) == 1, timeout=5, what="the long call running")
    with pytest.raises(CallTimeout):
        await b.call("waits", b"short", timeout=0.3)
    await eventually(lambda: len(outcomes) == 1, timeout=5, what="the short call's handler cut")
    assert outcomes[0][2] is not None and outcomes[0][2].code == "timeout"
    assert len(a._running) == 1  # the long one runs on
    release.set()
    assert await long_call == b"long"
    assert outcomes[1][1] == b"long" and outcomes[1][2] is None


async def test_a_handler_cancelled_with_its_callers_connection_is_no_timeout(pair: tuple[Node, Node]) -> None:
    a, b = pair
    outcomes = _record_outcomes(a)
    call = await _stuck_call(a, b)
    await b.stop()  # the caller goes: its handler is cancelled, with nothing to reply
    await eventually(lambda: not a._running, timeout=5, what="the handler cancelled")
    assert outcomes == [(outcomes[0][0], None, None)], outcomes
    assert not a._timed_out
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)


async def test_the_deadline_heap_stays_bounded_by_the_running_handlers(pair: tuple[Node, Node]) -> None:
    a, b = pair
    sizes: list[int] = []

    async def echo(payload: bytes) -> bytes:
        sizes.append(len(a._expiry))
        await asyncio.sleep(0)
        return payload

    await a.advertise("echo", echo)
    await b.wait_for_provider("echo", timeout=5)
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> bytes:
        async with sem:
            return await b.call("echo", b"%d" % i, timeout=30)

    replies = await asyncio.gather(*(one(i) for i in range(3000)))
    assert replies == [b"%d" % i for i in range(3000)]
    # entries of finished handlers are pruned once they outnumber the running ones (<= 64 here)
    assert len(sizes) == 3000 and max(sizes) <= 2 * 64 + 64 + 1, max(sizes)


async def test_a_handler_cancelled_for_another_reason_as_well_is_no_timeout(pair: tuple[Node, Node]) -> None:
    """The watch and the caller's departure cancel the same task in one iteration: it is the
    departure (nothing to reply), not a timeout."""
    a, b = pair
    outcomes = _record_outcomes(a)
    call = await _stuck_call(a, b)
    (task,) = a._running.values()
    a._timed_out.add(task)  # as the watch does at the deadline
    task.cancel()
    task.cancel()  # as the driver does when the caller's connection goes
    await eventually(lambda: bool(outcomes), timeout=5, what="the handler ended")
    assert outcomes == [(outcomes[0][0], None, None)], outcomes
    assert not a._timed_out and not a._running
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
