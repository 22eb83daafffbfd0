"""The messages nodes exchange, grouped by protocol. ``ALL_MESSAGES`` is what a node's codec
speaks; protocol modules that define more messages add their list here.

Field names are short on purpose: they travel in every frame.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .failure import FAILURE_MESSAGES
from .gateway_messages import GATEWAY_MESSAGES
from .groups_messages import GROUP_MESSAGES
from .log_messages import LOG_MESSAGES
from .mesh_messages import MESH_MESSAGES
from .punch_messages import PUNCH_MESSAGES
from .registry_messages import REGISTRY_MESSAGES
from .relay_messages import RELAY_MESSAGES
from .wire import MAX_WIRE_LIST, Address, Code, Message, Name, NodeIdBytes, Text, UInt

_Token = Annotated[bytes, msgspec.Meta(max_length=64)]
"""A nonce or instance id (at most 64 bytes)."""
_Signature = Annotated[bytes, msgspec.Meta(max_length=128)]
"""An Ed25519 signature (64 bytes; room for another scheme)."""
_Cert = Annotated[bytes, msgspec.Meta(max_length=8192)]
"""An encoded certificate (``core.trust.MAX_CERT_BYTES``)."""
_RevocationBytes = Annotated[bytes, msgspec.Meta(max_length=16 * 1024)]
"""A revocation list sent in a handshake (``core.handshake.MAX_HANDSHAKE_LIST``)."""

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

    version: UInt
    realm: Name
    node_id: NodeIdBytes
    expected: NodeIdBytes | None = None
    instance: _Token = b""
    """Random per process start: a peer that shows a new instance has restarted."""
    role: Code = "node"
    """``"node"`` (a mesh peer) or ``"client"`` (a light client served by the gateway)."""
    cert: _Cert = b""
    """Authority mode: the dialer's encoded certificate (member or light client); empty otherwise."""
    revocations: UInt = 0
    """Authority mode: the version of the dialer's revocation list (0: none)."""
    obs: Address = ""
    """#13: the address the dialer dialed the listener at (``""``: not told)."""
    proof: _Signature = b""
    """#14: the dialer's signature over the connection's binding (``core.handshake.early_transcript``);
    empty: it waits for a ``Challenge``. A listener without the binding ignores it."""


class Challenge(Message, tag="chal"):
    """Listener -> dialer: a fresh nonce for the dialer to sign (and, in authority mode, the
    listener's member certificate, which the dialer checks before it proves anything)."""

    nonce: _Token
    cert: _Cert = b""
    revocation_list: _RevocationBytes = b""
    """Authority mode: the listener's revocation list when the dialer's ``Hello`` showed an older
    version (a node that was away catches up at its first handshake); verified before use."""
    obs: Address = ""
    """#13: the address the listener sees the dialer at (its NAT mapping; ``""``: not told)."""


class Proof(Message, tag="proof"):
    """Dialer -> listener: Ed25519 signature over the auth transcript."""

    signature: _Signature


class Welcome(Message, tag="welcome"):
    """Listener -> dialer: authenticated and admitted."""

    node_id: NodeIdBytes
    instance: _Token = b""
    cert: _Cert = b""
    """#14, after a proof in the ``Hello`` only: what the ``Challenge`` would have carried."""
    revocation_list: _RevocationBytes = b""
    obs: Address = ""


class Refuse(Message, tag="refuse"):
    """Either side: the connection is refused or closed; ``code`` is machine-readable."""

    code: Code
    reason: Text


class Ping(Message, tag="ping"):
    seq: UInt


class Pong(Message, tag="pong"):
    seq: UInt


HANDSHAKE_MESSAGES: tuple[type[Message], ...] = (Hello, Challenge, Proof, Welcome, Refuse)

# -- direct RPC --------------------------------------------------------------------------------------


class Services(Message, tag="svc"):
    """The sender's full set of advertised procedure names (replaces the previous set)."""

    names: Annotated[list[Name], msgspec.Meta(max_length=MAX_WIRE_LIST)]


class Request(Message, tag="req"):
    """Call ``name`` with ``payload``; the callee abandons it after ``timeout_ms``."""

    id: UInt
    name: Name
    payload: bytes
    timeout_ms: UInt


class Reply(Message, tag="rep"):
    id: UInt
    payload: bytes


class ReplyError(Message, tag="err"):
    """The call failed on the callee. ``code``: "overloaded", "no_handler", "timeout", or the
    handler's own code."""

    id: UInt
    code: Code
    message: Text
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
    *GROUP_MESSAGES,
    *RELAY_MESSAGES,  # #13 (relay)
    *PUNCH_MESSAGES,
)
