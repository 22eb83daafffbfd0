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

A lookup answer (:class:`~quicmesh.core.registry_messages.RAnswer`) comes straight from the
neighbour that holds the adverts, which checked them when it accepted them: an answer with an
advert that is malformed, not signed by its provider, or not allowed by the provider's
certificate (:func:`advert_denial`, except for a certificate revoked or expired since, see
:data:`~quicmesh.core.guard.NO_PENALTY`) counts as one offence of that neighbour (the registry's
``offence`` hook, the guard's :meth:`~quicmesh.core.guard.Guard.offence`), as gossip does.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import DecodeError, NotAdmitted
from ..identity import NodeId
from .groups import parse_group_name
from .guard import NO_PENALTY
from .permissions import Permissions
from .registry_messages import REGISTRY_TOPIC, RAdvert
from .trust import Trust
from .wire import Codec

__all__ = [
    "MAX_ADDRESSES", "MAX_NAME", "Offence", "advert_denial", "check_name", "may_advertise", "reserved_batch_ok",
    "valid_advert",
]

MAX_NAME = 256
"""Longest procedure name (characters)."""
MAX_ADDRESSES = 8
"""Addresses kept per advertisement."""
_MAX_ADDRESS_LEN = 256

Offence = Callable[[NodeId, float], None]
"""Counts an offence of a peer at ``now`` (the guard's :meth:`~quicmesh.core.guard.Guard.offence`)."""


def advert_denial(trust: Trust | None, provider: NodeId, ad: RAdvert, wall_now: float) -> tuple[str, bool] | None:
    """Why ``ad`` may not be accepted at wall-clock ``wall_now``: its certificate does not admit
    ``provider`` (the ``NotAdmitted`` reason) or does not allow it to advertise ``ad.n``
    (``"permission denied"``), with whether that is the relaying peer's fault; ``None`` when it
    may (always without a trust or in an open realm)."""
    if trust is None or trust.open:
        return None
    try:
        cert = trust.learn(ad.c, wall_now, subject=provider, kind="node")
    except NotAdmitted as exc:
        return exc.reason, exc.reason not in NO_PENALTY
    if cert is None or not isinstance(ad.n, str) or not _allows(cert.permissions, ad.n):
        return "permission denied", True
    return None


def may_advertise(trust: Trust | None, provider: NodeId, ad: RAdvert, wall_now: float) -> bool:
    """Whether ``ad``'s certificate admits ``provider`` and allows it to advertise ``ad.n`` at
    wall-clock ``wall_now`` (always true without a trust or in an open realm)."""
    return advert_denial(trust, provider, ad, wall_now) is None


def check_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid procedure name."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise ValueError(f"a procedure name is 1 to {MAX_NAME} characters, got {name!r:.80}")


def valid_advert(ad: RAdvert, max_meta: int) -> NodeId | None:
    """The provider id when ``ad`` is well-formed and within limits, else ``None``."""
    if not (isinstance(ad.p, bytes) and len(ad.p) == 32 and isinstance(ad.g, bytes) and len(ad.g) == 64):
        return None
    if not isinstance(ad.n, str) or not 0 < len(ad.n) <= MAX_NAME:
        return None
    if not isinstance(ad.m, bytes) or len(ad.m) > max_meta:
        return None
    if not isinstance(ad.a, list) or len(ad.a) > MAX_ADDRESSES:
        return None
    if any(not isinstance(a, str) or len(a) > _MAX_ADDRESS_LEN for a in ad.a):
        return None
    if not isinstance(ad.v, int) or ad.v < 0 or not isinstance(ad.l, int) or ad.l <= 0:
        return None
    return NodeId(ad.p)


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
