"""Failure detection configuration, kept apart from :mod:`.schema` (which re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FailureConfig"]


@dataclass(frozen=True, slots=True)
class FailureConfig:
    """Failure detection on live links (SWIM/Lifeguard style; :mod:`quicmesh.core.failure`).

    With ``n`` probed neighbours and ``h`` the local health multiplier (0 when this node is
    healthy)::

        suspicion_timeout = suspicion_mult * max(1, log10(n + 1)) * probe_interval * (1 + h)
        round             = max(probe_interval, 2.5 * probe_timeout * (1 + h))
        detection time   <= probe_interval + round + suspicion_timeout

    Defaults: a dead neighbour is declared failed within 1 + 1.25 + 1.5 = 3.75 s (up to 9
    neighbours); a peer is declared failed only after it stayed silent for a whole round, every
    helper's indirect probe went unanswered, and the suspicion timeout passed: a process paused
    300 ms of every second answers every round.
    """

    probe_interval: float = 1.0
    """Seconds between probes of one neighbour (memberlist LAN: 1 s). 0 turns detection off."""
    probe_timeout: float = 0.5
    """Seconds a direct probe waits for its answer before indirect probes (memberlist: 500 ms)."""
    indirect_probes: int = 3
    """Other neighbours asked to probe an unanswered peer (memberlist: 3)."""
    suspicion_mult: float = 1.5
    """Multiplier of the suspicion timeout (formula above; memberlist's LAN profile uses 4 with
    a 5 s probe timeout budget; 1.5 keeps detection within 5 s on a LAN)."""
    health_max: int = 8
    """Cap of the local health multiplier (Lifeguard: 8)."""
    max_indirect_jobs: int = 64
    """Indirect probes this node runs for others at once; more are refused with a nack."""
