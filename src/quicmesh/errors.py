"""Every error quicmesh raises on purpose.

All of them derive from :class:`QuicmeshError`, so ``except quicmesh.QuicmeshError`` catches
anything the library signals deliberately. Errors that describe bad input also derive from
:class:`ValueError`, so callers that already catch ``ValueError`` keep working.

This module imports nothing with I/O: the sans-IO core raises these too.
"""

from __future__ import annotations

__all__ = [
    "AdmissionRefused",
    "AuthenticationFailed",
    "BacklinkMismatch",
    "CallTimeout",
    "ConfigError",
    "ConnectionLost",
    "ContainerFull",
    "DecodeError",
    "ForeignRealm",
    "FrameTooLarge",
    "HandshakeTimeout",
    "IdentityError",
    "InsecureKeyFile",
    "InvalidNodeId",
    "InvalidOperation",
    "InvalidTopic",
    "LimitExceeded",
    "MalformedFrame",
    "MessageTooLarge",
    "NoProvider",
    "NodeClosed",
    "NotAdmitted",
    "OperationTooLarge",
    "Overloaded",
    "PayloadMismatch",
    "PeerIdMismatch",
    "PermissionDenied",
    "QuicmeshError",
    "RealmMismatch",
    "RemoteError",
    "RpcError",
    "SeqGap",
    "SignatureMismatch",
    "SubscriptionClosed",
    "TimestampAhead",
    "TransportError",
    "TrustError",
    "UnknownMessageType",
    "UnknownVersion",
]


class QuicmeshError(Exception):
    """Base class of every error quicmesh raises on purpose."""


# -- configuration -------------------------------------------------------------------------------


class ConfigError(QuicmeshError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    ``key`` names the offending setting in dotted form (``transport.max_connections``).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# -- identity ------------------------------------------------------------------------------------


class IdentityError(QuicmeshError):
    """A key, node id, certificate or signature is not acceptable."""


class InvalidNodeId(IdentityError, ValueError):
    """Text or bytes that do not encode a node id (wrong length, alphabet or checksum)."""


class InsecureKeyFile(IdentityError, PermissionError):
    """A private key file is readable by group or others; fix with ``chmod 600``."""


# -- bounded containers --------------------------------------------------------------------------


class LimitExceeded(QuicmeshError):
    """A configured limit was reached and the request was refused.

    ``limit`` names the limit (``rpc.max_pending_calls``), ``capacity`` its value.
    """

    def __init__(self, limit: str, capacity: int, message: str | None = None) -> None:
        super().__init__(message or f"{limit} reached (capacity {capacity})")
        self.limit = limit
        self.capacity = capacity


class ContainerFull(LimitExceeded):
    """A bounded container with the ``reject`` overflow policy is full."""


# -- wire format ---------------------------------------------------------------------------------


class DecodeError(QuicmeshError, ValueError):
    """Bytes received from a peer are not a valid frame or message. Nothing was delivered."""


class FrameTooLarge(DecodeError):
    """A length prefix announces more than the maximum frame size; the body was not read."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the maximum of {limit}")
        self.length = length
        self.limit = limit


class MalformedFrame(DecodeError):
    """A frame whose bytes are not a valid encoding of any message."""


class UnknownMessageType(DecodeError):
    """A well-formed frame carrying a message tag this version does not know."""


class InvalidTopic(QuicmeshError, ValueError):
    """A topic or subscription pattern that is not well formed (empty or blank segments,
    a wildcard in a topic, ``>`` not last, or a pattern whose first segment is a wildcard)."""


class MessageTooLarge(QuicmeshError, ValueError):
    """A payload larger than the configured maximum was offered for sending."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the maximum of {limit}")
        self.size = size
        self.limit = limit


# -- transport -----------------------------------------------------------------------------------


class TransportError(QuicmeshError):
    """A connection could not be made or was lost."""


class PeerIdMismatch(TransportError):
    """The peer proved a different node id than the one the dialer expected."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"expected peer {expected}, but it proved {actual}")
        self.expected = expected
        self.actual = actual


class AuthenticationFailed(TransportError):
    """The peer's certificate or identity proof did not check out."""


class RealmMismatch(TransportError):
    """The peer belongs to another realm; no state was kept for it."""


class AdmissionRefused(TransportError):
    """The peer refused the connection because a limit is reached; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"admission refused: {reason}")
        self.reason = reason


class NotAdmitted(AdmissionRefused):
    """The peer is not an admitted member of the realm: its certificate (or a light client's
    credential) is missing, expired, revoked, of another realm or of another node; ``reason``
    says which. The refusing side tells nothing about its realm."""

    def __init__(self, reason: str) -> None:
        TransportError.__init__(self, f"not admitted: {reason}")
        self.reason = reason


# -- trust ---------------------------------------------------------------------------------------


class TrustError(QuicmeshError, ValueError):
    """A realm file, certificate, credential or revocation list is malformed or does not verify."""


class PermissionDenied(QuicmeshError):
    """The actor's certificate or credential does not allow ``action`` on ``subject``
    (publish, subscribe, advertise, call or log). Nothing was sent to anyone."""

    def __init__(self, action: str, subject: str) -> None:
        super().__init__(f"permission denied: {action} {subject!r:.120}")
        self.action = action
        self.subject = subject


class HandshakeTimeout(TransportError):
    """The connection handshake did not complete within the configured time."""


class ConnectionLost(TransportError):
    """The connection closed while an operation depended on it."""


class NodeClosed(QuicmeshError):
    """The node (or client) is stopped; the operation cannot run."""


class SubscriptionClosed(QuicmeshError):
    """The subscription was closed (by the user, or because its node stopped)."""


# -- RPC -----------------------------------------------------------------------------------------


class RpcError(QuicmeshError):
    """Base class of errors that end a remote procedure call."""


class NoProvider(RpcError):
    """No reachable node advertises the procedure."""


class CallTimeout(RpcError, TimeoutError):
    """The call's deadline passed before a reply arrived."""


class Overloaded(RpcError):
    """A limit on the caller or the callee (pending calls, concurrent handlers) is reached."""


class RemoteError(RpcError):
    """The remote handler raised. ``code`` is a short machine-readable string.

    The callee's traceback is never sent. A handler raises ``RemoteError(code, message,
    retryable=True)`` itself to let the caller retry on another provider.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


# -- replicated logs -----------------------------------------------------------------------------


class InvalidOperation(QuicmeshError, ValueError):
    """A log operation failed validation; it was neither stored nor forwarded."""


class SignatureMismatch(IdentityError, InvalidOperation):
    """A signature does not verify against the claimed public key."""


class BacklinkMismatch(InvalidOperation):
    """The operation's backlink is not the hash of the previous operation of its log."""


class SeqGap(InvalidOperation):
    """The operation's sequence number does not follow the log's latest one."""


class PayloadMismatch(InvalidOperation):
    """The payload's size or hash differs from what the header states."""


class OperationTooLarge(InvalidOperation):
    """The operation or its payload exceeds the configured maximum size."""


class UnknownVersion(InvalidOperation):
    """The operation header has a version this release does not understand."""


class ForeignRealm(InvalidOperation):
    """The operation was signed for another realm than the receiver's."""


class TimestampAhead(InvalidOperation):
    """The operation's timestamp runs further ahead of the receiver's clock than
    ``store.max_clock_skew`` allows (it may be accepted later, once the clock caught up)."""
