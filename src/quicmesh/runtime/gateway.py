"""The gateway: a node serving light clients (:class:`quicmesh.Client`) that do not join the mesh.

Theory of operation
-------------------
A light client dials a node with ``Hello.role == "client"``. The transport admits it like a mesh
peer (mutual Ed25519 proof, realm check) and, **at the Hello, before any per-client state
exists**, refuses it with ``max_clients`` when ``gateway.max_clients`` clients are held (checked
again after the proof, when the slot is taken); the client raises
:class:`~quicmesh.errors.AdmissionRefused` ``("max_clients")``. That limit is enforced by the
transport's admission table alone (:mod:`.admission`), whose client table is the one set of
clients (``Transport.clients()``): they never count against ``max_connections``, are never
evicted by the peer pool and never receive mesh traffic.

The node hands a client connection's events to this :class:`Gateway`, which keeps one
``_Session`` per client **on its connection** (``Connection.attachment``; the transport keys
clients by node id, so a reconnecting client's new connection supersedes the old one, whose
session is released first when the old connection closes). A session holds, each capped and
answered with a typed error (``GError(code="limit")``, :class:`~quicmesh.errors.LimitExceeded`
on the client) when full:

* subscriptions (``max_client_subscriptions``): the client subscriptions to one pattern share one
  node :class:`~quicmesh.runtime.node.Subscription` and one task forwarding its messages to each
  as ``GMessage`` (a work-queue group member has its own; see :mod:`.gateway_subs`);
* advertisements (``max_client_advertisements``): the gateway advertises a name on the node once
  for all the clients offering it and forwards each invocation to one of them (round robin) as
  ``GInvoke``; the node withdraws the name when its last client does;
* calls in flight (``max_client_pending_calls``): one task per call running ``node.call`` (or,
  when another client of this gateway provides the name, invoking that client directly);
* invocations in flight (same cap): a future per ``GInvoke`` awaiting the client's result.

Budgets (:mod:`.gateway_budget`): payload bytes of a client's calls in flight and queued
publishes (``max_client_pending_bytes``, ``LimitExceeded`` at once beyond it, released when the
call ends), call timeouts clamped to ``max_client_call_timeout``, topics per client
(``max_client_topics``) and subscriptions, topics and advertised names of all clients together,
held apart from the node's own caps.

Everything goes through the node's public API (``subscribe``, ``publish``, ``call``,
``advertise``, ``unadvertise``), so the node's own limits also apply.

Release: when a client's connection ends for any reason (closed by the client, superseded,
idle timeout after missed keepalive pings, slow consumer, node stopping) its session is removed
at once and every structure released in the same callback: its subscriptions end (the last
one of a pattern closes the node subscription, so the node stops subscribing to a pattern no
one else wants),
advertisements withdrawn, call tasks cancelled (the node's pending call entries go with them),
invocation futures failed with a retryable ``RemoteError("client_gone")`` so the mesh caller
tries another provider.

Slow consumers (NATS' rule): before every frame to a client the gateway reads the connection's
unsent bytes (``Connection.pending_bound``, an upper bound kept without asking QUIC, then, past
the limit only, the exact ``pending_bytes``, ours plus QUIC's); past ``max_pending_bytes`` the
client is closed with code ``slow_consumer`` and counted. A sweep every
``min(1 s, write_stall_timeout / 4)`` (armed only while clients are connected) closes a client
with unsent bytes to which QUIC put nothing new on the wire for ``write_stall_timeout`` (a
client that reads, however slowly, is not stalled). One stalled client costs the others nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from typing import Any

from ..bounded import LruMap, Overflow
from ..config import GatewayConfig
from ..core.gateway_messages import (
    GAdvertise,
    GCall,
    GError,
    GInvoke,
    GInvokeError,
    GInvokeResult,
    GOk,
    GPublish,
    GReply,
    GSubscribe,
    GUnadvertise,
    GUnsubscribe,
)
from ..core.topics import swarm_of
from ..core.wire import Message as WireMessage
from ..errors import LimitExceeded, QuicmeshError, RemoteError
from ..identity import NodeId
from .gateway_budget import ClientBudgets, GatewayStats, forget_task, session_of
from .gateway_budget import Session as _Session
from .gateway_budget import error_frame as _error
from .gateway_host import GatewayHost
from .gateway_subs import FRAME_OVERHEAD as _FRAME_OVERHEAD
from .gateway_subs import Fan, Subscriptions
from .transport import Connection

__all__ = ["Gateway", "GatewayStats"]

log = logging.getLogger("quicmesh.gateway")


class Gateway(Subscriptions):
    """Serves light clients on behalf of ``node`` (see the module docstring).

    The node creates it, passes it the events of client-role connections, calls :meth:`stop`
    when stopping and shows :meth:`health` under ``"gateway"`` in ``/health``.
    """

    def __init__(self, node: GatewayHost, config: GatewayConfig) -> None:
        self._node = node
        self._cfg = config
        self.stats = GatewayStats()
        self._transport = node.transport
        self.enabled = config.max_clients > 0
        """Whether the transport accepts clients (``gateway.max_clients`` > 0)."""
        self._transport.enable_clients(config.max_clients)
        # name -> clients offering it, in round-robin order (each list: the clients held, each once)
        self._providers: LruMap[str, list[NodeId]] = LruMap(
            "gateway.provided_names", max(1, config.max_clients * config.max_client_advertisements),
            Overflow.REJECT, registry=node.registry)
        self._rr = itertools.count()
        self._held = 0
        """Open sessions (the clients in the transport's client table that have one)."""
        # (un)advertise steps and closes, each brief: at most one per advertisement and one per client
        self._tasks: LruMap[asyncio.Task[Any], None] = LruMap(
            "gateway.tasks", max(1, config.max_clients * (config.max_client_advertisements + 2)),
            Overflow.REJECT, registry=node.registry,
        )
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._stopped = False
        self.budgets = ClientBudgets(config)
        """Bytes, topics, subscriptions and names held for clients (see :mod:`.gateway_budget`)."""
        self._fans: dict[str, Fan] = {}  # bounded: one per pattern of a client subscription held (budgets)

    def client_swarms(self) -> int:
        """Swarms held for clients now (their subscriptions, and publish topics until their
        publish-only membership lapses): they do not count against the node's own
        ``gossip.max_topics``."""
        return self.budgets.swarms_held(asyncio.get_running_loop().time())

    # -- connection events (called by the node) --------------------------------------------------

    def on_connection(self, conn: Connection) -> None:
        """A client connection was admitted by the transport."""
        client = conn.peer_id
        if self._stopped:
            self._spawn(conn.close("shutdown", "node stopping"))
            return
        # the transport admitted it (max_clients) and already closed a superseded connection
        conn.attachment = _Session(client, conn)
        self._held += 1
        self.stats.accepted_total += 1
        self._arm_sweep()

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        """A client connection ended: release everything the client held, at once."""
        s = session_of(conn)
        if s is not None:
            if conn.close_code == "duplicate":
                self.stats.superseded_total += 1  # the same client connected again
            else:
                self.stats.disconnected_total += 1
            self._release(s, "disconnected")

    def on_message(self, conn: Connection, message: WireMessage) -> None:
        """A message from a client."""
        s = session_of(conn)
        if s is None:
            return
        if isinstance(message, GPublish):
            self._enqueue_publish(s, message)
        elif isinstance(message, GSubscribe):
            self._subscribe(s, message)
        elif isinstance(message, GUnsubscribe):
            task = s.subs.pop(message.sid, None)
            if task is not None:
                task.cancel()
        elif isinstance(message, GCall):
            self._call(s, message)
        elif isinstance(message, GInvokeResult | GInvokeError):
            fut = s.invocations.pop(message.id, None)
            if fut is not None and not fut.done():
                if isinstance(message, GInvokeResult):
                    fut.set_result(message.payload)
                else:
                    fut.set_exception(RemoteError(message.code, message.message, retryable=message.retryable))
        elif isinstance(message, GAdvertise):
            self._advertise(s, message)
        elif isinstance(message, GUnadvertise):
            if message.name in s.advs:
                s.advs.discard(message.name)
                self._withdraw(s.client, message.name)

    # -- per-request handling --------------------------------------------------------------------

    def _refuse_limit(self, s: _Session, req_id: int, limit: str, capacity: int) -> None:
        self.stats.limit_refusals_total += 1
        self._send(s, GError(req_id, "limit", f"{limit} reached ({capacity})", limit=limit, capacity=capacity))

    def _enqueue_publish(self, s: _Session, m: GPublish) -> None:
        """Publishes run in order, one at a time per client (``node.publish`` may wait for a
        congested peer's drain); past ``max_client_pending_calls`` waiting, they are refused."""
        if len(s.publishes) >= self._cfg.max_client_pending_calls:
            self.stats.limit_refusals_total += 1
            self._send(s, GError(m.id, "overloaded", "too many publishes waiting at the gateway", retryable=True))
            return
        try:
            if isinstance(m.topic, str):
                self.budgets.touch_published(s.held, swarm_of(m.topic), self._now())
            self.budgets.take_bytes(s.held, len(m.payload))
        except LimitExceeded as exc:
            self.stats.limit_refusals_total += 1
            self._send(s, _error(m.id, exc))
            return
        s.publishes.append(m)
        if s.publisher is None:
            s.publisher = asyncio.ensure_future(self._publish_loop(s))

    async def _publish_loop(self, s: _Session) -> None:
        try:
            while s.publishes and s.open:
                m = s.publishes.popleft()
                self.budgets.give_bytes(s.held, len(m.payload))
                try:
                    await self._node.publish(m.topic, m.payload)
                except (QuicmeshError, ValueError, TypeError) as exc:
                    self._send(s, _error(m.id, exc))
                    continue
                if m.id:
                    self._send(s, GOk(m.id))
        finally:
            s.publisher = None

    async def _publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            with contextlib.suppress(QuicmeshError, ValueError, TypeError):
                await self._node.publish(topic, payload)

    def _call(self, s: _Session, m: GCall) -> None:
        if not self._room(s, s.calls, m.id, m.id, "call", "gateway.max_client_pending_calls",
                          self._cfg.max_client_pending_calls):
            return
        size = len(m.payload)
        try:
            self.budgets.take_bytes(s.held, size)
        except LimitExceeded as exc:
            self.stats.limit_refusals_total += 1
            self._send(s, _error(m.id, exc))
            return
        self.stats.calls_total += 1
        task = asyncio.ensure_future(self._run_call(s, m))
        s.calls[m.id] = task
        s.call_bytes[task] = size
        task.add_done_callback(functools.partial(forget_task, s.calls, m.id))
        task.add_done_callback(functools.partial(self._call_ended, s))

    def _call_ended(self, s: _Session, task: asyncio.Task[None]) -> None:
        size = s.call_bytes.pop(task, None)
        if size is not None:  # not released with the session already
            self.budgets.give_bytes(s.held, size)

    async def _run_call(self, s: _Session, m: GCall) -> None:
        timeout = self.budgets.clamp_timeout(m.timeout_ms / 1000.0)
        try:
            if self._providers.get(m.name):
                # another client of this gateway provides it: the node does not call itself
                async with asyncio.timeout(timeout):
                    reply = await self._invoke(m.name, m.payload)
            else:
                reply = await self._node.call(m.name, m.payload, timeout=timeout)
        except TimeoutError:
            self._send(s, GError(m.id, "timeout", f"{m.name}: no reply within {timeout:.3f}s"))
            return
        except (QuicmeshError, ValueError, TypeError) as exc:
            self._send(s, _error(m.id, exc))
            return
        self._send(s, GReply(m.id, reply))

    def _advertise(self, s: _Session, m: GAdvertise) -> None:
        cap = self._cfg.max_client_advertisements
        if m.name in s.advs:
            self._send(s, GOk(m.id))
            return
        if len(s.advs) >= cap:
            self._refuse_limit(s, m.id, "gateway.max_client_advertisements", cap)
            return
        total = self._cfg.max_clients_advertisements
        if m.name not in self._providers and len(self._providers) >= total:
            self._refuse_limit(s, m.id, "gateway.max_clients_advertisements", total)
            return
        s.advs.add(m.name)
        providers = self._providers.get(m.name)
        if providers is not None:
            providers.append(s.client)
            self._send(s, GOk(m.id))
            return
        self._providers.set(m.name, [s.client])  # bounded: one entry per client offering the name
        self._spawn(self._advertise_on_node(s, m))

    async def _advertise_on_node(self, s: _Session, m: GAdvertise) -> None:
        name = m.name

        async def handler(payload: bytes) -> bytes:
            return await self._invoke(name, payload)

        try:
            await self._node.advertise(name, handler)
        except QuicmeshError as exc:
            s.advs.discard(name)
            self._withdraw(s.client, name, unadvertise=False)
            self._send(s, _error(m.id, exc))
            return
        if name not in self._providers:  # every client withdrew while we advertised
            await self._node.unadvertise(name)
        self._send(s, GOk(m.id))

    def _withdraw(self, client: NodeId, name: str, *, unadvertise: bool = True) -> None:
        providers = self._providers.get(name)
        if providers is None:
            return
        with contextlib.suppress(ValueError):
            providers.remove(client)
        if not providers:
            self._providers.pop(name)
            if unadvertise and not self._stopped:
                self._spawn(self._unadvertise_on_node(name))

    async def _unadvertise_on_node(self, name: str) -> None:
        if name not in self._providers:  # nobody re-advertised it meanwhile
            await self._node.unadvertise(name)

    async def _invoke(self, name: str, payload: bytes) -> bytes:
        """The node's handler for a client-provided procedure: forward to one client."""
        s = self._pick(name)
        if s is None:
            if self._providers.get(name):
                raise RemoteError("overloaded", f"every client providing {name!r} is at its call limit", retryable=True)
            raise RemoteError("no_handler", f"no client provides {name!r} here", retryable=True)
        loop = asyncio.get_running_loop()
        inv_id = next(s.inv_ids)
        fut: asyncio.Future[bytes] = loop.create_future()
        s.invocations[inv_id] = fut
        self.stats.invocations_total += 1
        try:
            timeout_ms = int(self._node.config.rpc.default_timeout * 1000)
            if not self._send(s, GInvoke(inv_id, name, payload, timeout_ms), len(payload) + _FRAME_OVERHEAD):
                raise RemoteError("client_gone", "the providing client is gone", retryable=True)
            return await fut
        finally:
            s.invocations.pop(inv_id, None)

    def _pick(self, name: str) -> _Session | None:
        providers = self._providers.get(name)
        if not providers:
            return None
        n = len(providers)
        start = next(self._rr)
        cap = self._cfg.max_client_pending_calls
        for i in range(n):
            conn = self._transport.get_client(providers[(start + i) % n])
            s = session_of(conn) if conn is not None else None
            if s is not None and len(s.invocations) < cap:
                return s
        return None

    # -- sending and slow consumers --------------------------------------------------------------

    def _send(self, s: _Session, message: WireMessage, size: int = _FRAME_OVERHEAD) -> bool:
        """Queue ``message`` for the client; close it as a slow consumer past its byte budget."""
        if not s.open:
            return False
        conn = s.conn
        limit = self._cfg.max_pending_bytes - size
        if conn.pending_bound > limit and conn.pending_bytes > limit:
            self.stats.slow_consumer_pending_total += 1
            self._slow_consumer(s, f"more than {self._cfg.max_pending_bytes} bytes unsent")
            return False
        if not conn.send(message):
            self.stats.slow_consumer_pending_total += 1
            self._slow_consumer(s, "send buffer full")
            return False
        return True

    def _slow_consumer(self, s: _Session, why: str) -> None:
        if not s.open:
            return
        self.stats.slow_consumer_total += 1
        log.info("closing slow consumer %s: %s", s.client.short(), why)
        self._release(s, "slow_consumer")
        self._spawn(s.conn.close("slow_consumer", why))

    def _arm_sweep(self) -> None:
        if self._sweep_handle is not None or self._stopped or not self._held:
            return
        interval = min(1.0, self._cfg.write_stall_timeout / 4)
        self._sweep_handle = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Close clients whose unsent bytes have not decreased for ``write_stall_timeout``."""
        self._sweep_handle = None
        now = asyncio.get_running_loop().time()
        for s in self._open_sessions():
            pending = s.conn.pending_bytes
            # bytes QUIC put on the wire; a transport without that figure: a fall of the unsent bytes
            progress = getattr(s.conn, "sent_progress", -pending)
            if pending == 0:
                s.stall_since = None
            elif s.stall_since is None or progress > s.stall_mark:
                s.stall_since, s.stall_mark = now, progress
            elif now - s.stall_since >= self._cfg.write_stall_timeout:
                self.stats.slow_consumer_stalled_total += 1
                self._slow_consumer(s, f"writes stalled for {self._cfg.write_stall_timeout} s")
        self._arm_sweep()

    # -- release ---------------------------------------------------------------------------------

    def _release(self, s: _Session, why: str) -> None:
        """Drop session ``s`` and everything it holds (see the module docstring)."""
        if not s.open:
            return
        s.open = False
        self._held -= 1
        if s.conn.attachment is s:
            s.conn.attachment = None
        for task in list(s.subs.values()):
            task.cancel()
        s.subs.clear()
        for task in list(s.calls.values()):
            task.cancel()
        s.calls.clear()
        # #14: what the client published before it closed is published all the same
        leftover = [(m.topic, m.payload) for m in s.publishes]  # bounded: max_client_pending_calls
        s.publishes.clear()
        for _ in range(len(s.sub_swarms)):
            self.budgets.give_subscription()
        s.sub_swarms.clear()
        s.call_bytes.clear()
        self.budgets.release(s.held)
        if s.publisher is not None:
            s.publisher.cancel()
        if leftover and not self._stopped:
            self._spawn(self._publish_all(leftover))
        for fut in list(s.invocations.values()):
            if not fut.done():
                fut.set_exception(RemoteError("client_gone", f"providing client left ({why})", retryable=True))
        s.invocations.clear()
        for name in list(s.advs):
            self._withdraw(s.client, name)
        s.advs.clear()
        if self._sweep_handle is not None and not self._held:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    async def stop(self) -> None:
        """Release every session (the transport then closes the connections); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for s in self._open_sessions():
            self._release(s, "node stopping")
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        tasks = list(self._tasks.keys())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._providers.close()
        self._tasks.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        try:
            self._tasks.set(task, None)
        except LimitExceeded:  # cannot happen within the configured caps; the task still runs
            log.warning("gateway.tasks full: a background step runs untracked")
            return
        task.add_done_callback(self._tasks.pop)

    # -- observability ---------------------------------------------------------------------------

    def _open_sessions(self) -> list[_Session]:
        """The sessions of the clients held now (the transport's client table)."""
        return [s for conn in self._transport.clients() if (s := session_of(conn)) is not None]

    @property
    def clients(self) -> int:
        """Clients connected now."""
        return self._held

    def client_ids(self) -> list[NodeId]:
        """Node ids of the connected clients."""
        return [s.client for s in self._open_sessions()]

    def gauges(self) -> dict[str, float]:
        """Numbers for ``node.gauges()``: ``clients`` (exported as ``quicmesh_clients``) and the
        other numeric entries of :meth:`health` as ``gateway_<name>`` (``..._total`` ones are
        counters)."""
        out = {"clients": float(self.clients)}
        for k, v in self.health().items():
            if k != "clients" and isinstance(v, int) and not isinstance(v, bool):
                out[f"gateway_{k}"] = float(v)
        return out

    def health(self) -> dict[str, Any]:
        """Per-client structures (all back to zero once the clients left) and counters."""
        sessions = self._open_sessions()
        st = self.stats
        refused = self._node.transport.stats().refused_total.get("max_clients", 0)
        return {
            "enabled": self.enabled,
            "clients": len(sessions),
            "capacity": self._cfg.max_clients,
            "subscriptions": sum(len(s.subs) for s in sessions),
            "advertisements": sum(len(s.advs) for s in sessions),
            "provided_names": len(self._providers),
            "pending_calls": sum(len(s.calls) for s in sessions),
            "pending_publishes": sum(len(s.publishes) for s in sessions),
            "invocations": sum(len(s.invocations) for s in sessions),
            "pending_bytes": sum(s.conn.pending_bytes for s in sessions),
            "held_payload_bytes": self.budgets.pending_bytes,
            "client_topics": len(self.budgets.refs),
            "client_subscriptions": self.budgets.subscriptions,
            "shared_subscriptions": len(self._fans),
            "tasks": len(self._tasks),
            "accepted_total": st.accepted_total,
            "refused_total": refused,
            "disconnected_total": st.disconnected_total,
            "superseded_total": st.superseded_total,
            "slow_consumer_total": st.slow_consumer_total,
            "slow_consumer_pending_total": st.slow_consumer_pending_total,
            "slow_consumer_stalled_total": st.slow_consumer_stalled_total,
            "limit_refusals_total": st.limit_refusals_total,
            "messages_forwarded_total": st.messages_forwarded_total,
            "calls_total": st.calls_total,
            "invocations_total": st.invocations_total,
        }
