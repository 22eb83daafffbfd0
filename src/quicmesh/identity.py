"""Node identities: Ed25519 keypairs, node ids, key files and self-signed certificates.

A node's identity *is* its Ed25519 public key. :class:`NodeId` wraps the 32 raw bytes; its text
form is **lowercase RFC 4648 base32 without padding** (52 characters, alphabet ``a-z2-7``), which
is case-insensitive to read, safe in file names and URLs, and has no look-alike digits.
``NodeId.parse`` accepts exactly that form (upper case is folded) and raises
:class:`~quicmesh.errors.InvalidNodeId` for anything else.

Key files hold the private key as unencrypted PKCS#8 PEM and are written with mode 0600;
:meth:`KeyPair.load` refuses a file that group or others can read
(:class:`~quicmesh.errors.InsecureKeyFile`), as ssh does.

:func:`make_certificate` builds a self-signed X.509 certificate whose subject public key is the
node's Ed25519 key, so a TLS handshake proves possession of the node id.
:func:`node_id_from_certificate` recovers the node id from a peer's certificate and refuses a
certificate that is not bound to an Ed25519 key.

Signing and checking signatures on the hot paths (every gossip batch, advert, log entry) go
through libsodium (PyNaCl): on this project's 2-core machine it verifies in ~68 µs and signs in
~24 µs where OpenSSL through ``cryptography`` takes ~121 and ~36 µs (#14; Ed25519 signatures are
deterministic, so both give the same bytes). ``cryptography`` keeps the key files and the TLS
certificates.
"""

from __future__ import annotations

import base64
import datetime
import os
import stat
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID
from nacl import bindings as _sodium
from nacl.exceptions import CryptoError as _SodiumError

from .errors import AuthenticationFailed, IdentityError, InsecureKeyFile, InvalidNodeId, SignatureMismatch

__all__ = [
    "KeyPair",
    "NodeId",
    "make_certificate",
    "node_id_from_certificate",
    "signature_valid",
]

_NODE_ID_LEN = 32
_TEXT_LEN = 52  # ceil(32 * 8 / 5)
_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_MAX_KEY_FILE = 64 * 1024


