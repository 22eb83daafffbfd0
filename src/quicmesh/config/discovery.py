"""Local discovery configuration (#13), kept apart from :mod:`.schema` (which re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DiscoveryConfig"]


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """Finding nodes of this realm on the local network without a bootstrap list
    (mDNS/DNS-SD, :mod:`quicmesh.runtime.local_discovery`).

    A node announces its node id, its realm's wire id and its listen addresses on the interfaces
    of its listen address, and joins the realm overlay through the nodes of its own realm it
    finds while it has no neighbour. Membership is still decided by the QUIC handshake: a forged
    announcement can at worst cause a refused dial.
    """

    # #13 (localdisc)
    local: bool = True
    """Announce and look for nodes of this realm on the local network (default on;
    ``--no-local-discovery`` or ``QUICMESH_DISCOVERY__LOCAL=false`` turns it off). Off by itself
    when the node listens on loopback only (unless ``loopback``) or on the in-memory transport."""
    interval: float = 10.0
    """Seconds between two announcements of this node (its first one goes out at start; zeroconf
    also answers queries, rate-limited as RFC 6762 says), and the window of
    ``max_announcements`` (default 10)."""
    peer_ttl: float = 120.0
    """Seconds a discovered peer is remembered without being announced again (default 120, the
    mDNS TTL of host records)."""
    max_peers: int = 256
    """Discovered peers remembered (count, default 256); the least recently seen is forgotten
    first. Announcements beyond ``max_announcements`` per ``interval`` are ignored (counted)."""
    max_announcements: int = 64
    """Announcements of other nodes handled per ``interval`` (count, default 64): a flood of
    forged announcements costs at most this many look-ups and table entries per interval."""
    join_contacts: int = 4
    """Discovered peers a lone node joins through at once (count, default 4): enough to merge
    the groups that formed apart, few enough that a forged announcement costs one refused dial."""
    loopback: bool = False
    """Announce on loopback when the node listens only there (default off, so test nodes on
    127.0.0.1 stay quiet; tests of discovery turn it on)."""
