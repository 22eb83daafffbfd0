"""The messages nodes exchange, grouped by protocol. ``ALL_MESSAGES`` is what a node's codec
speaks; protocol modules that define more messages add their list here.

Field names are short on purpose: they travel in every frame.
"""

from __future__ import annotations

from .failure import FAILURE_MESSAGES
from .gateway_messages import GATEWAY_MESSAGES
from .log_messages import LOG_MESSAGES
from .mesh_messages import MESH_MESSAGES
from .registry_messages import REGISTRY_MESSAGES
from .wire import Message

__all__ = [
    "ALL_MESSAGES",
    "HANDSHAKE_MESSAGES",
    "Challenge",
    "Hello",
    "Ping",
    "Pong",
    "Proof",
    "Refuse",
    "Reply",
    "ReplyError",
    "Request",
    "Services",
    "Welcome",
]

# -- connection handshake (after TLS): see runtime/quic.py for the scheme --------------------------


class Hello(Message, tag="hello"):
    """Dialer -> listener, first frame: who I am, whom I expect, which realm."""

    version: int
    realm: str
    node_id: bytes
    expected: bytes | None = None
    instance: bytes = b""
    """Random per process start: a peer that shows a new instance has restarted."""
    role: str = "node"
    """``"node"`` (a mesh peer) or ``"client"`` (a light client served by the gateway)."""


class Challenge(Message, tag="chal"):
    """Listener -> dialer: a fresh nonce for the dialer to sign."""

    nonce: bytes


class Proof(Message, tag="proof"):
    """Dialer -> listener: Ed25519 signature over the auth transcript."""

    signature: bytes


class Welcome(Message, tag="welcome"):
    """Listener -> dialer: authenticated and admitted."""

    node_id: bytes
    instance: bytes = b""


class Refuse(Message, tag="refuse"):
    """Either side: the connection is refused or closed; ``code`` is machine-readable."""

    code: str
    reason: str


class Ping(Message, tag="ping"):
    seq: int


class Pong(Message, tag="pong"):
    seq: int


HANDSHAKE_MESSAGES: tuple[type[Message], ...] = (Hello, Challenge, Proof, Welcome, Refuse)

# -- direct RPC --------------------------------------------------------------------------------------


class Services(Message, tag="svc"):
    """The sender's full set of advertised procedure names (replaces the previous set)."""

    names: list[str]


class Request(Message, tag="req"):
    """Call ``name`` with ``payload``; the callee abandons it after ``timeout_ms``."""

    id: int
    name: str
    payload: bytes
    timeout_ms: int


class Reply(Message, tag="rep"):
    id: int
    payload: bytes


class ReplyError(Message, tag="err"):
    """The call failed on the callee. ``code``: "overloaded", "no_handler", "timeout", or the
    handler's own code."""

    id: int
    code: str
    message: str
    retryable: bool = False


ALL_MESSAGES: tuple[type[Message], ...] = (
    *HANDSHAKE_MESSAGES,
    Ping,
    Pong,
    Services,
    Request,
    Reply,
    ReplyError,
    *LOG_MESSAGES,
    *GATEWAY_MESSAGES,
    *MESH_MESSAGES,
    *REGISTRY_MESSAGES,
    *FAILURE_MESSAGES,
)
