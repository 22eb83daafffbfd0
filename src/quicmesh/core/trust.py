"""Realms, member certificates, light-client credentials and revocation lists.

Theory of operation
-------------------
A **realm** is a name plus, in *authority mode*, the Ed25519 public key of its authority. Its
identity on the wire (:attr:`Realm.wire_id`, carried in every handshake and signed into log
operations) is a hash of both, so a name alone proves nothing and a realm's name is never sent.
An **open realm** has no authority: its wire id is its name, every node is a full member
(:data:`~quicmesh.core.permissions.EVERYTHING`), as before authority mode existed; it is for
development and ``make demo``.

The authority (an offline key, :class:`Authority`) signs:

- a **certificate** (:class:`Certificate`) for a member node id or a light client's key: kind
  (``node`` or ``client``), permissions, a validity window (unix seconds) and a serial;
- a **revocation list** (:class:`RevocationList`): serials and subject ids that are no longer
  admitted, with a version that only grows, so a newer list replaces an older one wherever it is
  seen (it is spread on a reserved topic and persisted by every node).

Every signature covers a label, so no signature of one kind is valid as another. A certificate
is checked (:meth:`Certificate.check`) against the realm (same wire id, signed by the authority),
the subject (the node id proven in the handshake), the time and the revocation list; a failure
raises :class:`~quicmesh.errors.NotAdmitted` with a reason that speaks only of the certificate.

:class:`Trust` is what a node knows: its realm, its own certificate, the current revocation list
and a bounded cache of verified certificates of members it has heard from (handshakes and signed
claims carry them), so that permission checks of relayed claims (``allowed(origin, action,
subject)``) are a dictionary lookup. Nothing here does I/O or reads the clock: the wall-clock time
is an argument; files are read by the runtime (:mod:`quicmesh.runtime.credentials`).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import msgspec

from ..bounded import ContainerRegistry, LruMap
from ..errors import IdentityError, NotAdmitted, TrustError
from ..identity import KeyPair, NodeId
from .permissions import EVERYTHING, Action, Permissions

__all__ = [
    "CERT_VERSION",
    "MAX_REVOKED",
    "REVOCATION_TOPIC",
    "Authority",
    "Certificate",
    "Kind",
    "Realm",
    "RevocationList",
    "Trust",
    "pem_decode",
    "pem_encode",
]

CERT_VERSION = 1
"""Version of the certificate and revocation list encodings."""

MAX_REVOKED = 10_000
"""Most serials (and most subjects) one revocation list may name."""

REVOCATION_TOPIC = "$realm.revocations"
"""The reserved topic revocation lists spread on (every node of an authority realm follows it)."""

MAX_CERT_BYTES = 8192
"""Largest encoded certificate accepted."""

_CERT_LABEL = b"quicmesh/cert/v1\x00"
_REVOKE_LABEL = b"quicmesh/revocations/v1\x00"
_REALM_LABEL = b"quicmesh/realm/v1\x00"
_REALM_FORMAT = "quicmesh-realm/1"

Kind = Literal["node", "client"]

_U63 = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Realm:
    """A realm: its name and, in authority mode, the authority's public key."""

    name: str
    authority: NodeId | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 64 or any(c.isspace() for c in self.name):
            raise TrustError(f"a realm name is 1 to 64 characters without whitespace: {self.name!r:.80}")

    @property
    def open(self) -> bool:
        """Whether this is an open realm (no authority: anyone who knows the name may join)."""
        return self.authority is None

    @property
    def wire_id(self) -> str:
        """The realm's identity in handshakes and signed headers: the name of an open realm, a
        hash of name and authority key (``r1.`` + 32 base32 characters) in authority mode."""
        if self.authority is None:
            return self.name
        digest = hashlib.sha256(_REALM_LABEL + self.name.encode() + b"\x00" + self.authority.raw).digest()
        return "r1." + base64.b32encode(digest[:20]).decode().lower()

    def to_file(self) -> bytes:
        """The public realm file (JSON): what nodes and clients are given."""
        if self.authority is None:
            raise TrustError("an open realm has no realm file")
        doc = {"format": _REALM_FORMAT, "name": self.name, "authority": str(self.authority)}
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_file(cls, data: bytes) -> Realm:
        """Read a public realm file. Raises :class:`~quicmesh.errors.TrustError`."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != _REALM_FORMAT:
                raise TrustError(f"not a realm file (format {_REALM_FORMAT!r} expected)")
            return cls(str(doc["name"]), NodeId.parse(str(doc["authority"])))
        except (ValueError, KeyError, TypeError, IdentityError) as exc:
            if isinstance(exc, TrustError):
                raise
            raise TrustError(f"malformed realm file: {exc}") from exc


class Certificate(msgspec.Struct, array_like=True, frozen=True):
    """A member certificate (``kind="node"``) or a light client's credential (``"client"``),
    signed by the realm authority."""

    version: int
    realm: str
    kind: Kind
    subject: bytes
    serial: int
    not_before: int
    not_after: int
    permissions: Permissions
    signature: bytes = b""

    def body(self) -> bytes:
        """The signed bytes: label plus every field but the signature."""
        return _CERT_LABEL + msgspec.msgpack.encode(
            (self.version, self.realm, self.kind, self.subject, self.serial, self.not_before, self.not_after,
             self.permissions))

    def encode(self) -> bytes:
        """The certificate as bytes (MessagePack), as carried in handshakes and claims."""
        return msgspec.msgpack.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        """Parse a certificate; raises :class:`~quicmesh.errors.NotAdmitted` ("malformed")."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > MAX_CERT_BYTES:
            raise NotAdmitted("malformed certificate")
        try:
            cert = msgspec.msgpack.decode(data, type=cls)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            raise NotAdmitted("malformed certificate") from exc
        if cert.version != CERT_VERSION or len(cert.subject) != 32 or len(cert.signature) != 64:
            raise NotAdmitted("malformed certificate")
        if not (0 <= cert.serial <= _U63 and 0 <= cert.not_before <= cert.not_after <= _U63):
            raise NotAdmitted("malformed certificate")
        return cert

    @property
    def subject_id(self) -> NodeId:
        """The node id (or light client key) this certificate admits."""
        return NodeId(self.subject)

    def check(self, realm: Realm, now: float, *, subject: NodeId | None = None, kind: Kind | None = None,
              revocations: RevocationList | None = None) -> None:
        """Check the certificate for ``realm`` at wall-clock ``now`` (seconds). Raises
        :class:`~quicmesh.errors.NotAdmitted` with the reason; the reasons name only the
        certificate, never the realm."""
        if realm.authority is None:
            raise NotAdmitted("certificates are not used in an open realm")
        if self.realm != realm.wire_id:
            raise NotAdmitted("certificate of another realm")
        try:
            realm.authority.verify(self.signature, self.body())
        except IdentityError as exc:
            raise NotAdmitted("certificate of another realm") from exc
        if subject is not None and self.subject != subject.raw:
            raise NotAdmitted("certificate of another node")
        if kind is not None and self.kind != kind:
            raise NotAdmitted(f"a {self.kind} certificate, a {kind} certificate is needed")
        if now < self.not_before:
            raise NotAdmitted("certificate not yet valid")
        if now > self.not_after:
            raise NotAdmitted("certificate expired")
        if revocations is not None and revocations.revokes(self):
            raise NotAdmitted("certificate revoked")


