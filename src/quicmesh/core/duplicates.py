"""The duplicate-connection rule: at most one connection per peer pair.

:func:`duplicate_survivor` decides between an
existing connection and a new one: a peer that shows another *instance* (random bytes per process
start) restarted, so its new connection wins at once; so does a new connection over an existing
one that has gone *stale* (nothing received for longer than a live connection can stay silent:
its path died, e.g. through a relay that is gone, and it has not timed out yet); otherwise the
connection dialed by the smaller node id survives (two dialed by the same side: the newer one).
Staleness only grows while a dead path stays dead, and the listener decides before the dialer,
so a dialer that sees the old connection stale agrees with a listener that did. A light client's new
connection always supersedes its previous one. :func:`should_park` says when a listener holds a
verified inbound attempt until its own dial to the same peer is done (simultaneous dial, its own
answered and winning), so that the losing connection never reaches either node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..identity import NodeId

__all__ = ["Link", "duplicate_survivor", "should_park"]


@dataclass(frozen=True, slots=True)
class Link:
    """What the duplicate rule knows about one connection to a peer."""

    dialer: NodeId
    """The node id of the side that dialed this connection."""
    instance: bytes
    """The peer's instance (random per process start) as shown on this connection."""
    relayed: bool = False
    """Whether this connection's packets go through a relay (#13); both ends know it."""
    stale: bool = False
    """Whether nothing arrived on this connection for longer than a live one stays silent (twice
    the keepalive interval): its path is probably dead. Both ends of a dead path see it."""


def duplicate_survivor(existing: Link, new: Link, *, role: str = "node") -> Literal["existing", "new"]:
    """Which of two authenticated connections to the same peer survives (the other is closed
    with code ``duplicate``). Both sides of the pair reach the same answer."""
    if role == "client":
        return "new"  # a light client that connects again supersedes its previous connection
    if new.instance and existing.instance != new.instance:
        return "new"  # the peer restarted: the old connection is stale even if not timed out yet
    if existing.stale != new.stale:
        return "new" if existing.stale else "existing"  # a silent path lost to a live one
    if existing.relayed != new.relayed:
        return "new" if existing.relayed else "existing"  # a direct path beats a relayed one (#13)
    if existing.dialer != new.dialer:
        return "existing" if existing.dialer < new.dialer else "new"
    return "new"


def should_park(local: NodeId, peer: NodeId, *, own_dial_in_flight: bool, own_dial_answered: bool = True,
                own_relayed: bool = False, theirs_relayed: bool = False) -> bool:
    """A listener that verified ``peer``'s inbound attempt holds it (decides later) when its own
    dial to ``peer`` is under way, was *answered* (its TLS handshake with ``peer`` done, so it
    ends within a round trip or two) and would win the tie-break (a direct path over a relayed
    one, else the smaller dialer, ``local < peer``): welcoming the attempt now would let the
    peer's ``dial()`` return a connection closed a moment later. An unanswered dial (the peer's
    address unreachable from here, e.g. behind a NAT) may run for the whole handshake timeout,
    longer than the peer's attempt may stay silent (its QUIC idle timeout): the attempt is
    admitted instead (and the unanswered dial ends, returning it)."""
    if not (own_dial_in_flight and own_dial_answered):
        return False
    if own_relayed != theirs_relayed:
        return theirs_relayed
    return local < peer
