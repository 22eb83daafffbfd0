"""Realm credentials on disk: the authority key, the public realm file, member certificates,
light-client tokens and revocation lists; and the :class:`~quicmesh.core.trust.Trust` a node
builds from its configuration.

Files (all text):

- ``authority.key`` (secret, mode 0600): a header line ``quicmesh-authority/1``, a line
  ``realm: NAME`` and the authority's Ed25519 private key (PKCS#8 PEM). Kept offline by the
  operator; whoever holds it admits anyone.
- ``realm.pub``: the public realm file (JSON: name and authority public key,
  :meth:`~quicmesh.core.trust.Realm.to_file`), given to every node and client.
- a member certificate: comment lines, ``realm: NAME``, ``authority: ID`` and a PEM block
  ``QUICMESH CERTIFICATE`` (the certificate is public: it admits only the holder of the node key).
- a light-client token (secret, mode 0600): the same lines plus the client's private key
  (PKCS#8 PEM) and its certificate of kind ``client``.
- a revocation list: a PEM block ``QUICMESH REVOCATIONS`` (public; authority-signed).

Secret files are written atomically with mode 0600 and refused when group or others may read
them (as :meth:`~quicmesh.identity.KeyPair.load` does). Errors: :class:`~quicmesh.errors.TrustError`
(malformed or insecure file), :class:`~quicmesh.errors.ConfigError` (missing or inconsistent
settings), :class:`~quicmesh.errors.NotAdmitted` (a node's own certificate is not valid now).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..bounded import ContainerRegistry
from ..config import NodeConfig
from ..core.trust import Authority, Certificate, Realm, RevocationList, Trust, pem_decode, pem_encode
from ..errors import ConfigError, IdentityError, NotAdmitted, TrustError
from ..identity import KeyPair, NodeId

__all__ = [
    "AUTHORITY_FORMAT",
    "CERT_LABEL",
    "REVOCATIONS_LABEL",
    "Credential",
    "client_trust",
    "load_authority",
    "load_certificate",
    "load_realm",
    "load_revocations",
    "load_token",
    "load_trust",
    "read_secret",
    "revocations_path",
    "save_authority",
    "save_certificate",
    "save_realm",
    "save_revocations",
    "save_token",
    "write_file",
]

AUTHORITY_FORMAT = "quicmesh-authority/1"
"""First line of an authority key file."""
CERT_LABEL = "QUICMESH CERTIFICATE"
"""PEM label of a certificate (member or light client)."""
REVOCATIONS_LABEL = "QUICMESH REVOCATIONS"
"""PEM label of a revocation list."""
_KEY_LABEL = "PRIVATE KEY"
_MAX_FILE = 1 << 20


def write_file(path: str | os.PathLike[str], data: bytes, *, secret: bool = False) -> None:
    """Write ``data`` atomically (a temporary file renamed over ``path``); mode 0600 when
    ``secret``, else 0644."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    mode = 0o600 if secret else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """Read a secret file; raises :class:`~quicmesh.errors.TrustError` when group or others may
    access it or it is not a regular file (the mode of the file opened is checked)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as exc:
        raise TrustError(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise TrustError(f"{p} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TrustError(f"{p} has mode {stat.S_IMODE(mode):04o}; it is secret and must not be accessible "
                             f"by group or others (chmod 600 {p})")
        return os.read(fd, _MAX_FILE)
    finally:
        os.close(fd)


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_FILE)
    except OSError as exc:
        raise TrustError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def _headers(text: bytes) -> dict[str, str]:
    """``key: value`` lines before the first PEM block (``#`` lines are comments)."""
    out: dict[str, str] = {}  # bounded: the lines of one small file
    for line in text.decode("utf-8", "replace").splitlines():
        if line.startswith("-----BEGIN"):
            break
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[key.strip().lower()] = value.strip()
    return out


def _private_key(text: bytes, path: str | os.PathLike[str]) -> KeyPair:
    der = pem_decode(_KEY_LABEL, text)
    if der is None:
        raise TrustError(f"{path} holds no private key")
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"{path}: malformed private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{path}: not an Ed25519 key")
    return KeyPair(key)


