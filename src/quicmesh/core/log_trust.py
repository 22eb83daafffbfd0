"""Who may write a log: the authors' certificates that travel with log operations.

Theory of operation
-------------------
In an authority realm every log operation an author writes must be allowed by the author's
member certificate: action ``log`` on the log's name (the writer checks its own permission when
it appends; :class:`LogTrust` makes every receiver check it again, as gossip and adverts are
checked). Operations travel with their authors' certificates: a
:class:`~quicmesh.core.log_messages.SyncBatch` carries one certificate per author in the batch
(``certs``), a :class:`~quicmesh.core.log_messages.LiveOp` its author's (``cert``).

**Receiving** (:meth:`LogTrust.check`): before anything of a message is stored, forwarded or
delivered, each author's certificate is looked up among the message's (by subject) and verified
with the node's :class:`~quicmesh.core.trust.Trust` (``learn``: issued by the realm authority,
within its validity window, not revoked, a node certificate whose subject is the operation's
author); then ``log`` must be allowed on the log's name. The operations of an author that fails
are refused and counted by reason (:data:`REASONS`: ``no_certificate``, ``bad_certificate``,
``revoked``, ``expired``, ``denied``). The message's *sender* is penalised with one offence of the
guard (:meth:`~quicmesh.core.guard.Guard.offence`) when the fault is provably its own: it sent
operations without their author's certificate, with a certificate that is not the author's or not
the authority's, or of an author its certificate does not allow on that log. A certificate
revoked or expired (or not yet valid) by this node's clock and revocation list is refused without
penalty (:data:`~quicmesh.core.guard.NO_PENALTY`): an honest relay may not know yet.

**Sending**: the certificates verified on receipt are remembered per author (a bounded LRU map,
``logsync.author_certs``) and written to the store with the operations they came with (the store
keeps one per stored author, persisted by SQLite, so a restarted node can still forward them).
A live push attaches its author's certificate (:meth:`LogTrust.cert_for`; without one the push is
skipped: the peers pull it). Serving a sync request, the store read attaches each author's stored
certificate (:class:`CertFilter`, this node's own for its own logs) and leaves out the authors
whose certificate is missing, expired, revoked or does not allow the log, so an honest node never
sends what its peers would refuse.

In an open realm (no authority) nothing is checked, no certificate travels, nothing is refused.
Nothing here does I/O or reads a clock: the wall-clock time is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..bounded import ContainerRegistry, LruMap
from ..errors import NotAdmitted
from ..identity import NodeId
from .guard import NO_PENALTY, Guard
from .log_messages import LiveOp
from .oplog import Operation, encode_operation
from .trust import Certificate, RevocationList

__all__ = ["AUTHOR_CERTS", "REASONS", "CertFilter", "LogTrust", "log_allowed", "newer_certificate"]

AUTHOR_CERTS = 1024
"""Verified author certificates remembered for live pushes (count; LRU)."""

REASONS = ("no_certificate", "bad_certificate", "revoked", "expired", "denied")
"""Why operations were refused: no certificate of their author came with them; one that is not
the author's node certificate from this realm's authority; revoked; expired or not yet valid;
the certificate does not allow ``log`` on the log's name."""

_Op = tuple[Operation, bytes]

_REASON_OF = {"certificate revoked": "revoked", "certificate expired": "expired",
              "certificate not yet valid": "expired", "no certificate": "no_certificate"}


def log_allowed(cert: Certificate, log: str) -> bool:
    """Whether ``cert`` allows writing the log named ``log``."""
    return cert.permissions.allows("log", log)


@dataclass(frozen=True, slots=True)
class CertFilter:
    """What a store read serving a sync request attaches to its batch: each author's certificate,
    leaving out the authors whose certificate would be refused (see the module docstring). Plain
    immutable values, safe to use on the store's worker thread."""

    own: bytes
    """This node's id (raw); its certificate is :attr:`own_cert`, not the store's."""
    own_cert: bytes | None
    wall_now: float
    """Wall-clock seconds the validity windows are checked at."""
    revocations: RevocationList | None

    def cert(self, author: bytes, stored: bytes | None, log: str) -> bytes | None:
        """The certificate to send with ``author``'s operations of ``log`` (``stored``: the one
        the store holds), or None when they must not be sent."""
        data = self.own_cert if author == self.own else stored
        if not data:
            return None
        try:
            c = Certificate.decode(data)
        except NotAdmitted:
            return None
        if c.subject != author or not c.not_before <= self.wall_now <= c.not_after or not log_allowed(c, log):
            return None
        if self.revocations is not None and self.revocations.revokes(c):
            return None
        return data


def newer_certificate(old: bytes | None, new: bytes) -> bool:
    """Whether ``new`` (verified) should replace the stored certificate ``old`` of the same author:
    it lasts longer, or as long with a higher serial (an unreadable ``old`` is replaced)."""
    if old is None or old == new:
        return old is None
    try:
        o, n = Certificate.decode(old), Certificate.decode(new)
    except NotAdmitted:
        return True
    return (n.not_after, n.serial) >= (o.not_after, o.serial)