class RevocationList(msgspec.Struct, array_like=True, frozen=True):
    """Serials and subjects no longer admitted; a higher ``version`` replaces a lower one."""

    version: int
    realm: str
    issued_at: int
    serials: tuple[int, ...] = ()
    subjects: tuple[bytes, ...] = ()
    signature: bytes = b""

    def body(self) -> bytes:
        """The signed bytes."""
        return _REVOKE_LABEL + msgspec.msgpack.encode(
            (self.version, self.realm, self.issued_at, self.serials, self.subjects))

    def encode(self) -> bytes:
        """The list as bytes (MessagePack), as spread and persisted."""
        return msgspec.msgpack.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> RevocationList:
        """Parse a list; raises :class:`~quicmesh.errors.TrustError`."""
        try:
            rl = msgspec.msgpack.decode(data, type=cls)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            raise TrustError("malformed revocation list") from exc
        if len(rl.serials) > MAX_REVOKED or len(rl.subjects) > MAX_REVOKED or len(rl.signature) != 64:
            raise TrustError("malformed revocation list")
        if any(len(s) != 32 for s in rl.subjects) or not 0 <= rl.version <= _U63:
            raise TrustError("malformed revocation list")
        return rl

    def verify(self, realm: Realm) -> None:
        """Check realm and authority signature; raises :class:`~quicmesh.errors.TrustError`."""
        if realm.authority is None or self.realm != realm.wire_id:
            raise TrustError("revocation list of another realm")
        try:
            realm.authority.verify(self.signature, self.body())
        except IdentityError as exc:
            raise TrustError("revocation list not signed by the realm authority") from exc

    def revokes(self, cert: Certificate) -> bool:
        """Whether ``cert`` is revoked (by serial or by subject). The authority writes both
        tuples sorted; a list from elsewhere is searched the same way after verification."""
        return _contains(self.serials, cert.serial) or _contains(self.subjects, cert.subject)


