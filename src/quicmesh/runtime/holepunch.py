"""#13 hole punching in the runtime: carries out the core's punch dials and reports them, and
gives the node its ``punch`` method and its ``holepunch_*`` numbers (see
:mod:`quicmesh.core.punch` for the protocol).

A :class:`~quicmesh.core.punch.PunchDial` dials every address of the peer's signed record at
once through the transport, that is from the node's one listening socket: the packets leave from
the port whose NAT mapping the peers observed, so they open this side's NAT towards the other's
mapping while the other side does the same. The first dial that authenticates the expected peer
wins (the others are cancelled); QUIC's duplicate rule (:func:`~quicmesh.core.handshake.
duplicate_survivor`) keeps one connection when both sides' dials complete. That connection is
then *the* connection of the peer (``Transport.get``), so traffic moves to it.

Relayed paths (the relay branch of #13) give connections a ``path`` attribute (``"direct"`` or
``"relayed:<relay>"``); a connection without it is direct. A punch towards a peer reached only
through a relay counts as done only once a direct connection exists: :meth:`HolePunch.is_direct`
is the one place that reads the attribute, and :meth:`HolePunch.on_direct` the one hook to run
when a direct path replaced another (closing or keeping the relayed one is the relay's decision).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..bounded import BoundedDict
from ..core.punch import PunchDial, PunchDone
from ..errors import QuicmeshError
from ..identity import NodeId
from .driver import NodeDriver
from .transport import Connection

__all__ = ["PUNCH_COMMANDS", "HolePunch", "PunchResult", "punch_command"]

log = logging.getLogger("quicmesh.holepunch")


@dataclass(frozen=True, slots=True)
class PunchResult:
    """The outcome of :meth:`quicmesh.Node.punch`: ``ok`` when a direct connection to the peer
    is up; ``reason`` (``direct``, ``already_direct`` or the last failure's code: ``timeout``,
    ``dial_failed``, ``dial_timeout``, ``no_common_node``, ``refused_<why>``, ``busy``,
    ``disabled``); ``elapsed`` seconds since the punch started; ``attempts`` made; ``remote``:
    the direct connection's remote address when it was up (``None`` if not known)."""

    ok: bool
    reason: str
    elapsed: float
    attempts: int
    remote: str | None = None


