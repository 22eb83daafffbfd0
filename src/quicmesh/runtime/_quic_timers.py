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

The *ACK wait* (``transport.ack_delay``): a datagram received alone is not answered at once
(qh3's own receive path sends after every datagram; :meth:`QuicTimers._wait_for_ack`). When the
only thing it may owe is an ACK, the connection's one timer is moved, if need be, to qh3's next
deadline: qh3 holds an ACK back its own 1 ms and writes it into no packet before then (its
``ack_application`` deadline), so the ACK leaves with the first packet sent after that, or alone
when the timer fires; with an ``ack_delay`` longer than that, not before ``ack_delay`` after the
first datagram that owes it. A datagram that owes nothing (an ACK) arms nothing. One that
brought the owner something is looked at in the next loop iteration (its answer is usually sent
in this one, and that send keeps or moves the timer itself); one that brought nothing, at once.
Before (#14), each lone datagram armed a send of its own at ``ack_delay`` (0.5 ms): it came
before qh3's ACK was due, sent nothing, and cost an idle loop a wake-up (two per round trip of a
sparse request, measured in one process: 1.93 empty sends per round trip of pub/sub 5 ms
apart). That send is kept where more than an ACK waits (stream data queued in qh3, which the ACK
just received may let go, or a retransmission after a loss it revealed).
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
    """A send of its own, timed: when more than an ACK waits to be sent."""
    _ack_owed: float | None
    """When the first datagram whose ACK may still be owed arrived (``None``: none since the last send)."""
    _losses = 0
    """qh3's count of lost packets when last seen: one more means retransmissions wait."""
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
        """A datagram arrived alone at ``now`` and nothing was sent since (see the module
        docstring). ``evented``: it brought the owner something (whose answer is usually sent in
        this iteration: looked at in the next one)."""
        if self._ack_owed is None:
            self._ack_owed = now
            if self._ack_timer is None:
                if evented:
                    self._loop.call_soon(self._check_ack)
                else:
                    self._time_ack(now)

    def _check_ack(self) -> None:
        owed = self._ack_owed
        if owed is None or self._gone or self._ack_timer is not None:
            return
        self._time_ack(owed)

    def _time_ack(self, owed: float) -> None:
        """Nothing was sent since the datagram that arrived at ``owed``: time what it owes."""
        quic = self._quic
        core = quic._core
        if core is None:
            return
        losses = core.loss_total
        if losses != self._losses or quic.get_send_buffer_size():
            # more than an ACK to send (data the ACK let go, a retransmission): a send of its own
            self._losses = losses
            self._ack_timer = self._loop.call_at(owed + self.ack_delay, self.transmit)
            return
        due = core.get_timer()
        if due is None:
            self._ack_owed = None
            return
        kind, at = due
        if kind == "ack_application":
            at = max(at, owed + self.ack_delay)
        else:
            self._ack_owed = None  # nothing owed: the next lone datagram is looked at again
        armed = self._timer_at
        if armed is None or at < armed:
            timer = self._timer
            if timer is not None:
                timer.cancel()
            self._arm(at)

    def _acked(self) -> None:
        """Called by ``transmit``: an ACK owed leaves with this send or is timed by it."""
        self._ack_owed = None
        timer = self._ack_timer
        if timer is not None:
            self._ack_timer = None
            timer.cancel()
