"""Wire messages of the mesh core: HyParView membership, swarm discovery and Plumtree broadcast.

Every message carries ``s``, the overlay it belongs to: ``""`` for the realm-wide membership
overlay, otherwise a topic swarm key (see :mod:`quicmesh.core.topics`). Lists received from the
network are truncated to the receiver's limits before use; nothing here is trusted for size.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..config.schema import MAX_BATCH_MESSAGES
from .grammar import MAX_TOPIC_LEN, check_swarm_key, check_topic
from .wire import MAX_INT, Addresses, Message, NodeIdBytes, UInt

__all__ = [
    "MAX_HOPS",
    "MAX_WALK_TTL",
    "MAX_WIRE_PEERS",
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
    "SelfRecord",
]


MAX_WALK_TTL = 16
"""Largest ``ttl`` of a random walk (FORWARDJOIN, SHUFFLE, FIND) on the wire; senders clamp
their configured walk lengths to it (the paper's ARWL is 6)."""
MAX_WIRE_PEERS = 64
"""Peers a SHUFFLE, SHUFFLE reply or FOUND may carry (receivers use at most 16)."""
MAX_HOPS = 65_535
"""Hop counts saturate here: a forwarded batch never grows its ``hops`` past it, so a hostile
``hops`` cannot make an honest forwarder send a frame its peers refuse."""
MAX_IHAVE = 512
"""Ids one IHAVE may carry (``plumtree.MAX_IHAVE_IDS``)."""
_MSG_ID_LEN = 16
"""Bytes of a broadcast message id (``plumtree.ID_LEN``)."""

_Swarm = Annotated[str, msgspec.Meta(max_length=MAX_TOPIC_LEN)]
_Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOPIC_LEN)]
_Ttl = Annotated[int, msgspec.Meta(ge=0, le=MAX_WALK_TTL)]
_MsgId = Annotated[bytes, msgspec.Meta(min_length=_MSG_ID_LEN, max_length=_MSG_ID_LEN)]


class SelfRecord(msgspec.Struct, array_like=True, frozen=True):
    """#13: a node's own word on its addresses, signed with its key so that relays cannot alter
    it (:mod:`quicmesh.core.selfrecord`): node id, addresses, ``at`` (milliseconds of the signer's
    wall clock, newer wins) and the Ed25519 signature. At most ~4.3 kB by the field bounds."""

    id: NodeIdBytes
    addrs: Addresses
    at: UInt
    sig: Annotated[bytes, msgspec.Meta(max_length=128)]


class PeerInfo(msgspec.Struct, array_like=True, frozen=True):
    """A peer id (32 raw bytes) and its addresses (``rec``: the peer's signed record, if known)."""

    id: NodeIdBytes
    addrs: Addresses
    rec: SelfRecord | None = None


_Peers = Annotated[list[PeerInfo], msgspec.Meta(max_length=MAX_WIRE_PEERS)]


class _Overlay(Message):
    """Base of the mesh messages: ``s`` (declared by each) is ``""`` or a swarm key, checked
    against the topic grammar when decoded (and built)."""

    def __post_init__(self) -> None:
        check_swarm_key(getattr(self, "s"))  # noqa: B009 - the field is declared by subclasses


# -- HyParView (realm overlay and per-swarm overlays) ----------------------------------------------


class MJoin(_Overlay, tag="m.join"):
    """Ask the receiver to take the sender into its active view and spread a FORWARDJOIN."""

    s: _Swarm
    addrs: Addresses
    rec: SelfRecord | None = None
    """#13: the sender's signed record (relayed in the FORWARDJOIN walks it starts)."""


class MForwardJoin(_Overlay, tag="m.fjoin"):
    """A random walk announcing ``peer`` (a new member) with ``ttl`` hops left."""

    s: _Swarm
    peer: NodeIdBytes
    addrs: Addresses
    ttl: _Ttl
    rec: SelfRecord | None = None
    """#13: ``peer``'s signed record, when the relay has one (outranks ``addrs``)."""


class MNeighbor(_Overlay, tag="m.nbr"):
    """Ask to become active neighbours. ``high``: the sender has no active neighbour (must accept)."""

    s: _Swarm
    high: bool
    addrs: Addresses


class MNeighborReply(_Overlay, tag="m.nbr_r"):
    """Answer to MNeighbor or MJoin: ``ok`` means the sender now holds the receiver as active."""

    s: _Swarm
    ok: bool


class MLeave(_Overlay, tag="m.leave"):
    """The sender drops the receiver from its active view. ``alive``: keep it in the passive view."""

    s: _Swarm
    alive: bool