class NodeId(msgspec.Struct, frozen=True, order=True, gc=False):
    """A node's Ed25519 public key (32 bytes). ``str()`` gives the 52-character base32 form.

    Immutable, hashable and ordered by its bytes. A frozen ``msgspec.Struct`` (#14): node ids key
    most of a node's tables, hashed ~10 times per message or call, and its hash and equality run
    in C (a dictionary lookup by node id took 158 ns with Python-level methods, 57 ns now)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != _NODE_ID_LEN:
            raise InvalidNodeId(f"a node id is {_NODE_ID_LEN} bytes, got {self.raw!r:.80}")

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse the base32 text form. Raises :class:`InvalidNodeId` on any malformed input.

        Upper case is folded and surrounding whitespace (a trailing newline from a file) is
        ignored; anything else that is not the canonical 52-character form is refused.
        """
        if not isinstance(text, str):
            raise InvalidNodeId(f"a node id is text, got {type(text).__name__}")
        t = text.strip().lower()
        if len(t) != _TEXT_LEN:
            raise InvalidNodeId(f"a node id is {_TEXT_LEN} base32 characters, got {len(t)}: {text!r:.80}")
        if not set(t) <= _B32_ALPHABET:
            raise InvalidNodeId(f"a node id uses only a-z and 2-7: {text!r:.80}")
        try:
            raw = base64.b32decode(t.upper() + "====")
        except ValueError as exc:  # binascii.Error is a ValueError
            raise InvalidNodeId(f"not base32: {text!r:.80}") from exc
        if base64.b32encode(raw).decode().rstrip("=").lower() != t:
            raise InvalidNodeId(f"non-canonical node id (trailing bits set): {text!r:.80}")
        return cls(raw)

    @classmethod
    def from_public_key(cls, key: Ed25519PublicKey) -> NodeId:
        """The node id of an Ed25519 public key."""
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def public_key(self) -> Ed25519PublicKey:
        """The Ed25519 public key this node id encodes."""
        return Ed25519PublicKey.from_public_bytes(self.raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check that ``signature`` over ``data`` was made by this node's key.

        Raises :class:`~quicmesh.errors.SignatureMismatch` otherwise.
        """
        if not signature_valid(self.raw, signature, data):
            raise SignatureMismatch(f"signature does not verify for {self.short()}")

    def short(self) -> str:
        """The first 10 characters of the text form, for logs."""
        return str(self)[:10]

    def __str__(self) -> str:
        return base64.b32encode(self.raw).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"NodeId({self})"


def signature_valid(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature over ``data`` by the 32-byte
    ``public_key`` (libsodium's checks: canonical encodings, no small-order keys); malformed
    input is simply not valid."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        _sodium.crypto_sign_open(signature + data, public_key)
    except (_SodiumError, ValueError, TypeError):
        return False
    return True


class KeyPair:
    """An Ed25519 private key and the node id it defines."""

    __slots__ = ("_node_id", "_private", "_secret")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._node_id = NodeId.from_public_key(private_key.public_key())
        seed = private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        self._secret: bytes = _sodium.crypto_sign_seed_keypair(seed)[1]  # libsodium's seed || public key

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """A key from a 32-byte seed (deterministic; for tests and the simulator)."""
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise IdentityError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def node_id(self) -> NodeId:
        """The node id (public key) of this key pair."""
        return self._node_id

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The Ed25519 private key (for TLS; never log or send it)."""
        return self._private

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data``."""
        return _sodium.crypto_sign(data, self._secret)[:64]  # signature || data

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (what :meth:`save` writes)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key as PEM with mode 0600 (created atomically; an existing file is replaced)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.private_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyPair:
        """Read a key file written by :meth:`save`.

        Raises :class:`InsecureKeyFile` when group or others have any access to it,
        :class:`IdentityError` when it is not an unencrypted Ed25519 private key, and
        ``OSError`` (e.g. ``FileNotFoundError``) when it cannot be opened.
        """
        p = Path(path)
        # Check the mode of the file actually opened (not of the path, which could be swapped
        # between a stat() and an open()), and read at most 64 KiB: a key file is ~120 bytes.
        fd = os.open(p, os.O_RDONLY)
        try:
            mode = os.fstat(fd).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise InsecureKeyFile(
                    f"key file {p} has mode {stat.S_IMODE(mode):04o}; it must not be accessible by "
                    f"group or others (chmod 600 {p})"
                )
            if not stat.S_ISREG(mode):
                raise IdentityError(f"key file {p} is not a regular file")
            data = os.read(fd, _MAX_KEY_FILE)
        finally:
            os.close(fd)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise IdentityError(f"{p} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_generate(cls, path: str | os.PathLike[str]) -> KeyPair:
        """Load the key at ``path``, or generate one and save it there."""
        if Path(path).exists():
            return cls.load(path)
        kp = cls.generate()
        kp.save(path)
        return kp

    def __repr__(self) -> str:
        return f"KeyPair(node_id={self._node_id})"


def make_certificate(keypair: KeyPair, *, valid_days: int = 3650) -> x509.Certificate:
    """A self-signed X.509 certificate for ``keypair`` (subject CN is the node id text).

    TLS peers do not trust it through a CA: they compare its public key with the node id they
    expect (:func:`node_id_from_certificate`).
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(keypair.node_id))])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(keypair.private_key.public_key())
        .serial_number(int.from_bytes(keypair.node_id.raw[:16], "big") >> 1 or 1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("quicmesh")]), critical=False)
    )
    return builder.sign(keypair.private_key, algorithm=None)


def node_id_from_certificate(cert: x509.Certificate | bytes | bytearray | memoryview) -> NodeId:
    """The node id a certificate (object or DER bytes) is bound to.

    Raises :class:`~quicmesh.errors.AuthenticationFailed` when the certificate cannot be parsed
    or its key is not Ed25519.
    """
    if isinstance(cert, bytes | bytearray | memoryview):
        try:
            cert = x509.load_der_x509_certificate(bytes(cert))
        except ValueError as exc:
            raise AuthenticationFailed(f"unreadable peer certificate: {exc}") from exc
    if not isinstance(cert, x509.Certificate):
        raise AuthenticationFailed(f"expected a certificate or DER bytes, got {type(cert).__name__}")
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AuthenticationFailed(f"peer certificate has an unusable key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise AuthenticationFailed(
            f"peer certificate is bound to a {type(key).__name__}, not an Ed25519 node key"
        )
    return NodeId.from_public_key(key)
