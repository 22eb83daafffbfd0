"""Request/reply between connected peers: pending calls, handler admission, provider directory.

Theory of operation
-------------------
*Caller side.* ``start_call`` gives the call a fresh id, records a pending entry holding the
runtime's opaque ``token`` (the awaiting future) in a :class:`~quicmesh.bounded.TtlMap` whose
per-entry TTL is the call's timeout, and emits a ``Send(Request)``. The entry leaves the table in
exactly one of four ways, each producing at most one :class:`CallResolved`: a ``Reply`` or
``ReplyError`` arrives; ``handle_timer(now)`` finds its deadline passed (``CallTimeout``); the
provider's connection drops (``ConnectionLost``); or the runtime calls ``cancel`` because the
awaiting task was cancelled (no effect: nobody is waiting). The table is capped at
``max_pending_calls``; beyond it ``start_call`` raises :class:`~quicmesh.errors.Overloaded`.

*Callee side.* A ``Request`` for a procedure this node advertises becomes an :class:`Invoke`
effect, unless ``max_concurrent_handlers`` handlers already run, in which case the caller gets
``ReplyError(code="overloaded", retryable=True)`` at once. Each running handler is one entry
of ``rpc.running_handlers`` keyed by (peer, call id): a repeated request id from a peer whose
handler still runs is dropped (counted), and the entry is what keeps the peer's connection open.
The runtime runs the handler and reports back through ``handler_done``, which frees the slot
and emits the reply (``handler_cancelled``: the handler was cancelled, no reply). A lost peer's
entries are dropped with it.

*Directory.* Each node tells its connected peers the full set of names it advertises
(:class:`~quicmesh.core.messages.Services`, replacing the previous set). ``providers(name)``
lists the connected peers that offer ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

import msgspec

from ..bounded import BoundedDict, ContainerRegistry, LruMap, Overflow, TtlMap
from ..config import RpcConfig
from ..errors import (
    CallTimeout,
    ConnectionLost,
    ContainerFull,
    LimitExceeded,
    Overloaded,
    PermissionDenied,
    RemoteError,
    RpcError,
)
from ..identity import NodeId
from .effects import Effect, Send
from .messages import Reply, ReplyError, Request, Services
from .wire import Message

__all__ = [
    "DENIED_CODE", "CallDenied", "CallResolved", "HandlerTimedOut", "Invoke", "PendingCall", "Rpc", "RpcOutcome",
    "RpcStats",
]


class HandlerTimedOut(CallTimeout):
    """The callee answered that its handler ran past the call's deadline: the provider is alive."""


DENIED_CODE = "permission_denied"
"""``ReplyError.code`` of a call the callee refused: the caller's certificate does not allow
``call`` on the name."""


class CallDenied(PermissionDenied, RemoteError):
    """The callee refused the call: this node may not ``call`` the name there. A
    :class:`~quicmesh.errors.PermissionDenied` (and a non-retryable ``RemoteError`` with code
    :data:`DENIED_CODE`, so the caller ends the call at once)."""

    def __init__(self, name: str) -> None:
        Exception.__init__(self, f"permission denied: call {name!r:.120}")  # both bases' fields, set here
        self.action = "call"
        self.subject = name
        self.code = DENIED_CODE
        self.message = str(self)
        self.retryable = False


_MAX_NAME = 256


class PendingCall(msgspec.Struct):
    """An outgoing call awaiting its reply. (The per-call records are msgspec Structs, not
    dataclasses: one of each is made per call, at a third of the cost, #14.)"""

    call_id: int
    peer: NodeId
    name: str
    token: object


class CallResolved(msgspec.Struct, frozen=True):
    """A pending call ended: ``result`` on success, else ``error``. ``token`` is the runtime's."""

    token: object
    result: bytes | None
    error: RpcError | ConnectionLost | None


class Invoke(msgspec.Struct, frozen=True, gc=False):
    """Run the local handler for ``name``; report with :meth:`Rpc.handler_done`."""

    peer: NodeId
    call_id: int
    name: str
    payload: bytes
    timeout: float


RpcOutcome = Effect | CallResolved | Invoke


@dataclass(slots=True)
class RpcStats:
    calls_started: int = 0
    calls_succeeded: int = 0
    calls_failed: int = 0
    calls_timed_out: int = 0
    calls_cancelled: int = 0
    calls_refused_overloaded: int = 0
    requests_received: int = 0
    requests_refused_overloaded: int = 0
    requests_no_handler: int = 0
    stray_replies: int = 0
    duplicate_requests: int = 0