class LogTrust:
    """The certificate checks of one node's log sync (see the module docstring); inactive (no
    check, no certificate) without a guard or in an open realm."""

    def __init__(self, guard: Guard | None, registry: ContainerRegistry, capacity: int = AUTHOR_CERTS) -> None:
        self.guard = guard
        self.active = guard is not None and not guard.trust.open
        """Whether certificates are checked and sent (an authority realm)."""
        self._certs: LruMap[bytes, bytes] = LruMap("logsync.author_certs", capacity, registry=registry)
        self.refused: dict[str, int] = dict.fromkeys(REASONS, 0)  # bounded: fixed keys (REASONS)
        """Operations refused, by reason."""
        self.offences = 0
        """Messages whose sender was penalised for them."""

    def check(self, sender: NodeId, log: str, authors: Mapping[bytes, int], certs: Sequence[bytes],
              wall_now: float, now: float) -> tuple[set[bytes], dict[bytes, bytes]]:
        """Check the certificates ``certs`` that came from ``sender`` with operations of ``log`` by
        ``authors`` (author id -> operations of it in the message). Returns the authors whose
        operations are refused (counted) and the verified certificates of the others. Penalises
        ``sender`` once when a refusal is its fault."""
        if not self.active or not authors:
            return set(), {}
        assert self.guard is not None
        trust = self.guard.trust
        found: dict[bytes, Certificate | str] = {}
        raw: dict[bytes, bytes] = {}
        for data in certs[: len(authors)]:  # one per author; more is never needed
            try:
                cert = trust.learn(data, wall_now, kind="node")
            except NotAdmitted as exc:
                reason = exc.reason
                try:
                    subject = Certificate.decode(data).subject
                except NotAdmitted:
                    continue  # unreadable: its author has no certificate
                if subject in authors and subject not in found:
                    found[subject] = reason
                continue
            if cert is not None and cert.subject in authors and not isinstance(found.get(cert.subject), Certificate):
                found[cert.subject] = cert
                raw[cert.subject] = bytes(data)
        refused: set[bytes] = set()
        penalise = False
        for author, n in authors.items():
            got = found.get(author, "no certificate")
            if isinstance(got, Certificate):
                if log_allowed(got, log):
                    self._certs.set(author, raw[author])
                    continue
                why, fault = "denied", True
            else:
                why, fault = _REASON_OF.get(got, "bad_certificate"), got not in NO_PENALTY
            refused.add(author)
            self.refused[why] += n
            penalise = penalise or fault
        if penalise:
            self.offences += 1
            self.guard.offence(sender, now)
        return refused, {a: raw[a] for a in authors if a not in refused}

    def check_batch(self, sender: NodeId, log: str, ops: list[_Op], certs: Sequence[bytes], wall_now: float,
                    now: float) -> tuple[list[_Op], dict[bytes, bytes] | None, bool]:
        """:meth:`check` for the operations of a sync batch: the operations kept, their authors'
        verified certificates (None when inactive) and whether ``sender`` was penalised."""
        if not self.active or not ops:
            return ops, None, False
        authors: dict[bytes, int] = {}
        for op, _ in ops:
            authors[op.header.author] = authors.get(op.header.author, 0) + 1
        before = self.offences
        refused, verified = self.check(sender, log, authors, certs, wall_now, now)
        kept = [(op, p) for op, p in ops if op.header.author not in refused] if refused else ops
        return kept, verified, self.offences != before

    def cert_for(self, author: bytes) -> bytes | None:
        """The certificate to send with ``author``'s operations: this node's own, or the last
        one verified for that author (None when unknown)."""
        if self.guard is None:
            return None
        if author == self.guard.me.raw:
            return self.guard.trust.own_certificate
        data = self._certs.get(author)
        if data is None:
            cert = self.guard.trust.certificate_of(NodeId(author))
            data = cert.encode() if cert is not None else None
        return data

    def refuses(self, sender: NodeId, op: Operation, cert: bytes | None, wall_now: float, now: float) -> bool:
        """:meth:`check` for one live operation with its author's certificate ``cert``: whether
        it is refused."""
        if not self.active:
            return False
        return bool(self.check(sender, op.header.log, {op.header.author: 1}, [cert] if cert else [], wall_now, now)[0])

    def certs_for(self, ops: Iterable[tuple[Operation, bytes]]) -> dict[bytes, bytes] | None:
        """:meth:`cert_for` of the authors of ``ops`` that have one (None when inactive)."""
        if not self.active:
            return None
        out = {a: self.cert_for(a) for a in {op.header.author for op, _ in ops}}
        return {a: c for a, c in out.items() if c is not None}

    def live(self, op: Operation, payload: bytes) -> LiveOp | None:
        """The live push of a stored operation, with its author's certificate in an authority
        realm; None when that certificate is unknown (its peers would refuse the push)."""
        cert = self.cert_for(op.header.author) if self.active else None
        if self.active and cert is None:
            return None
        return LiveOp(op=encode_operation(op), payload=payload, cert=cert)

    def serve_filter(self, wall_now: float) -> CertFilter | None:
        """The filter of a store read serving a sync request (None in an open realm)."""
        if not self.active:
            return None
        assert self.guard is not None
        t = self.guard.trust
        return CertFilter(self.guard.me.raw, t.own_certificate, wall_now, t.revocations)

    def stats(self) -> dict[str, int]:
        """Refused operations by reason and offences, for /health and /metrics."""
        return {**self.refused, "offences": self.offences}

    def close(self) -> None:
        """Leave the registry."""
        self._certs.close()
