"""Permission checks of service adverts (see :mod:`quicmesh.core.registry`).

Theory of operation
-------------------
In an authority realm an advert (:class:`~quicmesh.core.registry_messages.RAdvert`) carries its
provider's member certificate (``c``; not covered by the advert's signature: the authority's
signature on the certificate is what counts). An advert, not a withdrawal, is accepted only when
the certificate admits the provider and allows ``advertise`` on the name (for a work-queue
group membership: ``subscribe`` on its pattern) (:func:`may_advertise`), so a provider without
that permission never becomes a provider of the name anywhere: neither from the mesh nor from a lookup answer.

The mesh relays adverts as gossip batches on the reserved topic
:data:`~quicmesh.core.registry_messages.REGISTRY_TOPIC`, each published by the provider itself.
Before caching or forwarding such a batch, the mesh's guard asks :func:`reserved_batch_ok`: every
advert in it must be the batch publisher's own (the batch signature then covers it) and, unless
a withdrawal, allowed by the publisher's permissions. A batch that fails is dropped and its
sender penalised by the guard.
"""

from __future__ import annotations

from ..errors import DecodeError, NotAdmitted
from ..identity import NodeId
from .groups import parse_group_name
from .permissions import Permissions
from .registry_messages import REGISTRY_TOPIC, RAdvert
from .trust import Trust
from .wire import Codec

__all__ = ["may_advertise", "reserved_batch_ok"]


def may_advertise(trust: Trust | None, provider: NodeId, ad: RAdvert, wall_now: float) -> bool:
    """Whether ``ad``'s certificate admits ``provider`` and allows it to advertise ``ad.n`` at
    wall-clock ``wall_now`` (always true without a trust or in an open realm)."""
    if trust is None or trust.open:
        return True
    try:
        cert = trust.learn(ad.c, wall_now, subject=provider, kind="node")
    except NotAdmitted:
        return False
    return cert is not None and isinstance(ad.n, str) and _allows(cert.permissions, ad.n)


def _allows(perms: Permissions, name: str) -> bool:
    """``advertise`` on ``name``; a work-queue group membership (``$grp:...``,
    :mod:`quicmesh.core.groups`) needs ``subscribe`` on its pattern instead."""
    key = parse_group_name(name)
    return perms.allows("advertise", name) if key is None else perms.allows_subscription(key[1])


def reserved_batch_ok(codec: Codec, publisher: NodeId, topic: str, payloads: list[bytes], perms: Permissions) -> bool:
    """Whether a gossip batch of ``publisher`` on the reserved ``topic`` may be relayed: on
    :data:`REGISTRY_TOPIC`, every advert in it is the publisher's own and, unless a withdrawal,
    allowed by ``perms`` (the publisher's). Payloads that are not adverts are left to the
    registry (dropped and counted there); other reserved topics carry their own signed contents."""
    if topic != REGISTRY_TOPIC:
        return True
    for payload in payloads:
        try:
            ad = codec.decode(payload)
        except DecodeError:
            continue
        if not isinstance(ad, RAdvert):
            continue
        if ad.p != publisher.raw:
            return False
        if not ad.w and not (isinstance(ad.n, str) and _allows(perms, ad.n)):
            return False
    return True
