"""Relay configuration (issue #13, relays), kept apart from :mod:`.schema` (which re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["RELAY_MODES", "RelayConfig"]

RELAY_MODES = ("auto", "always", "never")
"""Values of :attr:`RelayConfig.mode`."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Relaying for others (``serve``) and being reachable through relays (``mode``, ``via``)
    (``[relay]``; env ``QUICMESH_RELAY__*``; see :mod:`quicmesh.core.relay`).

    A relay forwards the end-to-end encrypted QUIC packets of a connection between two admitted
    members of its realm; it cannot read them. Every budget below is enforced on the relay
    where the packets enter, and counted in ``/metrics`` (``relay_*``).
    """

    # #13 (relay)
    serve: bool = False
    """Relay for admitted members of this realm (``quicmesh node --relay``; default off)."""
    mode: str = "auto"
    """When to be reachable through relays: ``auto`` (default) when peers report seeing this
    node at an address that is not one of its own (behind NAT), ``always``, or ``never``. With
    ``always`` the node announces its relayed addresses only (it declares itself not directly
    dialable)."""
    via: tuple[str, ...] = ()
    """``HOST:PORT`` of relays to use (``--relay-via``, repeatable; default none). Nodes whose
    signed self-record announces that they relay are used too."""
    relays_wanted: int = 2
    """Relays a node that needs them keeps a reservation at (count, default 2: when one dies the
    other still carries the node while a replacement is found)."""
    max_relayed_peers: int = 256
    """Relay side: peers that hold a reservation or forward packets at once (count, default 256);
    beyond, a reservation is refused and a new peer's packets are dropped
    (``relay_dropped_total{reason="max_relayed_peers"}``)."""
    max_sessions_per_peer: int = 16
    """Relay side: distinct peers one peer talks to through this relay at once (count, default
    16; beyond: ``relay_dropped_total{reason="sessions"}``)."""
    peer_bytes_per_second: float = 4_000_000.0
    """Relay side: packet bytes one peer may have forwarded per second (token bucket, default
    4 MB/s, burst one second's worth; beyond: dropped, reason ``bytes``)."""
    peer_packets_per_second: float = 4_000.0
    """Relay side: packets one peer may have forwarded per second (token bucket, default 4,000,
    burst one second's worth; beyond: dropped, reason ``packets``)."""
    session_idle: float = 60.0
    """Relay side: seconds a session between two peers lasts without a packet (default 60)."""
    retry_interval: float = 1.0
    """Seconds between attempts to reach a relay when fewer than ``relays_wanted`` hold a
    reservation for this node (default 1)."""

    def __post_init__(self) -> None:
        if self.mode not in RELAY_MODES:
            raise ConfigError("relay.mode", f"expected one of {', '.join(RELAY_MODES)}, got {self.mode!r}")
        for i, a in enumerate(self.via):
            host, sep, port = a.rpartition(":") if isinstance(a, str) else ("", "", "")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ConfigError(f"relay.via[{i}]", f"expected HOST:PORT, got {a!r}")
        for name in ("relays_wanted", "max_relayed_peers", "max_sessions_per_peer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"relay.{name}", "must be at least 1")
        for name in ("peer_bytes_per_second", "peer_packets_per_second", "session_idle", "retry_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"relay.{name}", "must be positive")
