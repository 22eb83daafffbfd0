"""#13: signed self-records, a node's own word on its addresses that relays cannot alter.

Theory of operation
-------------------
A node signs ``(label, realm, node id, at, addresses)`` with its Ed25519 key whenever the set it
announces changes (:func:`sign_record`; ``at`` is the signer's wall clock in milliseconds, strictly
increasing per node). The record rides the messages that carry a node's addresses through third
parties (JOIN and the FORWARDJOIN walks it starts, SHUFFLE, FIND, and the peer samples of SHUFFLE
replies and FOUND). A receiver verifies it (:func:`verify_record`: the signature, the realm, the
subject the message names) before its address book takes it; a verified record counts as the
node's own word (it outranks unsigned third-party claims), and among records of one node the
newest ``at`` wins, so a relay can neither alter a record nor bring an older one back over a
newer one. A record is bounded by its wire fields (16 addresses of 256 characters, 64-byte
signature); receivers keep the first 8 addresses (:func:`~.addressbook.normalize_addresses`).

Pure functions: no I/O, no clock (``at`` is an argument).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import IdentityError
from ..identity import KeyPair, NodeId
from .mesh_messages import SelfRecord

__all__ = ["RECORD_LABEL", "record_bytes", "sign_record", "verify_record"]

RECORD_LABEL = b"quicmesh/self-record/v1"
"""Protocol label that starts every signed self-record (separates it from other uses of the key)."""


def record_bytes(realm: str, node: bytes, addrs: Iterable[str], at: int) -> bytes:
    """The bytes a self-record's signature covers: label, realm, node id, ``at`` and each
    address, each length-prefixed (4 bytes, big-endian)."""
    parts = [RECORD_LABEL, realm.encode("utf-8"), node, at.to_bytes(8, "big"),
             *(a.encode("utf-8") for a in addrs)]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def sign_record(keypair: KeyPair, realm: str, addrs: Iterable[str], at: int) -> SelfRecord:
    """This node's signed record of ``addrs`` at ``at`` (ms) in ``realm`` (the wire id)."""
    lst = list(addrs)
    me = keypair.node_id.raw
    return SelfRecord(me, lst, at, keypair.sign(record_bytes(realm, me, lst, at)))


def verify_record(rec: SelfRecord, realm: str, subject: NodeId | None = None) -> NodeId | None:
    """The signer of ``rec`` when its signature verifies for ``realm`` (and it is about
    ``subject``, when given); ``None`` otherwise."""
    try:
        node = NodeId(rec.id)
        if subject is not None and node != subject:
            return None
        node.verify(rec.sig, record_bytes(realm, rec.id, rec.addrs, rec.at))
    except (IdentityError, ValueError, UnicodeError):
        return None
    return node