class MShuffle(_Overlay, tag="m.shuf"):
    """A random walk carrying a sample of the origin's views."""

    s: _Swarm
    origin: NodeIdBytes
    addrs: Addresses
    ttl: _Ttl
    peers: _Peers
    rec: SelfRecord | None = None
    """#13: ``origin``'s signed record (outranks ``addrs``)."""


class MShuffleReply(_Overlay, tag="m.shuf_r"):
    """The walk's end node's passive sample, sent straight to the shuffle origin."""

    s: _Swarm
    peers: _Peers


# -- swarm discovery over the realm overlay --------------------------------------------------------


class MFind(_Overlay, tag="m.find"):
    """A random walk over the realm overlay looking for members of swarm ``s`` for ``origin``."""

    s: _Swarm
    origin: NodeIdBytes
    addrs: Addresses
    ttl: _Ttl
    rec: SelfRecord | None = None
    """#13: ``origin``'s signed record (outranks ``addrs``)."""


class MFound(_Overlay, tag="m.found"):
    """Members (or remembered members) of swarm ``s``, sent to a MFind origin."""

    s: _Swarm
    peers: _Peers


# -- Plumtree --------------------------------------------------------------------------------------


class MGossip(_Overlay, tag="m.gossip"):
    """A batch of topic messages of one publisher and topic: ``payloads[i]`` has sequence number
    ``seq + i`` (a lone publish is a batch of one). Its id is computed by each receiver from
    (publisher, epoch, seq, topic, payloads), never trusted from the wire; a batch is broadcast,
    cached, repaired and ordered as one unit.

    ``sig``: the publisher's Ed25519 signature over the realm and the batch's full digest
    (:func:`quicmesh.core.guard.gossip_signing_bytes`); ``cert``: the publisher's member
    certificate in an authority realm (None in an open realm). Only ``hops`` and ``r`` are not
    signed.
    Receivers verify both before caching, forwarding or delivering a new batch."""

    s: _Swarm
    topic: _Topic
    publisher: NodeIdBytes
    epoch: UInt
    seq: UInt
    payloads: Annotated[list[bytes], msgspec.Meta(min_length=1, max_length=MAX_BATCH_MESSAGES)]
    hops: UInt
    sig: Annotated[bytes, msgspec.Meta(max_length=128)] = b""
    """The publisher's Ed25519 signature of the batch (label, realm, digest of the content)."""
    cert: Annotated[bytes, msgspec.Meta(max_length=8192)] | None = None
    """The publisher's member certificate in an authority realm; None in an open realm."""
    r: bool = False
    """A repair: sent in answer to the receiver's own GRAFT. A second copy of a repair is the
    receiver's retry crossing a slow answer, not a redundant tree path, so it prunes nothing."""

    def __post_init__(self) -> None:
        """The topic is in the grammar and in swarm ``s``; the batch's last seq fits the field;
        ``hops`` saturates at :data:`MAX_HOPS`."""
        check_topic(self.topic)
        if self.topic.split(".", 1)[0] != self.s:
            raise ValueError(f"topic {self.topic!r:.80} is not in swarm {self.s!r:.80}")
        if self.seq + len(self.payloads) - 1 > MAX_INT:
            raise ValueError("the batch's last seq exceeds 2**63-1")
        if self.hops > MAX_HOPS:
            self.hops = MAX_HOPS


class MIHave(_Overlay, tag="m.ihave"):
    """Lazy push: ids (16 bytes) the sender holds, each with its hop count."""

    s: _Swarm
    ids: Annotated[list[_MsgId], msgspec.Meta(max_length=MAX_IHAVE)]
    hops: Annotated[list[UInt], msgspec.Meta(max_length=MAX_IHAVE)]


class MGraft(_Overlay, tag="m.graft"):
    """Make the link eager again, and send message ``id`` when given. ``p``: the publisher whose
    tree the link joins (#14: one tree per publisher); without it (and without ``id``) every tree.

    A *pull* (#14) names ``p``, its epoch ``e``, a seq ``q`` and the ``n`` messages missing from
    there, and no ``id``: the sender's ordering has that gap and no repair fills it; the receiver
    answers with the cached batches that start in it (as repairs), and nothing when it has none;
    it changes no tree. A node of an earlier release reads it as a graft of ``p``'s tree."""

    s: _Swarm
    id: _MsgId | None = None
    p: NodeIdBytes | None = None
    e: UInt | None = None
    q: UInt | None = None
    n: UInt | None = None


class MGone(_Overlay, tag="m.gone"):
    """Answer to a GRAFT for a message the sender no longer caches: ask someone else."""

    s: _Swarm
    id: _MsgId


class MPrune(_Overlay, tag="m.prune"):
    """Make the link lazy (the receiver sent us a duplicate) in publisher ``p``'s tree (#14), or
    in every tree when ``p`` is absent."""

    s: _Swarm
    p: NodeIdBytes | None = None


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
