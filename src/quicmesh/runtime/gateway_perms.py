"""Permission checks of light clients at the gateway (see :mod:`quicmesh.runtime.gateway`).

Theory of operation
-------------------
A light client's permissions come from its client credential, verified by the transport at the
handshake and remembered by the node's :class:`~quicmesh.core.trust.Trust` for the client's key
(``permissions_of``; every action is allowed in an open realm, none without a known credential in
an authority realm). The gateway asks :meth:`ClientPermits.refuse` before it acts on a client's
``GPublish`` (``publish`` on the topic), ``GSubscribe`` (``subscribe`` on the pattern),
``GAdvertise`` (``advertise`` on the name) or ``GCall`` (``call`` on the name): a denied request
is answered with ``GError(code="permission_denied", action=..., subject=...)``, which the client
raises as :class:`~quicmesh.errors.PermissionDenied`, is counted by action in the node's guard
(``/metrics``) and reaches no one else. A subscription that is allowed but overlaps a deny rule
is filtered per message (:meth:`ClientPermits.delivery_filter`).

:class:`GuardedGateway` is the node's gateway with these checks: it answers a denied request
before the gateway sees it and drops a filtered topic's message before it is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import GatewayConfig
from ..core.gateway_messages import GAdvertise, GCall, GError, GMessage, GPublish, GSubscribe
from ..core.guard import Guard
from ..core.permissions import NOTHING, Action, Permissions
from ..core.rpc import DENIED_CODE
from ..core.wire import Message
from ..errors import PermissionDenied
from ..identity import NodeId
from .gateway import Gateway
from .gateway_budget import Session as _Session
from .gateway_budget import session_of as _session
from .gateway_host import GatewayHost
from .gateway_subs import FRAME_OVERHEAD as _FRAME_OVERHEAD
from .transport import Connection

__all__ = ["ClientPermits", "GuardedGateway", "denied_error"]


class ClientPermits:
    """What each light client may do, checked where its requests enter the gateway."""

    def __init__(self, guard: Guard, wall: Callable[[], float]) -> None:
        self._guard = guard
        self._wall = wall
        """Wall-clock seconds now (certificates are valid between two wall-clock times)."""

    def permissions(self, client: NodeId) -> Permissions | None:
        """The client's permissions (None: no valid credential known)."""
        return self._guard.trust.permissions_of(client, self._wall())

    def refuse(self, client: NodeId, message: Message) -> GError | None:
        """The ``GError`` answering ``message`` when ``client`` may not do what it asks (counted),
        else None."""
        if self._guard.trust.open:
            return None
        action: Action
        if isinstance(message, GPublish):
            action, subject = "publish", message.topic
        elif isinstance(message, GSubscribe):
            action, subject = "subscribe", message.pattern
        elif isinstance(message, GAdvertise):
            action, subject = "advertise", message.name
        elif isinstance(message, GCall):
            action, subject = "call", message.name
        else:
            return None
        if not isinstance(subject, str):
            return None  # malformed: the gateway's own checks answer it
        if Guard.allows(self.permissions(client), action, subject):
            return None
        err = self._guard.deny(action, subject)
        return GError(message.id, DENIED_CODE, str(err)[:1000], action=action, subject=subject[:1000])

    def delivery_filter(self, client: NodeId) -> Permissions | None:
        """Permissions each delivered topic must pass (``allows("subscribe", topic)``), or None
        when every topic of an allowed subscription may be delivered."""
        if self._guard.trust.open:
            return None
        perms = self.permissions(client)
        if perms is None:
            return NOTHING
        return perms if perms.filters() else None


def denied_error(req_id: int, exc: PermissionDenied) -> GError:
    """The ``GError`` standing for ``exc`` (the client raises it as ``PermissionDenied``)."""
    return GError(req_id, DENIED_CODE, str(exc)[:1000], action=exc.action, subject=exc.subject[:1000])


class GuardedGateway(Gateway):
    """The gateway, checking every client request against the client's permissions (see the
    module docstring)."""

    def __init__(self, node: GatewayHost, config: GatewayConfig, permits: ClientPermits) -> None:
        super().__init__(node, config)
        self.permits = permits

    def on_message(self, conn: Connection, message: Message) -> None:
        """A message from a client: refused at once when its permissions deny it."""
        s = _session(conn)
        if s is not None:
            denied = self.permits.refuse(s.client, message)
            if denied is not None:
                self._send(s, denied)
                return
        super().on_message(conn, message)

    def _send(self, s: _Session, message: Message, size: int = _FRAME_OVERHEAD) -> bool:
        if type(message) is GMessage:
            flt = self.permits.delivery_filter(s.client)
            if flt is not None and not flt.allows("subscribe", message.topic):
                return True  # a topic the client may not see: skipped, the subscription goes on
        return super()._send(s, message, size)