def _contains(items: tuple[int, ...] | tuple[bytes, ...], x: int | bytes) -> bool:
    i = bisect.bisect_left(items, x)
    return i < len(items) and items[i] == x


class Authority:
    """A realm authority: the realm and the private key that signs its certificates."""

    def __init__(self, realm: Realm, keypair: KeyPair) -> None:
        if realm.authority != keypair.node_id:
            raise TrustError("the authority key does not match the realm")
        self.realm = realm
        self.keypair = keypair

    @classmethod
    def create(cls, name: str, keypair: KeyPair | None = None) -> Authority:
        """A new realm named ``name`` with a fresh (or the given) authority key."""
        kp = keypair or KeyPair.generate()
        return cls(Realm(name, kp.node_id), kp)

    def admit(self, subject: NodeId, permissions: Permissions, *, not_before: int, not_after: int, serial: int,
              kind: Kind = "node") -> Certificate:
        """Sign a certificate admitting ``subject`` with ``permissions`` for the given window."""
        if not 0 <= serial <= _U63 or not 0 <= not_before <= not_after <= _U63:
            raise TrustError("serial and validity must be 0 <= not_before <= not_after < 2^63")
        unsigned = Certificate(CERT_VERSION, self.realm.wire_id, kind, subject.raw, serial, not_before, not_after,
                               permissions)
        return msgspec.structs.replace(unsigned, signature=self.keypair.sign(unsigned.body()))

    def revoke(self, previous: RevocationList | None, *, now: int, serials: tuple[int, ...] = (),
               subjects: tuple[NodeId, ...] = ()) -> RevocationList:
        """A new list: ``previous`` plus ``serials`` and ``subjects``, with the next version."""
        old_serials = previous.serials if previous else ()
        old_subjects = previous.subjects if previous else ()
        all_serials = tuple(sorted(set(old_serials) | set(serials)))
        all_subjects = tuple(sorted(set(old_subjects) | {s.raw for s in subjects}))
        if len(all_serials) > MAX_REVOKED or len(all_subjects) > MAX_REVOKED:
            raise TrustError(f"a revocation list names at most {MAX_REVOKED} serials and subjects")
        version = (previous.version + 1) if previous else 1
        unsigned = RevocationList(version, self.realm.wire_id, now, all_serials, all_subjects)
        return msgspec.structs.replace(unsigned, signature=self.keypair.sign(unsigned.body()))


_PEM_LINE = 64


