"""Wire messages of the service registry (tags prefixed ``r.``).

* :class:`RAdvert` -- a provider's signed advertisement (or withdrawal) of one procedure name. It
  travels realm-wide as the payload of a mesh publish on :data:`REGISTRY_TOPIC`, and inside
  lookup answers. Everything except ``sig`` is covered by the provider's Ed25519 signature (see
  :func:`advert_signing_bytes`), so any node may relay it.
* :class:`RQuery` / :class:`RAnswer` -- a node without an entry for a name asks its neighbours
  directly; the answer carries at most ``registry.max_answer_entries`` adverts, each with the
  remaining lease the answering node holds (unsigned: it can only shorten what the advert allows).

Lists and strings received from the network are checked against the receiver's limits before
use; nothing here is trusted for size.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .wire import MAX_WIRE_LIST, Addresses, Message, Name, NodeIdBytes, UInt

__all__ = [
    "REGISTRY_MESSAGES",
    "REGISTRY_PATTERN",
    "REGISTRY_TOPIC",
    "RAdvert",
    "RAnswer",
    "RQuery",
    "advert_signing_bytes",
]

REGISTRY_TOPIC = "$svc"
"""The mesh topic adverts are published on. Its swarm ``$svc`` is realm-wide: every node
subscribes to :data:`REGISTRY_PATTERN`. ``check_topic`` accepts it as is; the Node should refuse
user topics and patterns whose first segment starts with ``$`` (reserved)."""
REGISTRY_PATTERN = "$svc"
"""The pattern every node subscribes to so that adverts are delivered to its registry."""

_LABEL = b"quicmesh/registry/advert/v1"
_ENCODER = msgspec.msgpack.Encoder()


class RAdvert(Message, tag="r.ad"):
    """One provider's advertisement of ``n`` (or its withdrawal when ``w``).

    ``p``: provider node id (32 raw bytes); ``a``: its addresses; ``n``: procedure name;
    ``m``: metadata (opaque bytes); ``v``: the provider's version, increasing over every advert
    and withdrawal it signs (across restarts: the driver seeds it from a wall clock);
    ``i``: issued-at in milliseconds on the provider's wall clock (Unix epoch); ``l``: lease in
    milliseconds: the advert expires at ``i + l`` (receivers hold it at most ``l`` from receipt);
    ``w``: withdrawal; ``g``: Ed25519 signature over :func:`advert_signing_bytes`.
    """

    p: NodeIdBytes
    a: Addresses
    n: Name
    m: bytes
    v: UInt
    i: UInt
    l: UInt  # noqa: E741 - short on purpose: it travels in every frame
    w: bool
    g: Annotated[bytes, msgspec.Meta(max_length=128)]
    c: Annotated[bytes, msgspec.Meta(max_length=8192)] | None = None
    """The provider's member certificate in an authority realm (not signed: it is the
    authority's own signature that counts); None in an open realm."""


class RQuery(Message, tag="r.q"):
    """Ask a neighbour for the advertisements of ``n`` it holds. ``id`` is the asker's."""

    id: UInt
    n: Name


class RAnswer(Message, tag="r.ans"):
    """Answer to :class:`RQuery` ``id``: adverts of ``n`` and the lease (ms) left on each."""

    id: UInt
    n: Name
    ads: Annotated[list[RAdvert], msgspec.Meta(max_length=MAX_WIRE_LIST)]
    rem: Annotated[list[UInt], msgspec.Meta(max_length=MAX_WIRE_LIST)]


REGISTRY_MESSAGES: tuple[type[Message], ...] = (RAdvert, RQuery, RAnswer)


def advert_signing_bytes(realm: str, ad: RAdvert) -> bytes:
    """The bytes a provider signs: a protocol label, the realm (so adverts cannot be replayed
    into another realm) and every field of ``ad`` but the signature, in a fixed order."""
    return _ENCODER.encode((_LABEL, realm, ad.p, ad.a, ad.n, ad.m, ad.v, ad.i, ad.l, ad.w))
