"""Wire messages between a light client and its gateway node (tags prefixed ``g.``).

A client holds one connection (``Hello.role == "client"``) to a gateway node, which joins the
mesh on its behalf. Requests carry a client-chosen ``id`` that is unique among the client's
requests in flight; the gateway answers each with :class:`GOk`, :class:`GReply` or
:class:`GError` carrying the same ``id``. Add :data:`GATEWAY_MESSAGES` to the node's codec.
"""

from __future__ import annotations

from .wire import Message

__all__ = [
    "GATEWAY_MESSAGES",
    "GAdvertise",
    "GCall",
    "GError",
    "GInvoke",
    "GInvokeError",
    "GInvokeResult",
    "GMessage",
    "GOk",
    "GPublish",
    "GReply",
    "GSubscribe",
    "GUnadvertise",
    "GUnsubscribe",
]


class GSubscribe(Message, tag="g.sub"):
    """Client -> gateway: subscribe to ``pattern``; deliveries carry ``sid`` (the client's id)."""

    id: int
    sid: int
    pattern: str


class GUnsubscribe(Message, tag="g.unsub"):
    """Client -> gateway: end subscription ``sid`` (no answer)."""

    sid: int


class GMessage(Message, tag="g.msg"):
    """Gateway -> client: a topic message for subscription ``sid``."""

    sid: int
    topic: str
    payload: bytes
    publisher: bytes
    seq: int


class GPublish(Message, tag="g.pub"):
    """Client -> gateway: publish. Failures are answered with :class:`GError`; success with
    :class:`GOk` only when ``id`` is not 0 (the client asked for a confirmation)."""

    id: int
    topic: str
    payload: bytes


class GAdvertise(Message, tag="g.adv"):
    """Client -> gateway: offer procedure ``name`` to the mesh through the gateway."""

    id: int
    name: str


class GUnadvertise(Message, tag="g.unadv"):
    """Client -> gateway: withdraw procedure ``name`` (no answer)."""

    name: str


class GCall(Message, tag="g.call"):
    """Client -> gateway: call procedure ``name`` on the mesh within ``timeout_ms``."""

    id: int
    name: str
    payload: bytes
    timeout_ms: int


class GOk(Message, tag="g.ok"):
    """Gateway -> client: request ``id`` (subscribe, advertise) succeeded."""

    id: int


class GReply(Message, tag="g.rep"):
    """Gateway -> client: the reply to call ``id``."""

    id: int
    payload: bytes


class GError(Message, tag="g.err"):
    """Gateway -> client: request ``id`` failed.

    ``code``: ``limit`` (with ``limit`` naming the cap and ``capacity`` its value),
    ``no_provider``, ``timeout``, ``overloaded``, ``connection_lost``, ``invalid``, ``invalid_topic``,
    ``too_large``, ``closed``, ``permission_denied`` (the client's credential does not allow
    ``action`` on ``subject``: :class:`~quicmesh.errors.PermissionDenied` on the client),
    or a remote handler's own code (``remote`` is then true).
    """

    id: int
    code: str
    message: str
    retryable: bool = False
    limit: str = ""
    capacity: int = 0
    remote: bool = False
    action: str = ""
    subject: str = ""


class GInvoke(Message, tag="g.inv"):
    """Gateway -> client: run the client's procedure ``name`` for a mesh caller."""

    id: int
    name: str
    payload: bytes
    timeout_ms: int


class GInvokeResult(Message, tag="g.res"):
    """Client -> gateway: the result of invocation ``id``."""

    id: int
    payload: bytes


class GInvokeError(Message, tag="g.ierr"):
    """Client -> gateway: invocation ``id`` failed with ``code``."""

    id: int
    code: str
    message: str
    retryable: bool = False


GATEWAY_MESSAGES: tuple[type[Message], ...] = (
    GSubscribe,
    GUnsubscribe,
    GMessage,
    GPublish,
    GAdvertise,
    GUnadvertise,
    GCall,
    GOk,
    GReply,
    GError,
    GInvoke,
    GInvokeResult,
    GInvokeError,
)
