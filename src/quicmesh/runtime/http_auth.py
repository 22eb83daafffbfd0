"""Who calls the HTTP face, and what they may do: bearer tokens and permissions.

Theory of operation
-------------------
A light client's token (``quicmesh token issue``) holds the client's Ed25519 key and a
certificate of kind ``client`` signed by the realm authority. Over QUIC the client proves the key
in the handshake; HTTP has none, so an HTTP client sends a *bearer* made from its token
(:func:`bearer_of`, printed by ``quicmesh token bearer --token FILE``):
``Authorization: Bearer qmb1.<certificate>.<signature>``, both parts base64url without padding,
the signature being the client key's over :data:`BEARER_CONTEXT` followed by the certificate.
Only the key's holder can make one, and it does not reveal the key (a node that sees it cannot
speak for the client over QUIC). Like every bearer token it can be replayed by whoever reads it:
send it over loopback or a TLS-terminating proxy, and revoke the certificate (by serial or
client id) when it leaks. Browsers' WebSocket API cannot set headers, so ``?access_token=`` is
accepted too.

:meth:`HttpAuth.authenticate` runs once per request. In an open realm everyone may do
everything, with or without a bearer, as the gateway admits any light client of an open realm.
In an authority realm a request without a bearer, or with one that does not parse or verify, or
whose certificate is not valid now (another realm, not a client certificate, expired, revoked)
is refused with :class:`~quicmesh.errors.NotAdmitted` (401). A verified signature is remembered
per bearer string (a bounded LRU map, ``http_api.bearers``); the certificate is checked by the
node's :class:`~quicmesh.core.trust.Trust` at every request (its cache of verified certificates
drops what a new revocation list revokes).

:meth:`HttpAuth.require` then checks each action against the certificate's permissions, as the
gateway does for a light client: ``publish`` on the topic, ``subscribe`` on the pattern (a
subscription overlapping a deny rule is filtered per delivered topic, :meth:`HttpAuth.delivery_filter`),
``call`` on the procedure, ``log`` on the map's name to write it and ``log`` or ``subscribe`` on
it to read it. A denial raises :class:`~quicmesh.errors.PermissionDenied` (403), counted by
action in the node's guard (``quicmesh_permission_denied_total``).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..bounded import ContainerRegistry, LruMap
from ..core.guard import Guard
from ..core.permissions import Action, Permissions
from ..core.trust import Certificate
from ..errors import IdentityError, NotAdmitted, PermissionDenied
from ..identity import NodeId
from .credentials import Credential

__all__ = ["BEARER_CONTEXT", "BEARER_PREFIX", "MAX_BEARER", "Access", "HttpAuth", "bearer_of", "denied", "parse_bearer"]

BEARER_PREFIX = "qmb1."
"""First characters of a quicmesh HTTP bearer (format version 1)."""
BEARER_CONTEXT = b"quicmesh-http-bearer/1\x00"
"""What the client key signs before the certificate (so the signature means nothing elsewhere)."""
MAX_BEARER = 8192
"""Longest bearer accepted (characters); a certificate with 64 rules of each kind fits."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bearer_of(credential: Credential) -> str:
    """The HTTP bearer of a light-client token (see the module docstring)."""
    if credential.keypair is None:
        raise ValueError("a bearer is made from a light-client token (with its key)")
    cert = credential.certificate.encode()
    return BEARER_PREFIX + _b64(cert) + "." + _b64(credential.keypair.sign(BEARER_CONTEXT + cert))


def parse_bearer(text: str) -> tuple[NodeId, bytes]:
    """The client id and encoded certificate of a bearer whose signature verifies; raises
    :class:`~quicmesh.errors.NotAdmitted` otherwise (the certificate itself is not checked)."""
    if len(text) > MAX_BEARER or not text.startswith(BEARER_PREFIX):
        raise NotAdmitted("not a quicmesh bearer token (qmb1.…; see `quicmesh token bearer`)")
    cert_text, dot, sig_text = text[len(BEARER_PREFIX):].partition(".")
    try:
        if not dot:
            raise ValueError("no signature")
        cert, sig = _unb64(cert_text), _unb64(sig_text)
        client = Certificate.decode(cert).subject_id
        client.verify(sig, BEARER_CONTEXT + cert)
    except (ValueError, binascii.Error, IdentityError, NotAdmitted):
        raise NotAdmitted("malformed or forged bearer token") from None
    return client, cert


@dataclass(frozen=True, slots=True)
class Access:
    """Who a request acts for: ``client`` (None: anyone, in an open realm) and its permissions
    (None: everything)."""

    client: NodeId | None
    permissions: Permissions | None


_OPEN = Access(None, None)


class HttpAuth:
    """Authenticates HTTP face requests and checks their actions (see the module docstring)."""

    def __init__(self, guard: Guard, *, registry: ContainerRegistry | None = None, capacity: int = 1024,
                 wall: Callable[[], float] = time.time) -> None:
        self._guard = guard
        self._wall = wall
        self._verified: LruMap[str, tuple[NodeId, bytes]] = LruMap("http_api.bearers", capacity, registry=registry)
        self.unauthorized_total = 0
        """Requests refused 401."""

    @property
    def open(self) -> bool:
        """Whether the node's realm is open (no credential needed)."""
        return self._guard.trust.open

    def authenticate(self, authorization: str | None, access_token: str | None = None) -> Access:
        """The access of a request from its ``Authorization`` header (or ``access_token``
        query parameter); raises :class:`~quicmesh.errors.NotAdmitted` (401)."""
        trust = self._guard.trust
        if trust.open:
            return _OPEN
        try:
            bearer = self._bearer_text(authorization, access_token)
            known = self._verified.get(bearer)
            if known is None:
                known = parse_bearer(bearer)
                self._verified.set(bearer, known)
            client, cert = known
            now = self._wall()
            trust.learn(cert, now, subject=client, kind="client")
            perms = trust.permissions_of(client, now)
            if perms is None or trust.revoked(client):
                raise NotAdmitted("certificate revoked")
        except NotAdmitted:
            self.unauthorized_total += 1
            raise
        return Access(client, perms)

    @staticmethod
    def _bearer_text(authorization: str | None, access_token: str | None) -> str:
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise NotAdmitted("the Authorization header must be 'Bearer <token>'")
            return value.strip()
        if access_token:
            return access_token.strip()
        raise NotAdmitted("a bearer token is needed (Authorization: Bearer <token>)")

    def require(self, access: Access, action: Action, subject: str) -> None:
        """Raise :class:`~quicmesh.errors.PermissionDenied` (counted) unless ``access`` may do
        ``action`` on ``subject``."""
        if access.permissions is None or Guard.allows(access.permissions, action, subject):
            return
        raise self._guard.deny(action, subject)

    def require_read(self, access: Access, name: str) -> None:
        """Reading map ``name``: ``log`` (write) or ``subscribe`` (read) permission on its name."""
        perms = access.permissions
        if perms is None or perms.allows("log", name) or perms.allows("subscribe", name):
            return
        raise self._guard.deny("subscribe", name)

    @staticmethod
    def delivery_filter(access: Access) -> Permissions | None:
        """Permissions each delivered topic must pass (``allows("subscribe", topic)``), or None
        when every topic of an allowed subscription may be delivered."""
        perms = access.permissions
        if perms is None:
            return None
        return perms if perms.filters() else None


def denied(exc: PermissionDenied) -> dict[str, str]:
    """The JSON fields naming what was denied."""
    return {"action": exc.action, "subject": exc.subject[:1000]}

