"""The call planner: provider choice, failover and one deadline for calls across the mesh.

Theory of operation
-------------------
``call(name, payload, timeout, now, token)`` opens a *call* with one overall deadline
``now + timeout`` and runs *attempts*, one provider each, until one succeeds, the call fails for
good, or the deadline passes. The final outcome is one :class:`~quicmesh.core.rpc.CallResolved`
carrying the caller's ``token`` (the runtime's future), the same effect the direct RPC machine
produces.

**Providers.** Candidates are the registry's live, unsuspected entries of the name
(:meth:`Registry.providers`), minus this node and the providers already tried by this call.
When the registry holds *no* entry of the name at all, the call first waits on a registry lookup
(coalesced with every other call looking up the same name; ended by
:class:`~quicmesh.core.registry.LookupDone`, which the driver passes to :meth:`lookup_done`).
One provider is picked by ``rpc.provider_policy``: ``random`` (default), ``round_robin`` (over the
candidates sorted by id), or ``lowest_rtt`` (the lowest smoothed round trip measured by this
node; never-measured providers first, so each gets measured; ties at random). Round trips are
kept as one exponentially weighted average per provider in an LRU map.

**Attempts.** An attempt on a connected provider is an :class:`~quicmesh.core.rpc.Rpc` call
(``Request``/``Reply`` on the provider's connection, one hop). On an unconnected provider the
planner emits ``Dial(provider, advertised addresses)`` (one per provider however many calls wait
on it) and sends once ``peer_connected`` reports it. Each attempt gets
``remaining / attempts_left`` seconds, where ``attempts_left`` is the smaller of the attempts
still allowed (``rpc.max_attempts``) and the untried candidates, so a lone provider gets the
whole remaining time and the last attempt always ends at the call's deadline.

**Failover.** An attempt fails over to the next provider on: a lost connection or failed dial,
``Overloaded`` from the callee, an attempt timeout, or a ``RemoteError`` marked retryable
(``no_handler`` also drops that entry locally: the provider no longer serves the name). Lost
connections, failed dials and attempt timeouts *suspect* the provider in the registry: it leaves
this node's choices at once for ``registry.suspect_ttl``, not only when its lease lapses. A
``RemoteError`` not marked retryable ends the call at once.

**Typed outcomes.** Success: the reply payload. Otherwise: ``CallTimeout`` when the deadline
passed; else the last ``Overloaded`` or ``RemoteError`` when attempts ran out; else
``NoProvider`` (no provider known, or every one tried was unreachable). ``call`` itself raises
``Overloaded`` when ``rpc.max_pending_calls`` calls are open.

**Deadlines.** A call's entry in ``caller.calls`` (a bounded dict) carries no timer of its own
(#14: a timed table costs each call a heap entry and a re-seek): in each state that waits, the
call's deadline is held by what it waits on, never later than the call's. An attempt in flight
is an ``Rpc`` entry whose TTL is at most the time left; a wait for a dial is a
``caller.dial_timers`` entry of at most the time left; a wait for a registry lookup is a
``caller.lookup_waits`` entry that ends at the call's deadline. When one of them expires the
call fails over, or ends with ``CallTimeout`` once no time is left.

**Cleanup.** Every call leaves every table in exactly one place, :meth:`_finish`: its RPC attempt
(``Rpc.cancel``), its dial wait and dial timer, its lookup waiter. :meth:`cancel` (the awaiting
task was cancelled) runs the same cleanup without an outcome. Nothing is left pending once every
call has ended.

**Driving.** The driver routes to the planner (instead of to the ``Rpc`` directly) the peer
events ``peer_connected``, ``peer_disconnected`` (also for connections it closed itself),
``dial_failed``, and the ``Request``/``Reply``/``ReplyError``/``Services`` messages; the planner
forwards them to its ``Rpc`` and passes through every RPC outcome that is not one of its
attempts (``Invoke``, ``Send``, ``CallResolved`` of direct ``Rpc.start_call`` users). While
:meth:`uses` is true for a peer the driver must keep its connection open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import Random

import msgspec

from ..bounded import BoundedDict, ContainerRegistry, LruMap, Overflow, TtlMap
from ..config import RegistryConfig, RpcConfig
from ..errors import CallTimeout, ConnectionLost, ContainerFull, NoProvider, Overloaded, RemoteError, RpcError
from ..identity import NodeId
from .effects import Dial
from .messages import Reply, ReplyError
from .registry import MAX_NAME, Entry, LookupDone, Registry, RegistryOutcome
from .rpc import CallResolved, HandlerTimedOut, Rpc, RpcOutcome
from .wire import Message

__all__ = ["Caller", "CallerOutcome", "CallerStats"]

RTT_ALPHA = 0.2
"""Weight of a new round-trip sample in the per-provider moving average."""

CallerOutcome = RpcOutcome | RegistryOutcome


class _Attempt(msgspec.Struct, frozen=True, gc=False):
    """The token of one RPC attempt (the Rpc machine hands it back in ``CallResolved``)."""

    call_id: int
    attempt: int


class _Call(msgspec.Struct):
    call_id: int
    name: str
    payload: bytes
    token: object
    deadline: float
    state: str = "new"  # "lookup" | "dial" | "inflight"
    attempts: int = 0
    tried: tuple[NodeId, ...] = ()
    peer: NodeId | None = None
    rpc_id: int | None = None
    sent_at: float = 0.0
    attempt_timeout: float = 0.0
    looked_up: bool = False
    last_error: Exception | None = None


@dataclass(slots=True)
class CallerStats:
    calls: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    refused_overloaded: int = 0
    attempts: int = 0
    failovers: int = 0
    dials: int = 0
    lookups: int = 0
    no_provider: int = 0


class Caller:
    """Calls by name across the mesh for one node (see the module docstring)."""

    def __init__(
        self,
        me: NodeId,
        config: RpcConfig,
        registry_config: RegistryConfig,
        rpc: Rpc,
        registry: Registry,
        *,
        neighbours: Callable[[], Sequence[NodeId]],
        peer_capacity: int,
        rng: Random,
        containers: ContainerRegistry | None = None,
    ) -> None:
        self.me = me
        self.config = config
        self.rpc = rpc
        self.registry = registry
        self._neighbours = neighbours
        self._rng = rng
        cap = config.max_pending_calls
        self._calls: BoundedDict[int, _Call] = BoundedDict("caller.calls", cap, registry=containers)
        self._lookup_waits: TtlMap[int, None] = TtlMap(
            "caller.lookup_waits", cap, config.default_timeout, Overflow.REJECT, registry=containers
        )
        self._dial_timers: TtlMap[int, None] = TtlMap(
            "caller.dial_timers", cap, config.default_timeout, Overflow.REJECT, registry=containers
        )
        self._dial_waiters: LruMap[NodeId, dict[int, None]] = LruMap(
            "caller.dial_waiters", cap, Overflow.REJECT, registry=containers
        )
        self._connected: LruMap[NodeId, bool] = LruMap(
            "caller.connected", peer_capacity, Overflow.EVICT_OLDEST, registry=containers
        )
        self._rtt: LruMap[NodeId, float] = LruMap(
            "caller.rtt", max(peer_capacity, registry_config.max_entries), Overflow.EVICT_OLDEST, registry=containers
        )
        self._next_id = 0
        self._rr = 0
        self.stats = CallerStats()

    # -- introspection ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Calls not ended yet."""
        return len(self._calls)

    def pending_entries(self) -> dict[str, int]:
        """Every table that holds per-call state (all 0 once every call has ended)."""
        return {
            "calls": len(self._calls), "lookup_waits": len(self._lookup_waits), "dial_timers": len(self._dial_timers),
            "dial_waiters": len(self._dial_waiters), "rpc_pending": self.rpc.pending,
            "lookups": self.registry.pending_lookups, "lookup_waiters": self.registry.lookup_waiters,
        }

    def uses(self, peer: NodeId) -> bool:
        """Whether a call has an attempt on, or waits for a dial to, ``peer``: the driver keeps
        such a connection open (the mesh must not close it as idle)."""
        return peer in self._dial_waiters or any(
            c.peer == peer and c.state in ("dial", "inflight") for c in self._calls.values()
        )

    def tokens(self) -> list[object]:
        """The tokens of every call not ended yet (a stopping driver fails their waiters)."""
        return [c.token for c in self._calls.values()]

    def connected_peers(self) -> list[NodeId]:
        """The peers this planner believes connected."""
        return list(self._connected.keys())

    def rtt(self, provider: NodeId) -> float | None:
        """The smoothed round trip measured to ``provider`` (seconds), if any."""
        return self._rtt.peek(provider)

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` must run, or ``None``."""
        best = self._lookup_waits.next_deadline()
        for d in (self._dial_timers.next_deadline(), self.rpc.next_deadline()):
            if d is not None and (best is None or d < best):
                best = d
        return best

    # -- API -------------------------------------------------------------------------------------

    def call(
        self, name: str, payload: bytes, timeout: float, now: float, token: object
    ) -> tuple[int, list[CallerOutcome]]:
        """Open a call; returns its id (for :meth:`cancel`) and the first effects.

        Raises ``ValueError`` for a bad name or timeout and :class:`Overloaded` when
        ``rpc.max_pending_calls`` calls are open."""
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise ValueError(f"a procedure name is 1 to {MAX_NAME} characters, got {name!r:.80}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._next_id += 1
        call = _Call(self._next_id, name, bytes(payload), token, now + timeout)
        try:  # #14: the table's own bound is the check (refused: nothing changed)
            self._calls[call.call_id] = call
        except ContainerFull:
            self.stats.refused_overloaded += 1
            raise Overloaded(f"rpc.max_pending_calls ({self._calls.capacity}) reached") from None
        self.stats.calls += 1
        return call.call_id, self._next_attempt(call, now)

    def cancel(self, call_id: int) -> bool:
        """The awaiting caller went away: free every entry of the call (no outcome)."""
        call = self._calls.get(call_id)
        if call is None or call.state == "done":
            return False
        self._cleanup(call)
        self.stats.cancelled += 1
        return True

    # -- driver events ---------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId, now: float) -> list[CallerOutcome]:
        """A connection to ``peer`` is up: send the attempts waiting for it."""
        self._connected.set(peer, True)
        self.registry.unsuspect(peer)
        out: list[CallerOutcome] = list(self.rpc.peer_connected(peer))
        waiting = self._dial_waiters.pop(peer)
        for cid in waiting or ():
            call = self._calls.get(cid)
            if call is None or call.state != "dial" or call.peer != peer:
                continue
            left = self._dial_timers.deadline(cid)
            self._dial_timers.pop(cid)
            out += self._send_attempt(call, peer, (left if left is not None else call.deadline) - now, now)
        return out

    def peer_disconnected(self, peer: NodeId, now: float) -> list[CallerOutcome]:
        """The connection to ``peer`` ended: its attempts fail over (and it becomes suspect)."""
        self._connected.pop(peer)
        return self._absorb(list(self.rpc.peer_disconnected(peer)), now)

    def dial_failed(self, peer: NodeId, now: float) -> list[CallerOutcome]:
        """A dial to ``peer`` failed: suspect it; the attempts waiting for it fail over."""
        self.registry.suspect(peer, now)
        out: list[CallerOutcome] = []
        for cid in self._dial_waiters.pop(peer) or ():
            call = self._calls.get(cid)
            if call is None or call.state != "dial" or call.peer != peer:
                continue
            self._dial_timers.pop(cid)
            out += self._attempt_failed(call, ConnectionLost(f"dial to {peer.short()} failed"), now, suspect=False)
        return out

    def handle_message(self, peer: NodeId, msg: Message, now: float) -> list[CallerOutcome]:
        """Hand an RPC message (``Request``, ``Reply``, ``ReplyError``, ``Services``) from ``peer``
        to the ``Rpc`` and plan on its outcomes."""
        if type(msg) is Reply:  # #14: the short path of a call's success
            pending = self.rpc.take_reply(peer, msg)
            if pending is None:
                return []
            token = pending.token
            if type(token) is _Attempt:
                return self._attempt_succeeded(token, msg.payload, now)
            return [CallResolved(token, msg.payload, None)]
        if isinstance(msg, ReplyError):
            return self._absorb(list(self.rpc.handle_message(peer, msg)), now)
        return list(self.rpc.handle_message(peer, msg))

    def lookup_done(self, done: LookupDone, now: float) -> list[CallerOutcome]:
        """A registry lookup ended: resume the calls that waited on it."""
        out: list[CallerOutcome] = []
        for cid in done.waiters:
            call = self._calls.get(cid)
            if call is None or call.state != "lookup" or call.name != done.name:
                continue
            self._lookup_waits.pop(cid)
            call.state = "new"
            out += self._next_attempt(call, now)
        return out

    def handle_timer(self, now: float) -> list[CallerOutcome]:
        """Attempt timeouts (RPC and dial), then lookups that waited until the call's deadline."""
        out = self._absorb(list(self.rpc.handle_timer(now)), now)
        for cid, _ in self._dial_timers.expire(now):
            call = self._calls.get(cid)
            if call is None or call.state != "dial" or call.peer is None:
                continue
            self._drop_dial_waiter(call.peer, cid)
            out += self._attempt_failed(call, CallTimeout(f"dial to {call.peer.short()} timed out"), now,
                                        suspect=True)
        for cid, _ in self._lookup_waits.expire(now):
            call = self._calls.get(cid)
            if call is not None and call.state == "lookup":
                out += self._finish(call, None, self._timeout(call))
        return out

    # -- planning --------------------------------------------------------------------------------

    def _candidates(self, call: _Call, now: float) -> list[Entry]:
        return [e for e in self.registry.choices(call.name, now) if e.provider != self.me
                and e.provider not in call.tried]

    def _next_attempt(self, call: _Call, now: float) -> list[CallerOutcome]:
        remaining = call.deadline - now
        if remaining <= 0:
            return self._finish(call, None, self._timeout(call))
        if call.attempts >= self.config.max_attempts:
            return self._finish(call, None, self._final_error(call, now))
        cands = self._candidates(call, now)
        if not cands:
            if not call.looked_up and call.attempts == 0 and not self.registry.has_entries(call.name, now):
                call.looked_up = True
                call.state = "lookup"
                self._lookup_waits.set(call.call_id, None, now, ttl=remaining)  # as many as calls: fits
                self.stats.lookups += 1
                outs = self.registry.lookup(call.name, call.call_id, now, self._neighbours())
                out: list[CallerOutcome] = []
                for o in outs:
                    if isinstance(o, LookupDone):
                        out += self.lookup_done(o, now)
                    else:
                        out.append(o)
                return out
            return self._finish(call, None, self._final_error(call, now))
        entry = self._choose(cands)
        attempts_left = min(self.config.max_attempts - call.attempts, len(cands))
        per_attempt = remaining / attempts_left
        if call.attempts:
            self.stats.failovers += 1
        call.attempts += 1
        call.tried += (entry.provider,)
        call.peer = entry.provider
        self.stats.attempts += 1
        if entry.provider in self._connected:
            return self._send_attempt(call, entry.provider, per_attempt, now)
        call.state = "dial"
        self._dial_timers.set(call.call_id, None, now, ttl=per_attempt)
        waiting = self._dial_waiters.get(entry.provider)
        first = waiting is None
        if waiting is None:
            waiting = {}  # bounded: calls waiting on one dial, at most rpc.max_pending_calls in all
            self._dial_waiters.set(entry.provider, waiting)
        waiting[call.call_id] = None
        if not first:
            return []
        self.stats.dials += 1
        return [Dial(entry.provider, entry.addresses)]

    def _send_attempt(self, call: _Call, peer: NodeId, timeout: float, now: float) -> list[CallerOutcome]:
        timeout = min(timeout, call.deadline - now)
        if timeout <= 0:
            return self._finish(call, None, self._timeout(call))
        try:
            rpc_id, effects = self.rpc.start_call(peer, call.name, call.payload, timeout, now,
                                                  _Attempt(call.call_id, call.attempts))
        except Overloaded as exc:
            return self._finish(call, None, exc)
        call.state = "inflight"
        call.rpc_id = rpc_id
        call.sent_at = now
        call.attempt_timeout = timeout
        return list(effects)

    def _choose(self, cands: list[Entry]) -> Entry:
        if len(cands) == 1:
            return cands[0]  # #14: nothing to choose (no draw from the seeded generator)
        policy = self.config.provider_policy
        if policy == "round_robin":
            self._rr += 1
            return cands[self._rr % len(cands)]
        if policy == "lowest_rtt":
            def key(e: Entry) -> float:
                v = self._rtt.peek(e.provider)
                return -1.0 if v is None else v
            best = min(key(e) for e in cands)
            return self._rng.choice([e for e in cands if key(e) == best])
        return self._rng.choice(cands)

    def _absorb(self, outcomes: list[RpcOutcome], now: float) -> list[CallerOutcome]:
        out: list[CallerOutcome] = []
        for o in outcomes:
            if isinstance(o, CallResolved) and isinstance(o.token, _Attempt):
                out += self._attempt_resolved(o.token, o.result, o.error, now)
            else:
                out.append(o)
        return out

    def _attempt_succeeded(self, token: _Attempt, result: bytes, now: float) -> list[CallerOutcome]:
        call = self._calls.get(token.call_id)
        if call is None or call.state != "inflight" or call.attempts != token.attempt:
            return []
        call.rpc_id = None  # the Rpc machine already dropped its entry
        peer = call.peer
        if peer is not None:
            sample = max(now - call.sent_at, 0.0)
            old = self._rtt.peek(peer)
            self._rtt.set(peer, sample if old is None else old + RTT_ALPHA * (sample - old))
        return self._finish(call, result, None)

    def _attempt_resolved(
        self, token: _Attempt, result: bytes | None, error: Exception | None, now: float
    ) -> list[CallerOutcome]:
        if error is None:
            return self._attempt_succeeded(token, result if result is not None else b"", now)
        call = self._calls.get(token.call_id)
        if call is None or call.state != "inflight" or call.attempts != token.attempt:
            return []
        call.rpc_id = None  # the Rpc machine already dropped its entry
        peer = call.peer
        if isinstance(error, RemoteError) and not error.retryable:
            return self._finish(call, None, error)
        if isinstance(error, RemoteError) and error.code == "no_handler" and peer is not None:
            self.registry.forget(peer, call.name)
        # A lost connection makes the provider suspect. So does an attempt that timed out before
        # the call's own deadline (its share of a planned failover), but not a call that simply
        # ran out of time on a slow handler: that says nothing about the provider being gone.
        suspect = isinstance(error, ConnectionLost) or (
            isinstance(error, CallTimeout) and not isinstance(error, HandlerTimedOut) and now < call.deadline
        )
        return self._attempt_failed(call, error, now, suspect=suspect)

    def _attempt_failed(self, call: _Call, error: Exception, now: float, *, suspect: bool) -> list[CallerOutcome]:
        call.last_error = error
        call.state = "new"
        call.rpc_id = None
        if suspect and call.peer is not None:
            self.registry.suspect(call.peer, now)
        return self._next_attempt(call, now)

    def _timeout(self, call: _Call) -> CallTimeout:
        err = CallTimeout(f"{call.name}: no reply within the deadline after {call.attempts} attempt(s)"
                          + (f" (last error: {call.last_error})" if call.last_error else ""))
        err.__cause__ = call.last_error
        return err

    def _final_error(self, call: _Call, now: float) -> RpcError:
        if now >= call.deadline:
            return self._timeout(call)
        last = call.last_error
        if isinstance(last, RemoteError) and last.code == "no_handler":
            pass  # the provider no longer offers it: with nobody else left, that is NoProvider
        elif isinstance(last, Overloaded | RemoteError):
            return last
        if isinstance(last, CallTimeout):
            return last
        err = NoProvider(
            f"no reachable provider of {call.name!r}" + (f" (tried {call.attempts}: {last})" if call.attempts else "")
        )
        err.__cause__ = last
        return err

    # -- cleanup ---------------------------------------------------------------------------------

    def _finish(self, call: _Call, result: bytes | None, error: RpcError | None) -> list[CallerOutcome]:
        if call.state == "done":
            return []
        self._cleanup(call)
        if error is None:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1
            if isinstance(error, CallTimeout):
                self.stats.timed_out += 1
            elif isinstance(error, NoProvider):
                self.stats.no_provider += 1
        return [CallResolved(call.token, result, error)]

    def _cleanup(self, call: _Call) -> None:
        self._calls.pop(call.call_id, None)
        if call.state == "lookup":
            self._lookup_waits.pop(call.call_id)
        if call.rpc_id is not None:
            self.rpc.cancel(call.rpc_id)
            call.rpc_id = None
        if call.state == "dial":  # only a call waiting on a dial holds a dial timer and a waiter entry
            self._dial_timers.pop(call.call_id)
            if call.peer is not None:
                self._drop_dial_waiter(call.peer, call.call_id)
        if call.looked_up:
            self.registry.cancel_lookup(call.name, call.call_id)
        call.state = "done"

    def _drop_dial_waiter(self, peer: NodeId, call_id: int) -> None:
        waiting = self._dial_waiters.peek(peer)
        if waiting is not None:
            waiting.pop(call_id, None)
            if not waiting:
                self._dial_waiters.pop(peer)
