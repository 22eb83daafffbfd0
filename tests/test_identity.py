"""Node identities: node id text form, key files, certificates, signatures."""

from __future__ import annotations

import base64
import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from quicmesh.errors import (
    AuthenticationFailed,
    IdentityError,
    InsecureKeyFile,
    InvalidNodeId,
    QuicmeshError,
    SignatureMismatch,
)
from quicmesh.identity import KeyPair, NodeId, make_certificate, node_id_from_certificate, signature_valid

SEED = bytes(range(32))


@pytest.fixture(scope="module")
def kp() -> KeyPair:
    return KeyPair.from_seed(SEED)


# -- NodeId --------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(min_size=32, max_size=32))
def test_node_id_text_round_trip(raw: bytes) -> None:
    nid = NodeId(raw)
    text = str(nid)
    assert len(text) == 52
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert NodeId.parse(text) == nid
    assert NodeId.parse(text.upper()) == nid  # case is folded
    assert text.startswith(nid.short()) and len(nid.short()) == 10
    assert repr(nid) == f"NodeId({text})"


def test_node_id_parse_ignores_surrounding_whitespace() -> None:
    text = _canonical()
    assert NodeId.parse(f"  {text}\n") == NodeId.parse(text)
    with pytest.raises(InvalidNodeId):
        NodeId.parse(text[:26] + " " + text[26:51])


def test_missing_key_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KeyPair.load(tmp_path / "absent.key")


def test_node_id_of_a_key_is_its_public_key(kp: KeyPair) -> None:
    raw = kp.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert kp.node_id.raw == raw
    assert KeyPair.from_seed(SEED).node_id == kp.node_id  # deterministic from the seed
    assert KeyPair.generate().node_id != kp.node_id


def test_node_ids_order_and_hash() -> None:
    a, b = NodeId(b"\x00" * 32), NodeId(b"\x01" + b"\x00" * 31)
    assert a < b
    assert len({a, NodeId(b"\x00" * 32), b}) == 2
    # hash and equality in C (#14: a frozen msgspec Struct): an equal id made apart finds the same entry
    twin = NodeId(bytes(a.raw))
    assert twin is not a and twin == a and not twin != a and hash(twin) == hash(a)
    assert {a: "x"}[twin] == "x" and twin in {a} and b not in {a}
    # a node id equals nothing but a node id: not its raw bytes, not its text
    some: object = a
    assert some != a.raw and a.raw != some and some != str(a) and some is not None and some != None  # noqa: E711
    assert sorted([b, twin]) == [twin, b] and max(a, b) is b


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33, "x" * 32, bytearray(32)])
def test_node_id_rejects_wrong_raw(raw: object) -> None:
    with pytest.raises(InvalidNodeId):
        NodeId(raw)  # type: ignore[arg-type]


def _canonical() -> str:
    return str(NodeId(bytes(range(32))))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a" * 51,  # too short
        "a" * 53,  # too long
        "a" * 51 + "1",  # 1 is not in the alphabet
        "a" * 51 + "8",
        "a" * 51 + "=",
        "a" * 50 + "é" + "a",
        "a" * 51 + "b",  # non-canonical: the 4 unused trailing bits are set
        "a" * 51 + "7",
    ],
)
def test_node_id_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(InvalidNodeId):
        NodeId.parse(text)


def test_non_canonical_text_is_rejected_even_though_base32_decodes_it() -> None:
    text = _canonical()
    last = text[-1]
    # 52 chars carry 260 bits for 256: the last character's low 4 bits must be zero
    sibling = "abcdefghijklmnopqrstuvwxyz234567"["abcdefghijklmnopqrstuvwxyz234567".index(last) | 1]
    assert sibling != last
    assert base64.b32decode((text[:-1] + sibling).upper() + "====") == NodeId.parse(text).raw
    with pytest.raises(InvalidNodeId, match="non-canonical"):
        NodeId.parse(text[:-1] + sibling)


@pytest.mark.parametrize("value", [None, 5, b"a" * 52, ["a"] * 52])
def test_node_id_parse_rejects_non_text(value: object) -> None:
    with pytest.raises(InvalidNodeId):
        NodeId.parse(value)  # type: ignore[arg-type]


def test_invalid_node_id_is_a_value_error_and_a_quicmesh_error() -> None:
    with pytest.raises(ValueError):
        NodeId.parse("nope")
    assert issubclass(InvalidNodeId, QuicmeshError)


# -- signatures ----------------------------------------------------------------------------------


def test_sign_and_verify(kp: KeyPair) -> None:
    sig = kp.sign(b"hello")
    assert len(sig) == 64
    kp.node_id.verify(sig, b"hello")


@pytest.mark.parametrize("tamper", ["data", "signature", "key", "short"])
def test_tampering_raises_signature_mismatch(kp: KeyPair, tamper: str) -> None:
    data, sig, nid = b"hello", kp.sign(b"hello"), kp.node_id
    if tamper == "data":
        data = b"hellO"
    elif tamper == "signature":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    elif tamper == "key":
        nid = KeyPair.generate().node_id
    else:
        sig = sig[:10]
    with pytest.raises(SignatureMismatch):
        nid.verify(sig, data)