# -- authority and realm files -----------------------------------------------------------------------


def save_authority(path: str | os.PathLike[str], authority: Authority) -> None:
    """Write the authority key file (mode 0600)."""
    head = (f"{AUTHORITY_FORMAT}\n# quicmesh realm authority: keep it offline; whoever holds it admits anyone\n"
            f"realm: {authority.realm.name}\n")
    write_file(path, head.encode() + authority.keypair.private_pem(), secret=True)


def load_authority(path: str | os.PathLike[str]) -> Authority:
    """Read an authority key file (refused when group or others may read it)."""
    text = read_secret(path)
    if not text.startswith(AUTHORITY_FORMAT.encode()):
        raise TrustError(f"{path} is not an authority key file ({AUTHORITY_FORMAT!r} expected)")
    name = _headers(text).get("realm")
    if not name:
        raise TrustError(f"{path}: no 'realm:' line")
    kp = _private_key(text, path)
    return Authority(Realm(name, kp.node_id), kp)


def save_realm(path: str | os.PathLike[str], realm: Realm) -> None:
    """Write the public realm file."""
    write_file(path, realm.to_file())


def load_realm(path: str | os.PathLike[str]) -> Realm:
    """Read a public realm file."""
    try:
        return Realm.from_file(_read(path, "realm file"))
    except TrustError as exc:
        raise TrustError(f"{path}: {exc}") from None


# -- certificates and tokens ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """A certificate read from disk with the realm it names (and, for a token, its key)."""

    realm: Realm
    certificate: Certificate
    keypair: KeyPair | None = None


def _cert_text(realm: Realm, cert: Certificate, what: str) -> bytes:
    rules = "".join(f"#   {r}\n" for r in cert.permissions.describe())
    head = (f"# quicmesh {what} for {cert.subject_id} (serial {cert.serial})\n{rules}"
            f"realm: {realm.name}\nauthority: {realm.authority}\n")
    return head.encode() + pem_encode(CERT_LABEL, cert.encode())


def _parse_cert(text: bytes, path: str | os.PathLike[str]) -> Credential:
    data = pem_decode(CERT_LABEL, text)
    if data is None:
        raise TrustError(f"{path} holds no {CERT_LABEL}")
    try:
        cert = Certificate.decode(data)
    except NotAdmitted as exc:
        raise TrustError(f"{path}: {exc.reason}") from None
    h = _headers(text)
    try:
        realm = Realm(h.get("realm", ""), NodeId.parse(h.get("authority", "")))
    except (TrustError, IdentityError, ValueError) as exc:
        raise TrustError(f"{path}: missing or malformed 'realm:'/'authority:' lines: {exc}") from None
    if realm.wire_id != cert.realm:
        raise TrustError(f"{path}: the certificate is not of the realm its header names")
    return Credential(realm, cert)


def save_certificate(path: str | os.PathLike[str], realm: Realm, cert: Certificate) -> None:
    """Write a member certificate file."""
    write_file(path, _cert_text(realm, cert, "member certificate"))


def load_certificate(path: str | os.PathLike[str]) -> Credential:
    """Read a member certificate file."""
    return _parse_cert(_read(path, "certificate"), path)


def save_token(path: str | os.PathLike[str], realm: Realm, cert: Certificate, keypair: KeyPair) -> None:
    """Write a light-client token (mode 0600): the client's key and its certificate."""
    if cert.subject != keypair.node_id.raw:
        raise TrustError("the token's certificate is not for its key")
    write_file(path, _cert_text(realm, cert, "light-client token") + keypair.private_pem(), secret=True)


def load_token(path: str | os.PathLike[str]) -> Credential:
    """Read a light-client token (refused when group or others may read it)."""
    text = read_secret(path)
    cred = _parse_cert(text, path)
    kp = _private_key(text, path)
    if cred.certificate.subject != kp.node_id.raw:
        raise TrustError(f"{path}: the certificate is not for the token's key")
    if cred.certificate.kind != "client":
        raise TrustError(f"{path}: a {cred.certificate.kind} certificate, not a light-client token")
    return Credential(cred.realm, cred.certificate, kp)


