"""The store worker of the log service: one bounded FIFO queue of store jobs, run in order on one
thread (SQLite) or inline on the loop (memory store), results handed back on the event loop.

Theory of operation
-------------------
A job is ``fn(store)`` plus ``done(result)``. :meth:`StoreWorker.submit` queues it (a bounded
:class:`~quicmesh.bounded.BoundedDeque`, ``logs.store_jobs``, overflow ``REJECT``: a full queue
raises :class:`~quicmesh.errors.ContainerFull`). One asyncio task drains the queue: it takes up to
``JOBS_PER_HOP`` jobs, runs them in order (on the single worker thread when an executor is given,
so the loop never runs SQLite nor waits for a disk flush; otherwise inline), then calls each
``done`` on the loop in the same order, with the job's result or the exception it raised. The
order of ``done`` calls is the order of ``submit`` calls. :meth:`StoreWorker.close` lets the task
run what is queued, then ends it; later submits raise :class:`~quicmesh.errors.NodeClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from ..bounded import BoundedDeque, ContainerRegistry, Overflow
from ..bounded._base import _Bounded
from ..core.store_api import LogKey, Store
from ..errors import NodeClosed
from ..identity import NodeId

__all__ = ["JOBS_PER_HOP", "HeadsMirror", "StoreWorker"]

log = logging.getLogger("quicmesh.logs")

T = TypeVar("T")

JOBS_PER_HOP = 64
"""Jobs run per hand-over to the thread (one loop wake-up for up to this many results)."""


class _Job:
    __slots__ = ("done", "fn")

    def __init__(self, fn: Callable[[Store], object], done: Callable[[object], None]) -> None:
        self.fn = fn
        self.done = done


def _run_jobs(store: Store, jobs: list[_Job]) -> list[object]:
    """Run ``jobs`` in order (on the worker thread, or inline); an exception is a job's result."""
    out: list[object] = []
    for job in jobs:
        try:
            out.append(job.fn(store))
        except Exception as exc:
            out.append(exc)
    return out


class StoreWorker:
    """Runs store jobs in FIFO order; see the module docstring."""

    def __init__(self, capacity: int, *, registry: ContainerRegistry) -> None:
        self._jobs: BoundedDeque[_Job] = BoundedDeque("logs.store_jobs", capacity, Overflow.REJECT, registry=registry)
        self._store: Store | None = None
        self._executor: Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.jobs_run = 0

    @property
    def threaded(self) -> bool:
        """Whether jobs run on a worker thread."""
        return self._executor is not None

    def start(self, store: Store, executor: Executor | None) -> None:
        """Start draining into ``store`` (on ``executor``'s one thread, or inline without)."""
        self._store = store
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._work())

    def submit(self, fn: Callable[[Store], object], done: Callable[[object], None]) -> None:
        """Queue ``fn``; ``done(result)`` follows on the loop. Raises
        :class:`~quicmesh.errors.ContainerFull` when the queue is full."""
        if self._closed or self._wake is None:
            raise NodeClosed("store worker is not running")
        self._jobs.append(_Job(fn, done))
        self._wake.set()

    def read(self, fn: Callable[[Store], T]) -> asyncio.Future[T]:
        """Queue ``fn``; its result (or exception) as a future."""
        assert self._loop is not None or self._closed
        if self._loop is None:
            raise NodeClosed("store worker is not running")
        fut: asyncio.Future[T] = self._loop.create_future()

        def done(result: object) -> None:
            if fut.done():
                return
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)  # type: ignore[arg-type]

        self.submit(fn, done)
        return fut

    async def close(self) -> None:
        """Run what is queued, then stop; idempotent."""
        self._closed = True
        if self._task is not None and self._wake is not None:
            self._wake.set()
            with contextlib.suppress(BaseException):
                await self._task
        self._jobs.close()

    async def _work(self) -> None:
        assert self._wake is not None and self._loop is not None and self._store is not None
        store = self._store
        while True:
            if not self._jobs:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            jobs = [self._jobs.popleft() for _ in range(min(len(self._jobs), JOBS_PER_HOP))]
            self.jobs_run += len(jobs)
            if self._executor is None:
                results = _run_jobs(store, jobs)
            else:
                results = await self._loop.run_in_executor(self._executor, _run_jobs, store, jobs)
            for job, result in zip(jobs, results, strict=True):
                try:
                    job.done(result)
                except Exception:
                    log.exception("handling a store result failed")
            if self._executor is None:
                await asyncio.sleep(0)  # inline: let the loop breathe between hand-overs


class HeadsMirror(_Bounded):
    """The latest stored seq of every ``(author, log)``, kept on the loop so that synchronous
    readers (:meth:`Log.heads <quicmesh.runtime.log_handles.Log.heads>`) never touch the store.

    Loaded once from the store (:meth:`load`), then advanced by every newly stored operation
    (:meth:`advance`). Heads only grow, except when the store evicts whole foreign logs to make
    room for a local append: the service then reloads the mirror (:meth:`replace`). A bounded container (``logs.heads``,
    kind ``heads``): one entry per stored log, capacity ``store.max_logs`` like the store, so it
    never fills; were it full, a new log would be refused (counted) and missing from the mirror.
    """

    kind = "heads"

    def __init__(self, max_logs: int, *, registry: ContainerRegistry) -> None:
        super().__init__(
            "logs.heads", max_logs, Overflow.DROP_NEWEST, capacity_bytes=None, sizeof=None, registry=registry
        )
        self._names: dict[str, dict[NodeId, int]] = {}  # bounded: entries counted and capped in advance()
        self._count = 0

    def _size(self) -> int:
        return self._count

    def _clear(self) -> None:
        self._names.clear()
        self._count = 0

    def load(self, heads: dict[LogKey, int]) -> None:
        """Take the store's heads (all logs)."""
        for (author, name), seq in heads.items():
            self.advance(name, author, seq)

    def replace(self, heads: dict[LogKey, int]) -> None:
        """Forget everything and take ``heads`` (after the store evicted logs)."""
        self._clear()
        self._note_size(0)
        self.load(heads)

    def advance(self, name: str, author: NodeId, seq: int) -> None:
        """``author``'s log ``name`` now holds ``seq``."""
        group = self._names.get(name)
        if group is not None and author in group:
            if seq > group[author]:
                group[author] = seq
            return
        if not self._fits(self._count + 1, 0):
            self._refuse()
            return
        self._names.setdefault(name, {})[author] = seq
        self._count += 1
        self._note_size(self._count)

    def heads(self, name: str) -> dict[NodeId, int]:
        """Latest seq per author of the logs named ``name``."""
        return dict(self._names.get(name) or {})
