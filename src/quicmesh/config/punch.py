"""Hole punching (issue #13): two nodes that cannot dial each other open a direct path by
coordinated simultaneous sends through a node both are connected to (see
:mod:`quicmesh.core.punch`). Kept apart from :mod:`.schema` (which re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["PunchConfig"]


@dataclass(frozen=True, slots=True)
class PunchConfig:
    """Hole punching (``[punch]``; env ``QUICMESH_PUNCH__*``).

    One *attempt* is an exchange of signed address records through a common node K (the relay
    of a relayed connection, or any connected node) followed by simultaneous dials of each
    other's addresses. A failed attempt is retried after ``backoff * 2**(n-1)`` seconds (n: the
    failed attempts so far), at most ``backoff_max``, each delay spread by +-``jitter``; after
    ``attempts`` failed attempts the nodes stay on the path they had and the peer is not punched
    again automatically for ``cooldown`` seconds.
    """

    enabled: bool = True
    """Punch holes (as the initiator and as the target); default on. A node with it off still
    forwards punch messages for others (``forward``)."""
    auto: bool = True
    """Start a punch by itself when a direct dial to a peer failed and a connected node may
    know it (default on); off: only :meth:`quicmesh.Node.punch` starts one."""
    auto_after: float = 1.0
    """Seconds a dial to a peer may stay pending before an automatic punch starts alongside it
    (default 1: a dial that reaches its peer completes in a few round trips; one into a closed
    NAT only ends at the handshake timeout)."""
    forward: bool = True
    """Forward punch messages between two admitted members this node is connected to (be K;
    default on; rate-limited per source by ``forward_rate``/``forward_burst``)."""
    attempts: int = 3
    """Attempts (exchange plus simultaneous dials) per punch before giving up (default 3; rust-
    libp2p's DCUtR also tries 3 times, and 97.6 % of its successes came on the first try)."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each further one (default 1)."""
    backoff_max: float = 30.0
    """Longest delay between two attempts, in seconds (default 30)."""
    jitter: float = 0.25
    """Relative spread of each retry delay, 0 to 1 (default 0.25: +-25 %), so that many nodes
    whose punches failed together do not retry together."""
    exchange_timeout: float = 3.0
    """Seconds the initiator waits for the target's answer through K before the attempt fails
    (or tries the next common node; default 3)."""
    dial_timeout: float = 3.0
    """Seconds the simultaneous dials of one attempt may take (default 3: the QUIC handshake
    retransmits its first packets within that time when the first ones met a closed NAT)."""
    stagger: float = 0.05
    """Seconds the side with the smaller node id dials after the other (default 0.05; 0: both
    at once). Its connection is the one QUIC's duplicate rule keeps, so its first packet should
    meet a NAT the other side has already opened (a first packet that meets a closed NAT is
    retransmitted only ~0.3 s later, and a NAT whose own address accepts unsolicited packets
    may remap the other side's port)."""
    via_candidates: int = 3
    """Connected nodes tried as K, one after the other, when no K is given (default 3)."""
    max_active: int = 64
    """Punches in progress at once, as initiator and as target each (default 64; beyond, a new
    one fails at once with reason ``busy``)."""
    cooldown: float = 300.0
    """Seconds a peer whose punch failed for good is not punched again automatically (default
    300; :meth:`quicmesh.Node.punch` may still try)."""
    max_cooldowns: int = 1024
    """Peers remembered in cooldown (default 1,024; the oldest is forgotten first)."""
    forward_rate: float = 5.0
    """Punch messages per second K forwards for one source node (default 5: an attempt needs
    two from the initiator and one from the target), on top of ``forward_burst``."""
    forward_burst: int = 20
    """Punch messages K forwards for one source at once before ``forward_rate`` applies."""
    forward_sources: int = 1024
    """Sources whose forwarding budget K tracks (default 1,024; the least recently seen is
    forgotten, which gives it a full burst again, still bounded by ``max_connections``)."""
    max_age: float = 30.0
    """Seconds a signed punch message is accepted after (and before, for clock skew) the time
    its signer wrote in it (default 30); replays within that time are refused by nonce."""
    replay_cache: int = 4096
    """Punch message nonces remembered against replay (default 4,096, each for ``max_age``)."""

    def __post_init__(self) -> None:
        for name in ("attempts", "via_candidates", "max_active", "max_cooldowns", "forward_burst",
                     "forward_sources", "replay_cache"):
            if getattr(self, name) < 1:
                raise ConfigError(f"punch.{name}", "must be at least 1")
        for name in ("backoff", "backoff_max", "exchange_timeout", "dial_timeout", "forward_rate", "max_age",
                     "auto_after"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"punch.{name}", "must be positive")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("punch.jitter", "must be between 0 and 1")
        if self.cooldown < 0 or self.stagger < 0:
            raise ConfigError("punch.cooldown" if self.cooldown < 0 else "punch.stagger", "must not be negative")