def pem_encode(label: str, data: bytes) -> bytes:
    """``-----BEGIN label-----`` / base64 lines / ``-----END label-----``."""
    b64 = base64.b64encode(data).decode()
    lines = [b64[i:i + _PEM_LINE] for i in range(0, len(b64), _PEM_LINE)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode()


def pem_decode(label: str, text: bytes) -> bytes | None:
    """The bytes of the first ``label`` block in ``text``, or None when there is none.
    Raises :class:`~quicmesh.errors.TrustError` on a broken block."""
    s = text.decode("utf-8", "replace")
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    i = s.find(begin)
    if i < 0:
        return None
    j = s.find(end, i)
    if j < 0:
        raise TrustError(f"unterminated {label} block")
    try:
        return base64.b64decode("".join(s[i + len(begin):j].split()), validate=True)
    except ValueError as exc:
        raise TrustError(f"malformed {label} block") from exc


class Trust:
    """What one node knows about its realm: the realm, its own certificate, the current
    revocation list and a bounded cache of verified member certificates (by subject)."""

    def __init__(self, realm: Realm, *, certificate: Certificate | None = None,
                 revocations: RevocationList | None = None, registry: ContainerRegistry | None = None,
                 capacity: int = 4096) -> None:
        self._realm = realm
        self.open: bool = realm.open
        """Whether the realm is open (no authority, no certificates); fixed with the realm (a plain
        attribute: it is read on every message and call, #14)."""
        self.certificate = certificate
        self.revocations = revocations
        self._certs: LruMap[bytes, Certificate] = LruMap("trust.certificates", capacity, registry=registry)
        self._verified: LruMap[bytes, Certificate] = LruMap(
            "trust.verified", capacity, capacity_bytes=capacity * 512, sizeof=lambda c: 256 + 32 * (
                len(c.permissions.allow) + len(c.permissions.deny)), registry=registry)
        self._encoded: bytes | None = certificate.encode() if certificate else None
        self.rejected = 0
        """Certificates refused by :meth:`learn` (bad signature, expired, revoked, foreign)."""

    @classmethod
    def open_realm(cls, name: str, *, registry: ContainerRegistry | None = None) -> Trust:
        """An open realm: everyone is a full member."""
        return cls(Realm(name), registry=registry)

    @property
    def realm(self) -> Realm:
        """The realm (fixed for this object's life)."""
        return self._realm

    @property
    def wire_id(self) -> str:
        """The realm's wire identity."""
        return self.realm.wire_id

    @property
    def own_certificate(self) -> bytes | None:
        """This node's certificate, encoded (None in an open realm)."""
        return self._encoded

    @property
    def own_permissions(self) -> Permissions:
        """What this node may do."""
        if self.open:
            return EVERYTHING
        return self.certificate.permissions if self.certificate else Permissions()

    def renew(self, certificate: Certificate, now: float) -> None:
        """Replace this node's certificate (checked first: raises ``NotAdmitted``)."""
        certificate.check(self.realm, now, revocations=self.revocations)
        if self.certificate is not None and certificate.subject != self.certificate.subject:
            raise NotAdmitted("certificate of another node")
        self.certificate = certificate
        self._encoded = certificate.encode()

    def learn(self, data: bytes | None, now: float, *, subject: NodeId | None = None,
              kind: Kind | None = None) -> Certificate | None:
        """Verify an encoded certificate and remember it for its subject. Returns the
        certificate (None in an open realm). Raises :class:`~quicmesh.errors.NotAdmitted`."""
        if self.open:
            return None
        if not data:
            self.rejected += 1
            raise NotAdmitted("no certificate")
        data = bytes(data)
        known = self._verified.get(data)  # the fast path: these exact bytes verified before
        if known is not None and known.not_before <= now <= known.not_after and \
                (subject is None or known.subject == subject.raw) and (kind is None or known.kind == kind):
            self._certs.get(known.subject)
            return known
        try:
            cert = Certificate.decode(data)
            cert.check(self.realm, now, subject=subject, kind=kind, revocations=self.revocations)
        except NotAdmitted:
            self.rejected += 1
            raise
        self._verified.set(data, cert)
        self._certs.set(cert.subject, cert)
        return cert

    def certificate_of(self, node: NodeId) -> Certificate | None:
        """The verified certificate of ``node`` this node knows, if any."""
        return self._certs.peek(node.raw)

    def permissions_of(self, node: NodeId, now: float) -> Permissions | None:
        """What ``node`` may do, or None when its certificate is unknown or no longer valid."""
        if self.open:
            return EVERYTHING
        cert = self._certs.peek(node.raw)
        if cert is None or not cert.not_before <= now <= cert.not_after:
            return None
        return cert.permissions

    def allowed(self, node: NodeId, action: Action, subject: str, now: float) -> bool:
        """Whether ``node`` may do ``action`` on the concrete ``subject`` (False when unknown)."""
        perms = self.permissions_of(node, now)
        return perms is not None and perms.allows(action, subject)

    def apply_revocations(self, rl: RevocationList) -> list[NodeId]:
        """Adopt a newer verified list; returns the known subjects it revokes (to disconnect).
        An older or equal version is ignored (returns []). Raises ``TrustError`` if it does not
        verify."""
        rl.verify(self.realm)
        if list(rl.serials) != sorted(rl.serials) or list(rl.subjects) != sorted(rl.subjects):
            raise TrustError("revocation list not sorted")
        if self.revocations is not None and rl.version <= self.revocations.version:
            return []
        self.revocations = rl
        revoked = [NodeId(k) for k, c in list(self._certs.items()) if rl.revokes(c)]
        for node in revoked:
            self._certs.pop(node.raw)
        for data, c in list(self._verified.items()):
            if rl.revokes(c):
                self._verified.pop(data)
        return revoked

    def revoked(self, node: NodeId) -> bool:
        """Whether the current revocation list names ``node`` (by subject, or by the serial of
        its known certificate)."""
        rl = self.revocations
        if rl is None:
            return False
        cert = self._certs.peek(node.raw)
        return _contains(rl.subjects, node.raw) or (cert is not None and rl.revokes(cert))

    def forget(self, node: NodeId) -> None:
        """Drop ``node``'s certificate from the cache."""
        self._certs.pop(node.raw)
