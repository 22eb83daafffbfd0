"""Running the node's procedure handlers (:class:`HandlerRunner`, a part of
:class:`~quicmesh.runtime.driver.NodeDriver`).

An ``Invoke`` output of the core starts the handler as a task (tracked in ``_running``, at most
``rpc.max_concurrent_handlers``, cancelled with its peer's connection); its result or error goes
back to the core (``handler_done``) and the reply is written at once when no other handler is
running (nothing else will reply in this loop iteration), else with the others at the end of it.
On Python 3.12+ the task starts eagerly, in the step that hands the request on (#14): a handler
that does not wait replies there, without a task step or a loop pass of its own, and is never
tracked; its reply waits in the connection's write-through scope of the received chunk
(``quic_send.SendPath._reply_scope``), so a chunk's replies leave together when it is done.

Each handler may run for the timeout its request carries. One timer watches them all (#14): the
tasks' deadlines wait in a heap (entries of finished tasks are skipped, and pruned once they
outnumber the running ones), and the timer, armed at the earliest, cancels the tasks past theirs
and reports them as ``timeout``. A timer per call (``asyncio.timeout``) cost ~4.6 µs of the ~24
µs a provider spends per call with 64 in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
from collections.abc import Awaitable, Callable, Iterable

from ..bounded import BoundedDict
from ..core.node import NodeCore
from ..core.rpc import Invoke
from ..errors import RemoteError
from ..identity import NodeId
from .transport import Transport

__all__ = ["Handler", "HandlerRunner"]

Handler = Callable[[bytes], Awaitable[bytes]]
"""A procedure: ``async def handler(payload: bytes) -> bytes``."""


class HandlerRunner:
    """Starts handler tasks for ``Invoke`` outputs and reports their outcome to the core."""

    core: NodeCore
    transport: Transport
    _loop: asyncio.AbstractEventLoop | None
    _handlers: dict[str, Handler]
    _running: BoundedDict[tuple[NodeId, int], asyncio.Task[None]]
    _expiry: list[tuple[float, int, tuple[NodeId, int], asyncio.Task[None]]]
    _expiry_timer: asyncio.TimerHandle | None
    _expiry_at: float
    _timed_out: set[asyncio.Task[None]]
    _expiry_seq: int
    _eager = 0
    """Handlers running their first step inside :meth:`_invoke` (Python 3.12+)."""

    def _init_handler_runner(self) -> None:
        """Set up the deadline watch (called once by the driver's constructor)."""
        self._expiry = []  # bounded: pruned to the running handlers past 2 x their count + 64
        self._expiry_timer = None
        self._expiry_at = 0.0  # the timer's deadline (#14: read per handler, without a call)
        self._timed_out = set()  # bounded: running handler tasks only (left when they end)
        self._expiry_seq = 0

    def _stop_handler_runner(self) -> None:
        """Drop the deadline watch (the node is stopping; its handler tasks are cancelled)."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        self._expiry_timer = None
        self._expiry.clear()
        self._timed_out.clear()

    def _run(self, effects: Iterable[object]) -> None:
        raise NotImplementedError

    def _now(self) -> float:
        raise NotImplementedError

    def _invoke(self, eff: Invoke) -> None:
        handler = self._handlers.get(eff.name)
        key = (eff.peer, eff.call_id)
        if handler is None:  # withdrawn while the request was on its way
            refusal = RemoteError("no_handler", eff.name, retryable=True)
            self._run(self.core.handler_done(eff.peer, eff.call_id, None, refusal, self._now()))
            return
        loop = self._loop
        assert loop is not None  # the driver started: messages arrive
        if sys.version_info >= (3, 12):
            # started at once, in this step, as a task (its own current task, so asyncio.timeout
            # and cancellation work in it): a handler that does not wait replies without a loop
            # iteration of its own; one that waits goes on as a task from there
            self._eager += 1  # a count: a handler's first step may hand on a request of its own
            try:
                task = asyncio.Task(self._run_handler(handler, eff), loop=loop, eager_start=True)
            finally:
                self._eager -= 1
            if task.done():
                return  # replied (or refused) already
        else:
            # a Task of this loop, as on 3.12 (not ensure_future: on Python 3.11 that looks the
            # loop up, a getpid() system call per call; not the loop's create_task, two more
            # Python calls per call, #14)
            task = asyncio.Task(self._run_handler(handler, eff), loop=loop)
        # no done callback: it cost every call a loop iteration of its own. The task leaves
        # the table in _run_handler, or where it is cancelled (_cancel_handler).
        self._running[key] = task
        self._watch(loop.time() + eff.timeout, key, task)

    def _cancel_handler(self, key: tuple[NodeId, int]) -> None:
        """Cancel a running handler (its caller's connection went): it replies nothing."""
        task = self._running.pop(key, None)
        if task is not None:
            self._timed_out.discard(task)
            task.cancel()

    def _watch(self, deadline: float, key: tuple[NodeId, int], task: asyncio.Task[None]) -> None:
        self._expiry_seq += 1
        heap = self._expiry
        heapq.heappush(heap, (deadline, self._expiry_seq, key, task))
        if len(heap) > 2 * len(self._running) + 64:  # mostly finished handlers: keep the running
            running = self._running
            heap[:] = [e for e in heap if running.get(e[2]) is e[3]]
            heapq.heapify(heap)
        if self._expiry_timer is None or deadline < self._expiry_at:
            self._arm_expiry(deadline, task.get_loop())

    def _arm_expiry(self, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        self._expiry_timer = loop.call_at(deadline, self._expire, loop)
        self._expiry_at = deadline

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the handlers past their deadline (reported as ``timeout``); re-arm."""
        self._expiry_timer = None
        now = loop.time() + 0.001  # the loop may run a timer up to its clock's resolution early
        heap, running = self._expiry, self._running
        while heap and (heap[0][0] <= now or running.get(heap[0][2]) is not heap[0][3]):
            _, _, key, task = heapq.heappop(heap)
            if running.get(key) is task and not task.done():
                self._timed_out.add(task)
                task.cancel()
        if heap:
            self._arm_expiry(heap[0][0], loop)

    async def _run_handler(self, handler: Handler, eff: Invoke) -> None:
        result: bytes | None = None
        error: RemoteError | None = None
        try:
            out = await handler(eff.payload)
            if not isinstance(out, bytes | bytearray | memoryview):
                error = RemoteError("bad_result", f"handler returned {type(out).__name__}, not bytes")
            else:
                result = bytes(out)
        except RemoteError as exc:
            error = exc
        except TimeoutError:
            error = RemoteError("timeout", f"handler exceeded {eff.timeout:.3f}s")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task not in self._timed_out:  # its peer left, or the node stops
                self._cancelled(eff)
                raise
            self._timed_out.discard(task)
            if task.uncancel():  # cancelled for another reason too
                self._cancelled(eff)
                raise
            error = RemoteError("timeout", f"handler exceeded {eff.timeout:.3f}s")
        except Exception as exc:
            error = RemoteError("handler_error", f"{type(exc).__name__}: {exc}"[:1000])
        # the task leaves the table before the core frees its slot (a new request may take it at once)
        self._running.pop((eff.peer, eff.call_id), None)
        if self._timed_out:  # it may have caught the watch's cancellation and finished anyway
            self._timed_out.discard(asyncio.current_task())
        effects = self.core.handler_done(eff.peer, eff.call_id, result, error, self._now())
        if self._running or self._eager:  # others reply in this iteration (a received batch of
            self._run(effects)  # requests answered as it is read, too): written with them at its end
        else:  # no other handler will reply in this iteration: write the reply now
            self._run_now(effects)

    def _cancelled(self, eff: Invoke) -> None:
        self._running.pop((eff.peer, eff.call_id), None)
        self.core.handler_done(eff.peer, eff.call_id, None, None, self._now())

    def _run_now(self, effects: Iterable[object]) -> None:
        """Run ``effects`` and write what they sent when they are done, instead of at the next
        loop iteration (#14: nothing else is coming; no end-of-iteration flush is scheduled for
        them, which would cost the loop one more pass)."""
        through = self.transport.through
        through.begin()
        try:
            self._run(effects)
        finally:
            through.end()
