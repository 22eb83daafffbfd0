"""Retry tokens of the QUIC endpoint (:mod:`._quic_adapter`): bound to the dialer's address by an
HMAC, and expiring."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
import time
from typing import Any

__all__ = ["RETRY_TOKEN_TTL", "RetryTokens"]

RETRY_TOKEN_TTL = 10.0
"""Seconds a Retry token is accepted after it was issued."""


class RetryTokens:
    """Retry tokens bound to the dialer's address (qh3's ``QuicRetryTokenHandler`` interface,
    but an HMAC instead of an RSA-2048 key: no key generation at start and a cheap check, and
    tokens that expire)."""

    def __init__(self, ttl: float = RETRY_TOKEN_TTL) -> None:
        self._key = os.urandom(32)
        self.ttl = ttl

    def _mac(self, addr: Any, body: bytes) -> bytes:
        host = ipaddress.ip_address(addr[0]).packed + int(addr[1]).to_bytes(2, "big")
        return hmac.new(self._key, host + body, hashlib.sha256).digest()[:16]

    def create_token(self, addr: Any, original_destination_connection_id: bytes,
                     retry_source_connection_id: bytes) -> bytes:
        """A token for ``addr`` carrying both connection ids."""
        odcid, rscid = original_destination_connection_id, retry_source_connection_id
        body = struct.pack("!dB", time.monotonic(), len(odcid)) + odcid + bytes([len(rscid)]) + rscid
        return body + self._mac(addr, body)

    def validate_token(self, addr: Any, token: bytes) -> tuple[bytes, bytes]:
        """The connection ids of a valid token for ``addr``; ``ValueError`` otherwise."""
        if len(token) < 26:
            raise ValueError("retry token too short")
        body, mac = token[:-16], token[-16:]
        if not hmac.compare_digest(mac, self._mac(addr, body)):
            raise ValueError("retry token not for this address")
        issued, n = struct.unpack_from("!dB", body)
        if not 0 <= time.monotonic() - issued <= self.ttl:
            raise ValueError("retry token expired")
        odcid = body[9:9 + n]
        m = body[9 + n] if len(body) > 9 + n else 0
        rscid = body[10 + n:10 + n + m]
        if len(odcid) != n or len(rscid) != m or len(body) != 10 + n + m:
            raise ValueError("malformed retry token")
        return odcid, rscid