class HolePunch:
    """The runtime side of hole punching for one :class:`~quicmesh.runtime.node.Node`."""

    def __init__(self, node: NodeDriver) -> None:
        self.node = node
        self.config = node.config.punch
        self._waiters: BoundedDict[NodeId, tuple[asyncio.Future[PunchResult], list[int]]] = BoundedDict(
            "punch.waiters", self.config.max_active, registry=node.registry
        )
        """Peer -> the future of a ``punch`` call waiting for it and its attempt count."""
        self.dials_started = 0
        self.trace: deque[tuple[float, str]] = deque(maxlen=_TRACE)
        """The last punch steps, (wall clock, what), for ``/health`` (a timeline for operators)."""
        self.dials_in_flight = 0

    # -- public ----------------------------------------------------------------------------------

    @staticmethod
    def is_direct(conn: Connection | None) -> bool:
        """Whether ``conn`` is a live direct connection (not a relayed one, see the module doc)."""
        return conn is not None and not conn.closed and str(getattr(conn, "path", "direct")) == "direct"

    async def punch(self, peer: NodeId, via: NodeId | None = None, timeout: float | None = None) -> PunchResult:
        """Punch a direct path to ``peer`` through ``via`` (or connected nodes in turn); returns
        when a direct connection is up or every attempt failed (or after ``timeout`` seconds)."""
        node = self.node
        conn = node.transport.get(peer)
        if conn is not None and self.is_direct(conn):
            return PunchResult(True, "already_direct", 0.0, 0, conn.remote_address)
        c = self.config
        if timeout is None:
            per = c.via_candidates * c.exchange_timeout + c.dial_timeout + c.exchange_timeout
            timeout = c.attempts * per + sum(min(c.backoff * 2 ** i, c.backoff_max) * (1 + c.jitter)
                                             for i in range(c.attempts))
        held = self._waiters.get(peer)
        if held is None:
            if len(self._waiters) >= self._waiters.capacity:
                return PunchResult(False, "busy", 0.0, 0)
            fut: asyncio.Future[PunchResult] = asyncio.get_running_loop().create_future()
            self._waiters[peer] = (fut, [0])
            node._run(node.core.punch(peer, node._now(), via))
            node._rearm()
        else:
            fut = held[0]
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return PunchResult(False, "timeout", timeout, self._attempts(peer))

    def relayed(self, peer: NodeId, relay: NodeId) -> None:
        """Hook for relayed connections (#13 relays): a connection to ``peer`` through ``relay``
        is up; with ``punch.auto`` a punch through that relay starts in the background (the
        relayed connection stays until a direct one replaces it)."""
        c = self.config
        core = self.node.core
        if c.enabled and c.auto and not core.puncher.active(peer) and not core.puncher.cooling(peer):
            self.node._spawn(self.punch(peer, relay))

    def on_direct(self, peer: NodeId, conn: Connection) -> None:
        """A punched direct connection to ``peer`` is up and is the peer's connection now (the
        hook where a relayed path to ``peer`` is closed or kept as fallback)."""
        self._note(f"direct to {peer.short()} at {conn.remote_address} ({'out' if conn.outbound else 'in'}bound)")
        log.info("direct path to %s (punched)", peer.short())

    # -- the core's outputs ----------------------------------------------------------------------

    def execute(self, eff: object) -> None:
        """Carry out a punch output of the core (the driver's hook for outputs it does not know)."""
        if isinstance(eff, PunchDial | PunchDone):
            self._note(f"{type(eff).__name__} {eff}")
        if isinstance(eff, PunchDial):
            self.dials_started += 1
            self.dials_in_flight += 1
            self.node._spawn(self._dial(eff))
        elif isinstance(eff, PunchDone):
            held = self._waiters.get(eff.peer)
            if held is not None:
                held[1][0] += 1
                if eff.ok or eff.final:
                    del self._waiters[eff.peer]
                    if not held[0].done():
                        # the address now: by the time the waiter runs, the mesh may have closed
                        # this connection as a duplicate of one the peer's punch opened
                        conn = self.node.transport.get(eff.peer) if eff.ok else None
                        held[0].set_result(PunchResult(eff.ok, eff.reason, eff.elapsed, held[1][0],
                                                       conn.remote_address if conn is not None else None))
            log.log(logging.INFO if eff.ok else logging.DEBUG, "punch to %s: %s after %.3f s%s",
                    eff.peer.short(), eff.reason, eff.elapsed, " (final)" if eff.final else "")

    async def _dial(self, eff: PunchDial) -> None:
        node = self.node
        conn: Connection | None = None
        reason = "dial_failed"
        # First wave: dialled without an expected id, so that a dial to the same address already
        # pending (the mesh's, started before the NATs were open, its first packets retransmitted
        # on QUIC's backoff) is not shared: the punch sends its own first packets now. Second
        # wave, _REDIAL seconds later if nothing connected: fresh first packets again (by then
        # both NATs are open even if this side's first packets met the other NAT too early),
        # rather than waiting ~1 s for QUIC's retransmission. The id is checked below, and a
        # connection to anyone else closed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + eff.timeout
        second = loop.time() + min(_REDIAL, eff.timeout / 2)
        pending: set[asyncio.Future[Connection]] = {asyncio.ensure_future(node.transport.dial(a, None))
                                                    for a in eff.addresses}
        tasks = set(pending)
        redialed = False
        try:
            while pending and conn is None:
                left = (deadline if redialed else second) - loop.time()
                done, pending = await asyncio.wait(pending, timeout=max(left, 0.0), return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    try:
                        c = fut.result()
                    except (QuicmeshError, OSError) as exc:
                        log.debug("punch dial to %s failed: %s", eff.peer.short(), exc)
                        self._note(f"dial failed: {exc}")
                        continue
                    self._note(f"dialled {c.remote_address} ({c.peer_id.short()})")
                    if c.peer_id == eff.peer and self.is_direct(c):
                        conn = c
                        break
                    if c.peer_id != eff.peer:
                        log.info("punch dial for %s reached %s: closed", eff.peer.short(), c.peer_id.short())
                        node._spawn(c.close("normal", "not the punched peer"))
                if conn is not None or self.is_direct(node.transport.get(eff.peer)):
                    break
                if not redialed and loop.time() >= second:
                    redialed = True
                    wave = {asyncio.ensure_future(node.transport.dial(a, eff.peer)) for a in eff.addresses}
                    pending |= wave
                    tasks |= wave
                elif redialed and loop.time() >= deadline:
                    reason = "dial_timeout"
                    break
        finally:
            self.dials_in_flight -= 1
            for t in tasks:
                if not t.done():
                    t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
        if node._stopped:
            return
        if conn is None:  # the other side's dial may have won meanwhile
            existing = node.transport.get(eff.peer)
            conn = existing if self.is_direct(existing) else None
        now = node._now()
        if conn is not None:
            node._run(node.core.peer_connected(conn.peer_id, (conn.remote_address,), conn.outbound, now))
            self.on_direct(eff.peer, conn)
        node._run(node.core.punch_dial_done(eff.peer, eff.nonce, conn is not None, now, reason))
        node._rearm()

    def _note(self, what: str) -> None:
        self.trace.append((time.time(), what[:300]))

    def _attempts(self, peer: NodeId) -> int:
        held = self._waiters.get(peer)
        return held[1][0] if held is not None else 0

    # -- numbers ---------------------------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        """``holepunch_*`` numbers for ``/metrics`` (counters end in ``_total``)."""
        p = self.node.core.puncher
        c = p.counters
        out: dict[str, float] = {
            "holepunch_started_total": float(c["started"]),
            "holepunch_attempts_total": float(c["attempts"]),
            "holepunch_successes_total": float(c["successes"]),
            "holepunch_failures_total": float(c["failures"]),
            "holepunch_answered_total": float(c["answered"]),
            "holepunch_forwarded_total": float(c["forwarded"]),
            "holepunch_forward_refused_total": float(c["forward_refused"]),
            "holepunch_refused_total": float(c["refused"]),
            "holepunch_dials_total": float(self.dials_started),
            "holepunch_active": float(len(self._waiters)),
            "holepunch_time_to_direct_seconds_sum": p.time_to_direct_sum,
            "holepunch_time_to_direct_seconds_count": float(c["successes"]),
            "holepunch_time_to_direct_seconds_max": p.time_to_direct_max,
        }
        for prefix, table in (("failures", p.failures_by_reason), ("forward_refused", p.forward_refused_by_reason),
                              ("refused", p.refused_by_reason)):
            for reason, n in table.items():
                out[f"holepunch_{prefix}_{reason}_total"] = float(n)
        return out

    def health(self) -> dict[str, Any]:
        """The puncher's counters for ``/health`` (``"holepunch"``)."""
        return {**self.node.core.puncher.stats(), "dials_total": self.dials_started,
                "dials_in_flight": self.dials_in_flight,
                "trace": [f"{t:.3f} {what}" for t, what in self.trace]}


_REDIAL = 0.3
"""Seconds after its first dials a punch dials again with fresh first packets (at most half the
dial timeout), unless connected by then."""
_TRACE = 32
"""Punch steps kept in :attr:`HolePunch.trace`."""

PUNCH_COMMANDS = frozenset({"punch", "punch_close"})
"""Control commands (:mod:`quicmesh.testing.control`) served by :func:`punch_command`."""


async def punch_command(hp: HolePunch, name: str, cmd: dict[str, Any]) -> dict[str, Any]:
    """A control command: ``punch`` (``peer``, optional ``via``, ``timeout``) punches and answers
    with the result; ``punch_close`` (``peer``) forgets the peer (so the mesh does not dial it again
    at once) and closes the connection to it (tests start each punch from closed NATs so)."""
    node = hp.node
    peer = NodeId.parse(cmd["peer"])
    if name == "punch_close":  # forget the peer (no re-dial by the mesh) and close the connection
        node._run(node.core.remove_peer(peer, node._now()))
        conns = [c for c in node.transport.connections() if c.peer_id == peer and not c.closed]
        for c in conns:
            await c.close("normal", "closed by control")
        return {"peer": str(peer), "closed": len(conns)}
    via = NodeId.parse(cmd["via"]) if cmd.get("via") else None
    r = await hp.punch(peer, via, cmd.get("timeout"))
    conn = node.transport.get(peer)
    return {"peer": str(peer), "ok": r.ok, "reason": r.reason, "ms": round(r.elapsed * 1000, 3),
            "attempts": r.attempts, "path": str(getattr(conn, "path", "direct")) if conn is not None else None,
            "remote": r.remote or (conn.remote_address if conn is not None else None)}
