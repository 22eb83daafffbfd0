"""Plumtree's fixed parameters (the tunable ones are :class:`~quicmesh.config.GossipConfig`);
:mod:`quicmesh.core.plumtree` uses and re-exports them."""

from __future__ import annotations

__all__ = [
    "CATCHUP_IDS", "GRAFT_ANSWER_INTERVAL", "MAX_ANNOUNCERS", "MAX_GRAFTS_PER_ID", "MAX_GRAFT_INTERVAL",
    "MAX_IHAVE_IDS", "MAX_NEIGHBOURS", "OPTIMISE_WINDOW", "PULL_BATCHES", "REANNOUNCE_DELAY", "REJOIN_PUSH",
    "REJOIN_WINDOW",
]

REANNOUNCE_DELAY = 1.0
"""Seconds after receipt at which an id is announced once more to every neighbour."""

CATCHUP_IDS = 256
"""Most recent cached ids announced to a new swarm neighbour."""

REJOIN_WINDOW = 2.0
"""Seconds after a swarm neighbour went down within which its return is a rejoin: it is pushed
the batches cached since it went down (at most ``REJOIN_PUSH``, oldest first), not only announced
(#14: a subscriber that re-subscribed during a flood lost the batches its publisher published
between handling its leave and its new join; repaired only after the GRAFT timer, they came
behind the eager stream, which overflowed the reorder window first). That race lasts
milliseconds; a longer window keeps a dead peer's entry longer after its connection's idle
timeout (5 s made the 2-minute soak's recovery 10.1 s, limit 10 s, under Python 3.12)."""

REJOIN_PUSH = 64
"""Batches pushed to a rejoining neighbour at most (the rest is announced, as to a new one)."""

PULL_BATCHES = 16
"""Cached batches one pull (an ``MGraft`` naming a seq) is answered with at most: the batch that
starts at the seq and those that follow it, as long as they are cached."""

MAX_ANNOUNCERS = 8
"""Announcers remembered per missing id."""

MAX_IHAVE_IDS = 512
"""Ids per IHAVE message; a received IHAVE is truncated to this many."""
MAX_GRAFT_INTERVAL = 1.0
"""Seconds between two GRAFTs for the same message, at most (the retry interval doubles)."""
MAX_GRAFTS_PER_ID = 16
"""GRAFTs sent for one missing message before giving up (retries back off from 40 ms to 1 s:
about 11 s in all). Enough to repair heavy loss (20 % loss on both GRAFT and reply: 0.36^16 ≈ 10^-7 per
message), yet bounded: a payload its announcers no longer cache costs 16 GRAFTs, not a storm
until the entry's TTL."""

GRAFT_ANSWER_INTERVAL = 0.5
"""Seconds during which a GRAFT for an id from a peer that was already answered is not answered
again (the payload is on its way; see the module docstring). The retries of the first second
(40, 80, 160, 320 ms apart) get one answer instead of five; later ones (640 ms, then 1 s apart)
are each answered, so an answer lost with a connection or dropped by a full send buffer is
repaired within a second. (2 s cut the flood's duplicates further but delayed a fresh joiner's
repairs past its ordering's start wait in the 20 % churn simulation.)"""

OPTIMISE_WINDOW = 2.5
"""Seconds after receiving a payload during which IHAVEs for it may still optimise the tree (the
re-announcement comes ``REANNOUNCE_DELAY`` after the announcer received it)."""

MAX_NEIGHBOURS = 64
"""Cap of the eager and lazy sets (they only hold swarm active-view peers)."""