class Rpc:
    """The RPC state machine of one node (see the module docstring)."""

    def __init__(
        self,
        me: NodeId,
        config: RpcConfig,
        *,
        peer_capacity: int,
        rng: Random,
        registry: ContainerRegistry | None = None,
    ) -> None:
        self.me = me
        self.config = config
        self._rng = rng
        self._pending: TtlMap[int, PendingCall] = TtlMap(
            "rpc.pending_calls", config.max_pending_calls, config.default_timeout, Overflow.REJECT, registry=registry
        )
        # #14: plain bounded dicts for the two tables every request reads (C lookups; full: refused)
        self._services: BoundedDict[str, bool] = BoundedDict("rpc.local_services", config.max_services,
                                                             registry=registry)
        self._peer_services: LruMap[NodeId, frozenset[str]] = LruMap(
            "rpc.peer_services", peer_capacity, Overflow.EVICT_OLDEST, registry=registry
        )
        self._connected: LruMap[NodeId, bool] = LruMap(
            "rpc.connected_peers", peer_capacity, Overflow.EVICT_OLDEST, registry=registry
        )
        self._running: BoundedDict[tuple[NodeId, int], bool] = BoundedDict(
            "rpc.running_handlers", config.max_concurrent_handlers, registry=registry
        )
        self._next_id = 0
        self.stats = RpcStats()

    # -- introspection ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Outgoing calls awaiting a reply."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Incoming calls whose handler is running."""
        return len(self._running)

    @property
    def services(self) -> list[str]:
        """Names this node advertises."""
        return sorted(self._services.keys())

    def next_deadline(self) -> float | None:
        return self._pending.next_deadline()

    # -- directory -------------------------------------------------------------------------------

    def advertise(self, name: str) -> list[Effect]:
        """Offer ``name``; tells every connected peer. Raises ``LimitExceeded`` past max_services."""
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
            raise ValueError(f"a procedure name is 1 to {_MAX_NAME} characters, got {name!r:.80}")
        if name in self._services:
            return []
        try:
            self._services[name] = True
        except LimitExceeded:
            raise LimitExceeded("rpc.max_services", self.config.max_services) from None
        return self._announce()

    def unadvertise(self, name: str) -> list[Effect]:
        """Withdraw ``name``; tells every connected peer."""
        if self._services.pop(name, None) is None:
            return []
        return self._announce()

    def _announce(self) -> list[Effect]:
        msg = Services(sorted(self._services.keys()))
        return [Send(p, msg) for p in self._connected.keys()]

    def providers(self, name: str) -> list[NodeId]:
        """Connected peers that advertise ``name``."""
        return [p for p, names in self._peer_services.items() if name in names]

    def peer_in_use(self, peer: NodeId) -> bool:
        """Whether ``peer`` offers procedures to us, has calls of ours pending, or a handler of
        ours runs for it."""
        if self._peer_services.peek(peer):
            return True
        if any(c.peer == peer for c in self._pending.values()):
            return True
        return any(k[0] == peer for k in self._running.keys())

    def connected_peers(self) -> list[NodeId]:
        """The peers this machine holds per-peer state for."""
        return list(self._connected.keys())

    # -- peers -----------------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId) -> list[Effect]:
        self._connected.set(peer, True)
        return [Send(peer, Services(sorted(self._services.keys())))]

    def peer_disconnected(self, peer: NodeId) -> list[CallResolved]:
        """Forget ``peer``; every call pending on it fails with ``ConnectionLost`` at once."""
        self._connected.pop(peer)
        self._peer_services.pop(peer)
        for key in [k for k in self._running.keys() if k[0] == peer]:
            self._running.pop(key, None)  # its handler is cancelled by the driver; no reply can go
        lost = [c for c in self._pending.values() if c.peer == peer]
        out: list[CallResolved] = []
        for call in lost:
            self._pending.pop(call.call_id)
            self.stats.calls_failed += 1
            out.append(CallResolved(call.token, None, ConnectionLost(f"connection to {peer.short()} lost")))
        return out

    # -- caller side -----------------------------------------------------------------------------

    def start_call(
        self, peer: NodeId, name: str, payload: bytes, timeout: float, now: float, token: object
    ) -> tuple[int, list[Effect]]:
        """Record a pending call and return its id and the ``Send(Request)``.

        Raises :class:`~quicmesh.errors.Overloaded` when ``max_pending_calls`` are pending.
        """
        self._next_id += 1
        call_id = self._next_id
        try:  # #14: the table's own bound is the check (REJECT: refused before anything changed)
            self._pending.set(call_id, PendingCall(call_id, peer, name, token), now, ttl=max(timeout, 1e-6))
        except ContainerFull:
            self.stats.calls_refused_overloaded += 1
            raise Overloaded(f"rpc.max_pending_calls ({self.config.max_pending_calls}) reached") from None
        self.stats.calls_started += 1
        timeout_ms = min(max(1, int(timeout * 1000)), (1 << 63) - 1)  # what receivers accept
        return call_id, [Send(peer, Request(call_id, name, payload, timeout_ms))]

    def cancel(self, call_id: int) -> bool:
        """The awaiting caller went away: drop the entry (no outcome). ``True`` if it was pending."""
        if self._pending.pop(call_id) is None:
            return False
        self.stats.calls_cancelled += 1
        return True

    def handle_timer(self, now: float) -> list[CallResolved]:
        """Fail every call whose deadline passed with :class:`~quicmesh.errors.CallTimeout`."""
        out: list[CallResolved] = []
        for _, call in self._pending.expire(now):
            self.stats.calls_timed_out += 1
            out.append(CallResolved(call.token, None, CallTimeout(f"{call.name} on {call.peer.short()} timed out")))
        return out

    # -- messages --------------------------------------------------------------------------------

    def handle_message(self, peer: NodeId, msg: Message) -> list[RpcOutcome]:
        """Process a Services, Request, Reply or ReplyError from ``peer``."""
        if isinstance(msg, Request):  # first (#14): a callee's every call
            self.stats.requests_received += 1
            if msg.name not in self._services:
                self.stats.requests_no_handler += 1
                return [Send(peer, ReplyError(msg.id, "no_handler", f"no procedure {msg.name!r:.80}", True))]
            key = (peer, msg.id)
            if key in self._running:
                self.stats.duplicate_requests += 1
                return []
            if len(self._running) >= self.config.max_concurrent_handlers:
                self.stats.requests_refused_overloaded += 1
                return [Send(peer, ReplyError(msg.id, "overloaded", "max_concurrent_handlers reached", True))]
            self._running[key] = True
            return [Invoke(peer, msg.id, msg.name, msg.payload, max(msg.timeout_ms, 1) / 1000.0)]
        if isinstance(msg, (Reply, ReplyError)):
            call = self.take_reply(peer, msg)
            if call is None:
                return []
            if isinstance(msg, Reply):
                return [CallResolved(call.token, msg.payload, None)]
            self.stats.calls_failed += 1
            err: RpcError
            if msg.code == "overloaded":
                err = Overloaded(f"{call.name} on {peer.short()}: {msg.message}")
            elif msg.code == "timeout":
                err = HandlerTimedOut(f"{call.name} on {peer.short()}: {msg.message}")
            elif msg.code == DENIED_CODE:
                err = CallDenied(call.name)
            else:
                err = RemoteError(msg.code, msg.message, retryable=msg.retryable)
            return [CallResolved(call.token, None, err)]
        if isinstance(msg, Services):
            if peer in self._connected:
                names = [n for n in msg.names[: self.config.max_services] if isinstance(n, str) and n]
                self._peer_services.set(peer, frozenset(names))
            return []
        return []

    def take_reply(self, peer: NodeId, msg: Reply | ReplyError) -> PendingCall | None:
        """The pending call ``msg`` from ``peer`` answers, removed from the table (a ``Reply``
        counted as a success), or ``None`` (a stray reply: unknown id or another peer, counted).
        ``handle_message`` uses it, and the planner's short path for its own attempts."""
        call = self._pending.get(msg.id)
        if call is None or call.peer != peer:
            self.stats.stray_replies += 1
            return None
        self._pending.pop(msg.id)
        if type(msg) is Reply:
            self.stats.calls_succeeded += 1
        return call

    def handler_done(
        self, peer: NodeId, call_id: int, result: bytes | None, error: RemoteError | None
    ) -> list[Effect]:
        """A handler started by :class:`Invoke` finished; free its slot and reply (once: a second
        report of the same call sends nothing)."""
        if self._running.pop((peer, call_id), None) is None or peer not in self._connected:
            return []
        if error is not None:
            # cut to what receivers accept (messages.ReplyError): a handler's long text costs no link
            return [Send(peer, ReplyError(call_id, error.code[:256], error.message[:4096], error.retryable))]
        return [Send(peer, Reply(call_id, result or b""))]

    def handler_cancelled(self, peer: NodeId, call_id: int) -> None:
        """A handler started by :class:`Invoke` was cancelled: free its slot, send nothing."""
        self._running.pop((peer, call_id), None)
