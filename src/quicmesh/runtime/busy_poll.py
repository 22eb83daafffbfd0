"""Busy polling (#14, config ``busy_poll_us``, ``quicmesh node --busy-poll-us``): the event loop
stays awake for a short window after the node transmits, so the answer it expects is read the
moment it arrives instead of after a wake-up.

Theory of operation. Between two datagrams an idle node sleeps in the kernel (``epoll_wait``,
libuv's poll under uvloop). Waking costs more than the wait's return: the scheduler, the CPU's
idle exit (on a virtual machine whose idle vCPU halts, an exit to the hypervisor and an
interrupt to bring it back) and caches gone cold meanwhile. Two processes answering each other
one message at a time pay it at every hop: on the 2-core VM this project is measured on (no
guest halt polling), a call between two node processes took ~290 µs at the median asleep and
~120 µs awake (``bench/busy_poll.py``; ``bench/peers.py``'s ``quicmesh-busy`` column; the README's
"Latency: busy polling").

A :class:`BusyPoll` is kicked by every transmit of the node's connections (``quic_send``). A
kick opens a window of ``window`` seconds, or extends the open one to that long from now; while
it is open, :meth:`_spin` re-schedules itself with ``call_soon``, so the loop has a ready
callback and polls its selector with a zero timeout instead of sleeping (the public asyncio
contract: the same on asyncio's loop and on uvloop). Timers, I/O and every other callback run as
before, between two passes. The window closes at the first pass after ``window`` seconds
without a transmit, and nothing runs again until the next kick: an idle node sleeps as before.

The cost is CPU: up to ``window`` of a core after each transmit, a whole core while transmits
come closer together than that (while a reply is awaited, instead of sleeping). So it is off
by default: a node on a battery or on a shared host should not spin; one that serves latency
(request/reply between processes of one host or one data centre) trades CPU for it, as Linux's
``SO_BUSY_POLL`` and the idle strategies of low-latency messaging do. ``windows`` and
``seconds`` (the time spent polling) are in the node's metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..config.schema import MAX_BUSY_POLL_US

__all__ = ["MAX_BUSY_POLL_US", "BusyPoll"]


class BusyPoll:
    """Keeps ``loop`` polling for ``window`` seconds after each :meth:`kick` (see the module
    docstring). Not thread-safe: kicked and run on the loop's thread."""

    __slots__ = (
        "_clock",
        "_closed",
        "_kicked",
        "_loop",
        "_since",
        "_spent",
        "_spinning",
        "_until",
        "passes",
        "window",
        "windows",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` times the windows: ``time.monotonic`` (not ``loop.time()``: uvloop's counts
        whole milliseconds); a test passes one it advances itself."""
        if not 0 < window <= MAX_BUSY_POLL_US / 1e6:
            raise ValueError(f"window must be in (0, {MAX_BUSY_POLL_US / 1e6}] seconds, got {window!r}")
        self.window = window
        self._loop = loop
        self._clock = clock
        self._until = 0.0
        self._kicked = False
        self._spinning = False
        self._since = 0.0
        self._closed = False
        self.windows = 0
        """Windows opened (a kick while none was open)."""
        self.passes = 0
        """Loop passes made awake for a window (each one zero-timeout poll)."""
        self._spent = 0.0

    @property
    def seconds(self) -> float:
        """Seconds spent polling, the open window's so far included: at most the CPU it cost."""
        return self._spent + (self._clock() - self._since if self._spinning else 0.0)

    @property
    def spinning(self) -> bool:
        """Whether a window is open."""
        return self._spinning

    def kick(self) -> None:
        """Something was transmitted: poll for ``window`` from the next pass on."""
        self._kicked = True
        if not self._spinning and not self._closed:
            self._spinning = True
            self.windows += 1
            self._since = self._clock()
            self._loop.call_soon(self._spin)

    def close(self) -> None:
        """Stop: the open window closes at its next pass, and kicks open none."""
        self._closed = True

    def _spin(self) -> None:
        now = self._clock()
        if self._kicked:
            self._kicked = False
            self._until = now + self.window
        if now < self._until and not self._closed:
            self.passes += 1
            self._loop.call_soon(self._spin)
            return
        self._spinning = False
        self._spent += now - self._since
