"""The typed exception a gateway's ``GError`` stands for (light clients)."""

from __future__ import annotations

from ..core.gateway_messages import GError
from ..errors import (
    CallTimeout,
    ConnectionLost,
    InvalidTopic,
    LimitExceeded,
    NodeClosed,
    NoProvider,
    Overloaded,
    PermissionDenied,
    QuicmeshError,
    RemoteError,
)

__all__ = ["gateway_error"]


def gateway_error(m: GError) -> QuicmeshError:
    """The typed exception a ``GError`` stands for."""
    if m.remote:
        return RemoteError(m.code, m.message, retryable=m.retryable)
    code = m.code
    if code == "limit":
        return LimitExceeded(m.limit, m.capacity, m.message)
    if code == "no_provider":
        return NoProvider(m.message)
    if code == "timeout":
        return CallTimeout(m.message)
    if code == "overloaded":
        return Overloaded(m.message)
    if code == "connection_lost":
        return ConnectionLost(m.message)
    if code == "closed":
        return NodeClosed(m.message)
    if code == "invalid_topic":
        return InvalidTopic(m.message)
    if code == "permission_denied":  # the client's credential does not allow it
        return PermissionDenied(m.action, m.subject)
    if code == "invalid":
        from ..errors import ConfigError

        return ConfigError("request", m.message)
    return RemoteError(code, m.message, retryable=m.retryable)