# -- revocation lists -----------------------------------------------------------------------------------


def save_revocations(path: str | os.PathLike[str], rl: RevocationList) -> None:
    """Write a revocation list file."""
    head = f"# quicmesh revocation list, version {rl.version}: {len(rl.serials)} serials, {len(rl.subjects)} nodes\n"
    write_file(path, head.encode() + pem_encode(REVOCATIONS_LABEL, rl.encode()))


def load_revocations(path: str | os.PathLike[str], realm: Realm | None = None) -> RevocationList | None:
    """Read a revocation list (``None`` when the file does not exist); verified when ``realm``
    is given."""
    if not Path(path).exists():
        return None
    data = pem_decode(REVOCATIONS_LABEL, _read(path, "revocation list"))
    if data is None:
        raise TrustError(f"{path} holds no {REVOCATIONS_LABEL}")
    rl = RevocationList.decode(data)
    if realm is not None:
        rl.verify(realm)
    return rl


def revocations_path(config: NodeConfig) -> Path | None:
    """Where a node keeps its revocation list: ``config.revocations``, else
    ``data_dir/revocations.pem``, else nowhere (memory only)."""
    if config.revocations:
        return Path(config.revocations)
    if config.data_dir:
        return Path(config.data_dir) / "revocations.pem"
    return None


# -- a node's trust -------------------------------------------------------------------------------------


def load_trust(config: NodeConfig, node: NodeId, now: float, *, registry: ContainerRegistry | None = None) -> Trust:
    """The :class:`~quicmesh.core.trust.Trust` of a node: an open realm named ``config.realm``
    when neither ``realm_file`` nor ``cert`` is set; else authority mode with the node's member
    certificate (checked against ``node`` and the wall-clock ``now``) and its stored revocation
    list."""
    if not config.realm_file and not config.cert:
        return Trust.open_realm(config.realm, registry=registry)
    if not config.cert:
        raise ConfigError("cert", "a node of an authority realm needs its member certificate (--cert)")
    cred = load_certificate(config.cert)
    realm = cred.realm
    if config.realm_file:
        realm = load_realm(config.realm_file)
        if realm != cred.realm:
            raise ConfigError("cert", f"{config.cert} is a certificate of another realm than {config.realm_file}")
    if config.realm not in ("default", realm.name):
        raise ConfigError("realm", f"{config.realm!r} differs from the realm file's name {realm.name!r}")
    cert = cred.certificate
    if cert.subject != node.raw:
        raise ConfigError("cert", f"{config.cert} admits node {cert.subject_id}, this node is {node}")
    if cert.kind != "node":
        raise ConfigError("cert", f"{config.cert} is a light-client token, not a member certificate")
    rpath = revocations_path(config)
    rl = load_revocations(rpath, realm) if rpath is not None else None
    try:
        cert.check(realm, now, subject=node, kind="node", revocations=rl)
    except NotAdmitted as exc:
        raise NotAdmitted(f"own certificate {config.cert}: {exc.reason}") from None
    return Trust(realm, certificate=cert, revocations=rl, registry=registry)


def client_trust(token: str | os.PathLike[str] | Credential | None,
                 realm_file: str | os.PathLike[str] | None = None) -> tuple[Trust | None, KeyPair | None]:
    """A light client's trust and key: from its ``token`` (authority mode; the key is the
    token's), or ``(None, None)`` for an open realm. ``realm_file``, when given, must name the
    token's realm; without a token it makes an authority-mode client with no credential (the
    gateway refuses it with :class:`~quicmesh.errors.NotAdmitted`)."""
    realm = load_realm(realm_file) if realm_file is not None else None
    if token is None:
        return (Trust(realm), None) if realm is not None else (None, None)
    cred = token if isinstance(token, Credential) else load_token(token)
    if realm is not None and realm != cred.realm:
        raise TrustError(f"the token is of another realm than {realm_file}")
    return Trust(cred.realm, certificate=cred.certificate), cred.keypair
