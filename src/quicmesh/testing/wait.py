"""Waiting on a condition in tests: one bounded poll that fails with a useful message.

Tests of an asynchronous system must wait for a state ("both nodes see each other", "the heads
converged"), never for a fixed time. :func:`eventually` is the single way to do that here:

* ``check`` is a zero-argument callable, plain or returning an awaitable (a request to a node
  process, for instance). It is called, its result awaited when it is awaitable, and the result
  tested with ``until`` (truthiness by default). The first accepted result is returned.
* Between polls the task sleeps ``interval`` seconds; ``interval=0`` yields one event-loop turn,
  for in-memory scenarios that progress with every turn of the loop.
* After ``timeout`` seconds (on the running loop's clock) it raises :class:`WaitTimeout`, an
  ``AssertionError`` whose message names what was awaited (``what``, or the source line of
  ``check``), how long and how many polls it took, the last value seen and, when ``detail`` is
  given, a description of the state at the time of failure. An awaitable ``check`` that is still
  pending at the deadline is cancelled; an exception raised by ``check`` propagates unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import linecache
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["WaitTimeout", "describe", "eventually"]

T = TypeVar("T")

_NOTHING = object()


class WaitTimeout(AssertionError):
    """:func:`eventually` gave up: the awaited condition did not hold within its timeout."""

    def __init__(self, what: str, timeout: float, polls: int, last: object, detail: object = _NOTHING) -> None:
        self.what = what
        self.timeout = timeout
        self.polls = polls
        self.last = last
        seen = "no value (the first poll did not finish)" if last is _NOTHING else repr(last)
        message = f"not true after {timeout:g} s ({polls} polls): {what}; last value: {seen}"
        if detail is not _NOTHING:
            message += f"; detail: {detail!r}"
        super().__init__(message)


def describe(check: Callable[..., object]) -> str:
    """A human name for ``check``: the source line a lambda or local function was written on."""
    code = getattr(check, "__code__", None)
    if code is None:
        return repr(check)
    line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
    where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    return f"{line} ({where})" if line else f"{getattr(check, '__qualname__', check)!r} ({where})"


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], object] = ...,
    timeout: float = ...,
    interval: float = ...,
    what: str | None = ...,
    detail: Callable[[], object] | None = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    until: Callable[[T], object] = ...,
    timeout: float = ...,
    interval: float = ...,
    what: str | None = ...,
    detail: Callable[[], object] | None = ...,
) -> T: ...


async def eventually(
    check: Callable[[], object],
    *,
    until: Callable[[Any], object] = bool,
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str | None = None,
    detail: Callable[[], object] | None = None,
) -> object:
    """Poll ``check()`` until ``until(result)`` holds and return that result.

    ``check`` may return a value or an awaitable of one. Raises :class:`WaitTimeout` (an
    ``AssertionError``) after ``timeout`` seconds, naming ``what`` was awaited (by default the
    source line of ``check``), the last value and ``detail()`` when given.
    """
    if timeout < 0 or interval < 0:
        raise ValueError("timeout and interval must be >= 0")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    polls = 0
    last: object = _NOTHING

    def failure() -> WaitTimeout:
        return WaitTimeout(what or describe(check), timeout, polls, last,
                           _NOTHING if detail is None else detail())

    while True:
        polls += 1
        value = check()
        if inspect.isawaitable(value):
            try:
                async with asyncio.timeout_at(deadline) as scope:
                    value = await value
            except TimeoutError:
                if scope.expired():
                    raise failure() from None
                raise  # the check's own timeout: not ours to reinterpret
        if until(value):
            return value
        last = value
        now = loop.time()
        if now >= deadline:
            raise failure()
        await asyncio.sleep(min(interval, deadline - now))
