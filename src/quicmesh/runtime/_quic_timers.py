"""The send step and the timers of one qh3 connection (a part of :class:`~._quic_adapter.Proto`).

Theory of operation
-------------------
qh3's ``QuicConnectionProtocol.transmit`` sends what the connection has and then moves its one
asyncio timer to qh3's next deadline (loss detection, probe, idle), cancelling the armed one and
arming a new one whenever that deadline changed: after every datagram sent, since each send moves
the probe deadline later. A cancelled timer stays in the event loop's heap until it comes to the
front, and every push and pop compares the loop's timer handles in Python (#14: ~20 comparisons
per call on each side of a request/reply, a tenth of the calling side's Python calls).

:class:`QuicTimers` keeps the timer instead when it is armed at or before the new deadline: it
fires early, finds qh3's deadline later, and re-arms at it (once per probe period, ~tens of ms,
not per datagram). Armed later than the new deadline, it is moved as before, so qh3 is never
woken late. When it fires at or after the deadline, qh3 runs its timers with the time the
deadline said (as qh3's own handler does when the loop fires a timer a hair early).

The *ACK wait* (``transport.ack_delay``): a datagram received alone earns an ACK, which waits
for a packet to ride on, at most ``ack_delay``. Instead of a timer per datagram (armed, then
cancelled by the reply sent a moment later), the first such datagram schedules one check for
the next loop iteration (:meth:`QuicTimers._wait_for_ack`) when it brought the owner something
(data: its answer is usually sent in that iteration, by a task the same datagram woke, before
the check); only an ACK still owed then arms the timer, at the datagram's arrival plus
``ack_delay``. A datagram that brought nothing (an ACK, a PING) arms the timer at once, as before:
a check would cost the loop a pass of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qh3.quic.connection import QuicConnection

__all__ = ["QuicTimers"]

_EARLY = 1e-6
"""A timer that fires this close before qh3's deadline runs it (the loop fires timers up to its
clock's resolution early)."""


class QuicTimers:
    """The send step, qh3's timer kept while it is early enough, and the ACK wait."""

    # provided by qh3's QuicConnectionProtocol and by Proto
    _quic: QuicConnection
    _loop: asyncio.AbstractEventLoop
    _loop_time: Callable[[], float]
    _timer: asyncio.TimerHandle | None
    _timer_at: float | None
    _transmit_task: asyncio.Handle | None
    _transport: asyncio.DatagramTransport | None
    _sendto_many: Callable[[list[bytes], Any], None] | None
    _gone: bool
    ack_delay: float
    _ack_timer: asyncio.TimerHandle | None
    _ack_owed: float | None
    """When the first datagram whose ACK is still owed arrived (``None``: nothing owed)."""
    _sends = 0
    """Send steps so far: a datagram's receive that answered it at once (a handler started in
    the same step) owes no ACK."""

    if TYPE_CHECKING:  # defined by Proto and qh3's protocol (not here: they come later in the MRO)
        def transmit(self) -> None: ...
        def _process_events(self) -> None: ...
        def _fail(self, exc: BaseException) -> None: ...

    def _send_now(self) -> None:
        """What qh3's ``transmit`` does, with the timer kept while it is early enough."""
        self._transmit_task = None
        self._sends += 1
        quic = self._quic
        now = self._loop_time()
        send_many = self._sendto_many
        if send_many is not None:
            batch: list[bytes] = []
            to: Any = None
            for data, addr in quic.datagrams_to_send(now=now):
                if batch and addr != to:
                    send_many(batch, to)
                    batch = []
                batch.append(data)
                to = addr
            if batch:
                send_many(batch, to)
        else:
            transport = self._transport
            assert transport is not None
            for data, addr in quic.datagrams_to_send(now=now):
                transport.sendto(data, addr)
        at = quic.get_timer()
        timer = self._timer
        if at is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            self._timer_at = None
        elif timer is None or self._timer_at is None or at < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._arm(at)

    def _arm(self, at: float) -> None:
        self._timer = self._loop.call_at(at, self._handle_timer)
        self._timer_at = at

    def _handle_timer(self) -> None:
        if self._gone:
            return
        self._timer = None
        self._timer_at = None
        try:
            at = self._quic.get_timer()
            if at is None:
                return
            now = self._loop.time()
            if now < at - _EARLY:  # armed before qh3's deadline moved later: wait for it
                self._arm(at)
                return
            self._quic.handle_timer(now=max(at, now))
            self._process_events()
            self.transmit()
        except Exception as exc:
            self._fail(exc)

    def _wait_for_ack(self, now: float, evented: bool) -> None:
        """A datagram arrived alone at ``now``: its ACK may be owed (see the module docstring).
        ``evented``: it brought something for the owner (whose answer is on its way)."""
        if self._ack_owed is None:
            self._ack_owed = now
            if self._ack_timer is None:
                if evented:
                    self._loop.call_soon(self._check_ack)
                else:
                    self._ack_timer = self._loop.call_at(now + self.ack_delay, self.transmit)

    def _check_ack(self) -> None:
        owed = self._ack_owed
        if owed is None or self._gone or self._ack_timer is not None:
            return
        self._ack_timer = self._loop.call_at(owed + self.ack_delay, self.transmit)

    def _acked(self) -> None:
        """Called by ``transmit``: whatever ACK was owed leaves with this send."""
        self._ack_owed = None
        timer = self._ack_timer
        if timer is not None:
            self._ack_timer = None
            timer.cancel()
