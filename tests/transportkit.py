"""Shared by the transport-level tests: a protocol that ignores whatever a connection brings."""

from __future__ import annotations

from quicmesh.core.wire import Message
from quicmesh.runtime.transport import Connection


class Quiet:
    """A transport protocol for a raw client that only sends (attack and flood tests)."""

    def on_connection(self, conn: Connection) -> None:
        pass

    def on_message(self, conn: Connection, message: Message) -> None:
        pass

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        pass
