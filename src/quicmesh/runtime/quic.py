"""The QUIC transport's public names, kept importable from their historical home.

The transport lives in :mod:`.quic_transport`, one connection in :mod:`.quic_connection`, the
handshake protocol (a sans-IO machine) in :mod:`quicmesh.core.handshake` and the admission rules
in :mod:`.admission`.
"""

from __future__ import annotations

from ..core.handshake import AUTH_LABEL, CLOSE_CODES, PROTOCOL_VERSION, auth_transcript
from .quic_connection import QuicConnection
from .quic_transport import QuicTransport

__all__ = ["AUTH_LABEL", "CLOSE_CODES", "PROTOCOL_VERSION", "QuicConnection", "QuicTransport", "auth_transcript"]
