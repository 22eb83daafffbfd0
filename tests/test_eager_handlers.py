"""Procedure handlers start in the step that hands their request on (#14, Python 3.12+: eager
tasks): a handler that does not wait replies without a task step or a loop pass of its own, the
replies to a received chunk of requests leave together when the chunk is done, and nothing of a
handler that finished in its first step stays in the runner's tables. On Python 3.11 handlers
start as tasks in the next iteration, as before; the same calls answer the same way."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from nodekit import node_pair, only_connection

EAGER = sys.version_info >= (3, 12)


async def test_handlers_answer_whether_they_finish_at_once_wait_time_out_or_fail() -> None:
    a, b = await node_pair("eager", {})
    try:
        seen: list[bool] = []

        async def at_once(payload: bytes) -> bytes:
            return payload

        async def timed(payload: bytes) -> bytes:
            seen.append(asyncio.current_task() is not None)
            async with asyncio.timeout(5):  # needs a current task, in its first step too
                await asyncio.sleep(0)
            return payload + b"!"

        async def failing(payload: bytes) -> bytes:
            raise ValueError("no")

        for name, handler in (("e.now", at_once), ("e.timed", timed), ("e.fail", failing)):
            await b.advertise(name, handler)
            await a.wait_for_provider(name, timeout=10)
        watched: list[object] = []
        watch = b._watch

        def counted(*args: Any) -> None:
            watched.append(args[1])
            watch(*args)

        vars(b)["_watch"] = counted
        for i in range(20):
            assert await a.call("e.now", b"%d" % i, timeout=10) == b"%d" % i
        # a handler that finished in its first step was never a running task to watch (3.12+)
        tasks = len(watched)
        assert tasks == (0 if EAGER else 20), tasks
        assert await a.call("e.timed", b"t", timeout=10) == b"t!"
        assert seen == [True]
        try:
            await a.call("e.fail", b"x", timeout=10)
        except Exception as exc:
            assert "ValueError: no" in str(exc), exc
        else:
            raise AssertionError("the failing handler's error should reach the caller")
        assert not b._running and not b._timed_out
        print(f"\nPython {sys.version_info[0]}.{sys.version_info[1]}: 20 immediate calls, "
              f"{tasks} handler tasks watched")
    finally:
        await b.stop()
        await a.stop()


async def test_the_replies_to_a_chunk_of_requests_leave_together() -> None:
    a, b = await node_pair("eager", {})
    try:
        async def echo(payload: bytes) -> bytes:
            return payload

        await b.advertise("e.echo", echo)
        await a.wait_for_provider("e.echo", timeout=10)
        assert await a.call("e.echo", b"warm", timeout=10) == b"warm"
        conn = only_connection(b)
        writes: list[int] = []
        write = conn._write_now

        def counted(data: bytes) -> None:
            writes.append(len(data))
            write(data)

        vars(conn)["_write_now"] = counted
        replies = await asyncio.gather(*(a.call("e.echo", b"%d" % i, timeout=10) for i in range(64)))
        assert replies == [b"%d" % i for i in range(64)]
        # 64 requests reach the provider in a few chunks; each chunk's replies are one write
        assert 1 <= len(writes) <= 8, writes
        assert not b._running
        print(f"\n64 calls at once: the provider wrote its replies in {len(writes)} writes")
    finally:
        await b.stop()
        await a.stop()
