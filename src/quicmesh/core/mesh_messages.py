"""Wire messages of the mesh core: HyParView membership, swarm discovery and Plumtree broadcast.

Every message carries ``s``, the overlay it belongs to: ``""`` for the realm-wide membership
overlay, otherwise a topic swarm key (see :mod:`quicmesh.core.topics`). Lists received from the
network are truncated to the receiver's limits before use; nothing here is trusted for size.
"""

from __future__ import annotations

import msgspec

from .wire import Message

__all__ = [
    "MESH_MESSAGES",
    "MFind",
    "MForwardJoin",
    "MFound",
    "MGone",
    "MGossip",
    "MGraft",
    "MIHave",
    "MJoin",
    "MLeave",
    "MNeighbor",
    "MNeighborReply",
    "MPrune",
    "MShuffle",
    "MShuffleReply",
    "PeerInfo",
]


class PeerInfo(msgspec.Struct, array_like=True, frozen=True):
    """A peer id (32 raw bytes) and its addresses."""

    id: bytes
    addrs: list[str]


# -- HyParView (realm overlay and per-swarm overlays) ----------------------------------------------


class MJoin(Message, tag="m.join"):
    """Ask the receiver to take the sender into its active view and spread a FORWARDJOIN."""

    s: str
    addrs: list[str]


class MForwardJoin(Message, tag="m.fjoin"):
    """A random walk announcing ``peer`` (a new member) with ``ttl`` hops left."""

    s: str
    peer: bytes
    addrs: list[str]
    ttl: int


class MNeighbor(Message, tag="m.nbr"):
    """Ask to become active neighbours. ``high``: the sender has no active neighbour (must accept)."""

    s: str
    high: bool
    addrs: list[str]


class MNeighborReply(Message, tag="m.nbr_r"):
    """Answer to MNeighbor or MJoin: ``ok`` means the sender now holds the receiver as active."""

    s: str
    ok: bool


class MLeave(Message, tag="m.leave"):
    """The sender drops the receiver from its active view. ``alive``: keep it in the passive view."""

    s: str
    alive: bool


class MShuffle(Message, tag="m.shuf"):
    """A random walk carrying a sample of the origin's views."""

    s: str
    origin: bytes
    addrs: list[str]
    ttl: int
    peers: list[PeerInfo]


class MShuffleReply(Message, tag="m.shuf_r"):
    """The walk's end node's passive sample, sent straight to the shuffle origin."""

    s: str
    peers: list[PeerInfo]


# -- swarm discovery over the realm overlay --------------------------------------------------------


class MFind(Message, tag="m.find"):
    """A random walk over the realm overlay looking for members of swarm ``s`` for ``origin``."""

    s: str
    origin: bytes
    addrs: list[str]
    ttl: int


class MFound(Message, tag="m.found"):
    """Members (or remembered members) of swarm ``s``, sent to a MFind origin."""

    s: str
    peers: list[PeerInfo]


# -- Plumtree --------------------------------------------------------------------------------------


class MGossip(Message, tag="m.gossip"):
    """A batch of topic messages of one publisher and topic: ``payloads[i]`` has sequence number
    ``seq + i`` (a lone publish is a batch of one). Its id is computed by each receiver from
    (publisher, epoch, seq, topic, payloads), never trusted from the wire; a batch is broadcast,
    cached, repaired and ordered as one unit.

    ``sig``: the publisher's Ed25519 signature over the realm and the batch's full digest
    (:func:`quicmesh.core.guard.gossip_signing_bytes`); ``cert``: the publisher's member
    certificate in an authority realm (None in an open realm). Only ``hops`` is not signed.
    Receivers verify both before caching, forwarding or delivering a new batch."""

    s: str
    topic: str
    publisher: bytes
    epoch: int
    seq: int
    payloads: list[bytes]
    hops: int
    sig: bytes = b""
    cert: bytes | None = None


class MIHave(Message, tag="m.ihave"):
    """Lazy push: ids (16 bytes) the sender holds, each with its hop count."""

    s: str
    ids: list[bytes]
    hops: list[int]


class MGraft(Message, tag="m.graft"):
    """Make the link eager again, and send message ``id`` when given."""

    s: str
    id: bytes | None = None


class MGone(Message, tag="m.gone"):
    """Answer to a GRAFT for a message the sender no longer caches: ask someone else."""

    s: str
    id: bytes


class MPrune(Message, tag="m.prune"):
    """Make the link lazy (the receiver sent us a duplicate)."""

    s: str


MESH_MESSAGES: tuple[type[Message], ...] = (
    MJoin,
    MGone,
    MForwardJoin,
    MNeighbor,
    MNeighborReply,
    MLeave,
    MShuffle,
    MShuffleReply,
    MFind,
    MFound,
    MGossip,
    MIHave,
    MGraft,
    MPrune,
)
"""Every message the mesh core speaks; add to the node's codec."""
