"""#13 hole punching: the wire messages and the signed envelope (see :mod:`quicmesh.core.punch`).

The initiator and the target speak to each other in :class:`PunchEnvelope`\\ s signed by their
origin; the common node K carries them (:class:`PunchForward` in, :class:`PunchRelayed` out) and
answers :class:`PunchRefused` when it does not forward. Every field is bounded at decode time.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..errors import IdentityError
from ..identity import KeyPair, NodeId
from .mesh_messages import SelfRecord
from .selfrecord import record_bytes
from .wire import Code, Message, NodeIdBytes, UInt

__all__ = [
    "CONNECT",
    "PUNCH_LABEL",
    "PUNCH_MESSAGES",
    "REPLY",
    "SYNC",
    "PunchEnvelope",
    "PunchForward",
    "PunchRefused",
    "PunchRelayed",
    "envelope_bytes",
    "sign_envelope",
    "verify_envelope",
]

PUNCH_LABEL = b"quicmesh/punch/v1"
"""Protocol label that starts every signed punch envelope."""
CONNECT, REPLY, SYNC = 1, 2, 3
"""Envelope kinds: the initiator's request (with its addresses), the target's answer (with its
addresses), the initiator's go signal."""


class PunchEnvelope(msgspec.Struct, array_like=True, frozen=True):
    """One punch step from ``src`` to ``dst``: kind ``k``, attempt nonce ``n``, the signer's wall
    clock ``at`` (ms), the signer's own signed self-record ``rec`` (CONNECT and REPLY) and the
    Ed25519 signature of all of it by ``src``."""

    k: Annotated[int, msgspec.Meta(ge=CONNECT, le=SYNC)]
    src: NodeIdBytes
    dst: NodeIdBytes
    n: UInt
    at: UInt
    rec: SelfRecord | None
    sig: Annotated[bytes, msgspec.Meta(max_length=128)]


class PunchForward(Message, tag="punch.fwd"):
    """Origin -> K: forward ``env`` to ``to``."""

    to: NodeIdBytes
    env: PunchEnvelope


class PunchRelayed(Message, tag="punch.dlv"):
    """K -> target: ``env``, received from ``frm`` (the connection K got it on)."""

    frm: NodeIdBytes
    env: PunchEnvelope


class PunchRefused(Message, tag="punch.nak"):
    """K -> origin: the envelope with nonce ``n`` for ``to`` was not forwarded (``reason``:
    ``not_connected``, ``not_member``, ``rate``, ``disabled``, ``self``)."""

    to: NodeIdBytes
    n: UInt
    reason: Code


PUNCH_MESSAGES: tuple[type[Message], ...] = (PunchForward, PunchRelayed, PunchRefused)


def envelope_bytes(realm: str, k: int, src: bytes, dst: bytes, n: int, at: int, rec: SelfRecord | None) -> bytes:
    """The bytes an envelope's signature covers: label, realm, kind, both ids, nonce, time and
    the embedded record's own signed bytes and signature (length-prefixed, as self-records)."""
    recb = b"" if rec is None else record_bytes(realm, rec.id, rec.addrs, rec.at) + rec.sig
    parts = [PUNCH_LABEL, realm.encode("utf-8"), bytes([k]), src, dst, n.to_bytes(8, "big"),
             at.to_bytes(8, "big"), recb]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def sign_envelope(keypair: KeyPair, realm: str, k: int, dst: NodeId, n: int, at: int,
                  rec: SelfRecord | None) -> PunchEnvelope:
    """A punch envelope of this node's (``keypair``) to ``dst``."""
    src = keypair.node_id.raw
    return PunchEnvelope(k, src, dst.raw, n, at, rec, keypair.sign(envelope_bytes(realm, k, src, dst.raw, n, at, rec)))


def verify_envelope(env: PunchEnvelope, realm: str) -> NodeId | None:
    """The signer (``env.src``) when the signature verifies for ``realm``; ``None`` otherwise."""
    try:
        node = NodeId(env.src)
        node.verify(env.sig, envelope_bytes(realm, env.k, env.src, env.dst, env.n, env.at, env.rec))
    except (IdentityError, ValueError, UnicodeError, OverflowError):
        return None
    return node
