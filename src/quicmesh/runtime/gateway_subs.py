"""The gateway's client subscriptions (see :mod:`quicmesh.runtime.gateway`).

Theory of operation
-------------------
Light clients of one gateway often watch the same topics (a dashboard per operator, a fleet of
devices on their command topic). A :class:`Fan` holds **one** node subscription per pattern for
every client subscription to that pattern that names no work-queue group, and one task that
reads it and writes each message to each member's client (a ``GMessage`` with the member's
``sid``): a message costs one queue put and one task step however many clients watch it, and a
client subscription costs a :class:`Member` instead of a node subscription, its bounded queue
and a forwarding task.

A member joins at once when its fan's node subscription is open (its ``GOk`` first, then the
next message), or waits with the others while it opens; a failed open answers each member with
the node's error. A member leaves when its client unsubscribes, is closed as a slow consumer or
goes; it gives back its budgets there and then. The last member's leave takes the fan out of the
table and cancels its task, which closes the node subscription (the node stops subscribing to a
pattern no one else wants); a client that subscribes to the pattern again meanwhile gets a new
fan. Every message goes to the members present when it is read; one that joins later gets only
later messages, as a node subscription opened then would; one that left gets none after.

A fan takes every message waiting in its subscription at once and writes them client by client,
so each client's frames leave in the same flush (written message by message, each flush carried
one or two frames: 5x the CPU per delivery). It writes to every member in the step in which it
takes the messages, as the task per client subscription it replaces did (all of them ready in one
loop iteration): yielding to the loop between members let new deliveries outrun it, and its
queue, shared by every member, dropped (a reading client lost 120 of 3,000 messages while another
stopped reading, in ``test_gateway.py``'s stalled-writes test).

A work-queue group member must get its own share of the group's messages, so a subscription
with ``group`` keeps a node subscription and a task of its own (:meth:`Subscriptions._forward`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping

from ..config import GatewayConfig
from ..core.gateway_messages import GError, GMessage, GOk, GSubscribe
from ..core.topics import swarm_of
from ..core.wire import Message as WireMessage
from ..errors import LimitExceeded, QuicmeshError
from .gateway_budget import ClientBudgets, GatewayStats, SubHandle, forget_task
from .gateway_budget import Session as _Session
from .gateway_budget import error_frame as _error
from .gateway_host import GatewayHost
from .handles import QueueHandle
from .message import Message

__all__ = ["FRAME_OVERHEAD", "Fan", "Member", "Subscriptions"]

FRAME_OVERHEAD = 64
"""Bytes added to a payload when estimating a ``GMessage`` frame (header, tag, field names)."""



class Member:
    """One client subscription served by a :class:`Fan`: what its session holds under ``sid``."""

    __slots__ = ("fan", "req", "session", "sid")

    def __init__(self, session: _Session, sid: int, req: int) -> None:
        self.session = session
        self.sid = sid
        self.req = req
        """The ``GSubscribe`` request to answer with ``GOk`` once the fan is open (0: answered)."""
        self.fan: Fan | None = None

    def cancel(self) -> bool:
        """Leave the fan (unsubscribed, or the client gone); ``False`` when already left."""
        fan, self.fan = self.fan, None
        if fan is None:
            return False
        fan.leave(self)
        return True


class Fan:
    """One node subscription to ``pattern`` shared by its :class:`Member` client subscriptions."""

    __slots__ = ("_host", "members", "pattern", "sub", "task")

    def __init__(self, host: Subscriptions, pattern: str) -> None:
        self._host = host
        self.pattern = pattern
        self.members: dict[Member, None] = {}  # bounded: client subscriptions (gateway.max_clients_subscriptions)
        self.sub: QueueHandle[Message] | None = None
        """The node subscription once open."""
        self.task: asyncio.Task[None] | None = asyncio.ensure_future(self._run())
        """Until it ends: a finished task keeps its exception (a cancellation, with the traceback
        of this fan's frames, whose locals reach the clients' sessions and connections), so the
        fan lets go of it, leaving no reference cycle for the collector."""
        self.task.add_done_callback(self._ended)

    def join(self, m: Member) -> None:
        """Add ``m``; answered at once when the node subscription is open."""
        m.fan = self
        self.members[m] = None
        if self.sub is not None:
            self._ok(m)

    def leave(self, m: Member) -> None:
        """``m`` left (:meth:`Member.cancel`): its budgets go back; the last one ends the fan."""
        self.members.pop(m, None)
        host = self._host
        host._member_left(m)
        if not self.members:
            if host._fans.get(self.pattern) is self:
                del host._fans[self.pattern]
            if self.task is not None:
                self.task.cancel()

    def _ended(self, _task: asyncio.Task[None]) -> None:
        self.task = None

    def _ok(self, m: Member) -> None:
        req, m.req = m.req, 0
        if not self._host._send(m.session, GOk(req)):
            m.cancel()

    async def _run(self) -> None:
        host = self._host
        try:
            sub = await host._node.subscribe(self.pattern)
        except QuicmeshError as exc:
            for m in list(self.members):
                host._send(m.session, _error(m.req, exc))
                m.cancel()
            return
        self.sub = sub
        try:
            for m in list(self.members):
                self._ok(m)
            send, stats = host._send, host.stats
            async for first in sub:
                batch = [first]
                while sub.pending:  # what waits is taken without a wait (at most the queue's size)
                    batch.append(await sub.__anext__())
                items = [(msg.topic, msg.payload, msg.sender.raw, msg.seq,
                          len(msg.payload) + len(msg.topic) + FRAME_OVERHEAD) for msg in batch]
                for m in list(self.members):  # member by member: each client's frames leave together
                    if m.fan is not self:  # left since (a slow consumer closed by an earlier send)
                        continue
                    s, sid = m.session, m.sid
                    for topic, payload, publisher, seq, size in items:
                        if not send(s, GMessage(sid, topic, payload, publisher, seq), size):
                            m.cancel()
                            break
                        stats.messages_forwarded_total += 1
                if not self.members:
                    return
        finally:
            self.sub = None
            await sub.close()


class Subscriptions:
    """The gateway's subscription handling (a base of :class:`~.gateway.Gateway`; see the module
    docstring)."""

    _node: GatewayHost
    _cfg: GatewayConfig
    stats: GatewayStats
    budgets: ClientBudgets
    _fans: dict[str, Fan]
    """Pattern -> its fan (opening or open)."""
    _fan_members = 0
    """Client subscriptions served by fans now."""

    def _send(self, s: _Session, message: WireMessage, size: int = FRAME_OVERHEAD) -> bool:
        raise NotImplementedError

    def _refuse_limit(self, s: _Session, req_id: int, limit: str, capacity: int) -> None:
        raise NotImplementedError

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def client_subscriptions(self) -> int:
        """Node subscriptions held (or being opened) for clients: they do not count against the
        node's own ``pubsub.max_subscriptions``. A fan is one, whatever its members."""
        return self.budgets.subscriptions - self._fan_members + len(self._fans)

    def _room(self, s: _Session, held: Mapping[int, object], key: int, req_id: int, what: str, limit: str,
              cap: int) -> bool:
        """Whether a client's new ``what`` under ``key`` fits among the ones it ``held`` (an id
        in use and the per-client cap ``limit`` are answered here)."""
        if key in held:
            self._send(s, GError(req_id, "invalid", f"{what} id {key} in use"))
            return False
        if len(held) >= cap:
            self._refuse_limit(s, req_id, limit, cap)
            return False
        return True

    def _subscribe(self, s: _Session, m: GSubscribe) -> None:
        if not self._room(s, s.subs, m.sid, m.id, "subscription", "gateway.max_client_subscriptions",
                          self._cfg.max_client_subscriptions):
            return
        swarm = swarm_of(m.pattern) if isinstance(m.pattern, str) else ""
        try:
            self.budgets.take_subscription()
            try:
                self.budgets.hold_topic(s.held, swarm, self._now())
            except LimitExceeded:
                self.budgets.give_subscription()
                raise
        except LimitExceeded as exc:
            self.stats.limit_refusals_total += 1
            self._send(s, _error(m.id, exc))
            return
        if m.group:
            task = asyncio.ensure_future(self._forward(s, m))
            s.subs[m.sid] = task
            s.sub_swarms[task] = swarm
            task.add_done_callback(functools.partial(forget_task, s.subs, m.sid))
            task.add_done_callback(functools.partial(self._subscription_ended, s))
            return
        member = Member(s, m.sid, m.id)
        s.subs[m.sid] = member
        s.sub_swarms[member] = swarm
        self._fan_members += 1
        fan = self._fans.get(m.pattern)
        if fan is None:
            fan = self._fans[m.pattern] = Fan(self, m.pattern)
        fan.join(member)

    def _member_left(self, m: Member) -> None:
        self._fan_members -= 1
        s = m.session
        if s.subs.get(m.sid) is m:
            del s.subs[m.sid]
        self._subscription_ended(s, m)

    def _subscription_ended(self, s: _Session, handle: SubHandle) -> None:
        swarm = s.sub_swarms.pop(handle, None)
        if swarm is not None:  # not released with the session already
            self.budgets.give_subscription()
            self.budgets.drop_topic(s.held, swarm)

    async def _forward(self, s: _Session, m: GSubscribe) -> None:
        """Hold one node subscription for a work-queue group member and forward its messages."""
        try:
            sub = await self._node.subscribe(m.pattern, group=m.group or None)
        except QuicmeshError as exc:
            self._send(s, _error(m.id, exc))
            return
        try:
            self._send(s, GOk(m.id))
            sid = m.sid
            async for msg in sub:
                if not s.open:
                    return
                frame = GMessage(sid, msg.topic, msg.payload, msg.sender.raw, msg.seq)
                if not self._send(s, frame, len(msg.payload) + len(msg.topic) + FRAME_OVERHEAD):
                    return
                self.stats.messages_forwarded_total += 1
        finally:
            await sub.close()