def test_from_seed_rejects_wrong_length() -> None:
    with pytest.raises(IdentityError):
        KeyPair.from_seed(b"short")


# -- key files -----------------------------------------------------------------------------------


def test_key_file_is_written_0600_and_loads_back(kp: KeyPair, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "node.key"
    old = os.umask(0)  # even with a permissive umask
    try:
        kp.save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert KeyPair.load(path).node_id == kp.node_id
    assert not (tmp_path / "sub" / "node.key.tmp").exists()


def test_save_replaces_an_existing_file_and_fixes_its_mode(kp: KeyPair, tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    kp.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyPair.load(path).node_id == kp.node_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601])
def test_key_file_readable_by_others_is_refused(kp: KeyPair, tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    kp.save(path)
    path.chmod(mode)
    with pytest.raises(InsecureKeyFile) as info:
        KeyPair.load(path)
    assert f"{mode:04o}" in str(info.value)
    assert "chmod 600" in str(info.value)
    assert isinstance(info.value, PermissionError)


def test_key_file_0400_is_accepted(kp: KeyPair, tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    kp.save(path)
    path.chmod(0o400)
    assert KeyPair.load(path).node_id == kp.node_id


def _write_private(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "other.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.close(fd)
    return path


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | Ed448PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed448", "garbage", "empty", "encrypted", "public"])
def test_non_ed25519_key_file_is_refused(tmp_path: Path, kind: str, kp: KeyPair) -> None:
    if kind == "rsa":
        data = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    elif kind == "ecdsa":
        data = _pem(ec.generate_private_key(ec.SECP256R1()))
    elif kind == "ed448":
        data = _pem(Ed448PrivateKey.generate())
    elif kind == "garbage":
        data = b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"
    elif kind == "empty":
        data = b""
    elif kind == "encrypted":
        data = kp.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    else:
        data = kp.node_id.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    with pytest.raises(IdentityError):
        KeyPair.load(_write_private(tmp_path, data))


def test_load_or_generate_creates_then_reuses(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = KeyPair.load_or_generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyPair.load_or_generate(path).node_id == first.node_id


# -- certificates --------------------------------------------------------------------------------


def test_certificate_binds_the_node_id(kp: KeyPair) -> None:
    cert = make_certificate(kp)
    assert node_id_from_certificate(cert) == kp.node_id
    der = cert.public_bytes(serialization.Encoding.DER)
    assert node_id_from_certificate(der) == kp.node_id
    assert node_id_from_certificate(memoryview(der)) == kp.node_id
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == str(kp.node_id)
    assert cert.issuer == cert.subject
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(spki) == 44 and spki.endswith(kp.node_id.raw)
    cert.verify_directly_issued_by(cert)  # self-signed by the node key


def test_certificate_of_another_key_gives_another_id(kp: KeyPair) -> None:
    other = KeyPair.generate()
    assert node_id_from_certificate(make_certificate(other)) == other.node_id != kp.node_id


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-a-node")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_certificate_with_another_key_type_is_refused(kind: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024) if kind == "rsa" else (
        ec.generate_private_key(ec.SECP256R1())
    )
    cert = _self_signed(key)
    for form in (cert, cert.public_bytes(serialization.Encoding.DER)):
        with pytest.raises(AuthenticationFailed, match="not an Ed25519"):
            node_id_from_certificate(form)


@pytest.mark.parametrize("der", [b"", b"\x30\x03\x02\x01\x01", bytes(range(100))])
def test_unreadable_certificate_is_refused(der: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        node_id_from_certificate(der)


def test_non_certificate_object_is_refused() -> None:
    with pytest.raises(AuthenticationFailed):
        node_id_from_certificate("a string")  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=2048), seed=st.binary(min_size=32, max_size=32))
def test_libsodium_signatures_are_the_ones_openssl_makes_and_checks(data: bytes, seed: bytes) -> None:
    """#14: the hot path signs and verifies with libsodium; Ed25519 is deterministic, so its
    signature is byte for byte OpenSSL's (through ``cryptography``), each verifies the other's,
    and a flipped bit or a wrong key is refused by both."""
    kp = KeyPair.from_seed(seed)
    sig = kp.sign(data)
    assert sig == kp.private_key.sign(data)
    kp.private_key.public_key().verify(sig, data)  # raises if OpenSSL disagrees
    assert signature_valid(kp.node_id.raw, sig, data)
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert not signature_valid(kp.node_id.raw, bad, data)
    assert not signature_valid(kp.node_id.raw, sig, data + b"x")
    assert not signature_valid(KeyPair.from_seed(bytes(32)).node_id.raw, sig, data) or seed == bytes(32)


def test_malformed_signatures_and_keys_are_invalid_not_errors() -> None:
    kp = KeyPair.from_seed(SEED)
    sig = kp.sign(b"m")
    assert not signature_valid(kp.node_id.raw[:31], sig, b"m")  # short key
    assert not signature_valid(kp.node_id.raw, sig[:63], b"m")  # short signature
    assert not signature_valid(bytes(32), bytes(64), b"m")  # the all-zero (small-order) key
    assert not signature_valid(kp.node_id.raw, sig[:32] + b"\xff" * 32, b"m")  # non-canonical S
    with pytest.raises(SignatureMismatch):
        kp.node_id.verify(sig[:63], b"m")
