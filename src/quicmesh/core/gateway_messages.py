"""Wire messages between a light client and its gateway node (tags prefixed ``g.``).

A client holds one connection (``Hello.role == "client"``) to a gateway node, which joins the
mesh on its behalf. Requests carry a client-chosen ``id`` that is unique among the client's
requests in flight; the gateway answers each with :class:`GOk`, :class:`GReply` or
:class:`GError` carrying the same ``id``. Add :data:`GATEWAY_MESSAGES` to the node's codec.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .grammar import MAX_TOPIC_LEN, check_pattern, check_topic
from .wire import Code, Message, Name, NodeIdBytes, Text, UInt

_Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOPIC_LEN)]
_Group = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$")]
"""A work-queue group name (``""``: none; see :mod:`quicmesh.core.groups`)."""

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

    id: UInt
    sid: UInt
    pattern: _Topic
    group: _Group = ""
    """Join this work-queue group (the gateway node holds the membership; a message is taken
    when forwarded to the client); ``""``: an ordinary subscription."""

    def __post_init__(self) -> None:
        check_pattern(self.pattern)


class GUnsubscribe(Message, tag="g.unsub"):
    """Client -> gateway: end subscription ``sid`` (no answer)."""

    sid: UInt


class GMessage(Message, tag="g.msg"):
    """Gateway -> client: a topic message for subscription ``sid``."""

    sid: UInt
    topic: _Topic
    payload: bytes
    publisher: NodeIdBytes
    seq: UInt

    def __post_init__(self) -> None:
        check_topic(self.topic)


class GPublish(Message, tag="g.pub"):
    """Client -> gateway: publish. Failures are answered with :class:`GError`; success with
    :class:`GOk` only when ``id`` is not 0 (the client asked for a confirmation)."""

    id: UInt
    topic: _Topic
    payload: bytes

    def __post_init__(self) -> None:
        check_topic(self.topic)


class GAdvertise(Message, tag="g.adv"):
    """Client -> gateway: offer procedure ``name`` to the mesh through the gateway."""

    id: UInt
    name: Name


class GUnadvertise(Message, tag="g.unadv"):
    """Client -> gateway: withdraw procedure ``name`` (no answer)."""

    name: Name


class GCall(Message, tag="g.call"):
    """Client -> gateway: call procedure ``name`` on the mesh within ``timeout_ms``."""

    id: UInt
    name: Name
    payload: bytes
    timeout_ms: UInt


class GOk(Message, tag="g.ok"):
    """Gateway -> client: request ``id`` (subscribe, advertise) succeeded."""

    id: UInt


class GReply(Message, tag="g.rep"):
    """Gateway -> client: the reply to call ``id``."""

    id: UInt
    payload: bytes


class GError(Message, tag="g.err"):
    """Gateway -> client: request ``id`` failed.

    ``code``: ``limit`` (with ``limit`` naming the cap and ``capacity`` its value),
    ``no_provider``, ``timeout``, ``overloaded``, ``connection_lost``, ``invalid``, ``invalid_topic``,
    ``too_large``, ``closed``, ``permission_denied`` (the client's credential does not allow
    ``action`` on ``subject``: :class:`~quicmesh.errors.PermissionDenied` on the client),
    or a remote handler's own code (``remote`` is then true).
    """

    id: UInt
    code: Code
    message: Text
    retryable: bool = False
    limit: Code = ""
    capacity: UInt = 0
    remote: bool = False
    action: str = ""
    subject: str = ""


class GInvoke(Message, tag="g.inv"):
    """Gateway -> client: run the client's procedure ``name`` for a mesh caller."""

    id: UInt
    name: Name
    payload: bytes
    timeout_ms: UInt


class GInvokeResult(Message, tag="g.res"):
    """Client -> gateway: the result of invocation ``id``."""

    id: UInt
    payload: bytes


class GInvokeError(Message, tag="g.ierr"):
    """Client -> gateway: invocation ``id`` failed with ``code``."""

    id: UInt
    code: Code
    message: Text
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
