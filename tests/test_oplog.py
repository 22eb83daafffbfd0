"""Operations: creation, validation, canonical encoding, and single-byte corruption."""

from __future__ import annotations

import itertools
import random

import msgspec
import pytest

from quicmesh.core.oplog import (
    MAX_TIMESTAMP,
    OP_VERSION,
    Acceptance,
    Header,
    LogHead,
    Operation,
    create_operation,
    decode_operation,
    encode_operation,
    hash_bytes,
    operation_id,
    validate,
    validate_local,
)
from quicmesh.errors import (
    BacklinkMismatch,
    ForeignRealm,
    InvalidOperation,
    OperationTooLarge,
    PayloadMismatch,
    SeqGap,
    SignatureMismatch,
    TimestampAhead,
    UnknownVersion,
)
from quicmesh.identity import KeyPair

ALICE = KeyPair.from_seed(b"a" * 32)
BOB = KeyPair.from_seed(b"b" * 32)
MAX = 1 << 20


def chain(kp: KeyPair, n: int, log: str = "notes", prune_at: int | None = None) -> list[tuple[Operation, bytes]]:
    out: list[tuple[Operation, bytes]] = []
    prev = None
    for i in range(n):
        payload = f"payload {i}".encode()
        op = create_operation(kp, log, payload, prev, 1_000_000 + i, prune=(i == prune_at))
        out.append((op, payload))
        prev = op
    return out


def test_chain_validates_and_links() -> None:
    ops = chain(ALICE, 5)
    validate(ops[0][0], ops[0][1], None, MAX)
    for (prev, _), (op, payload) in itertools.pairwise(ops):
        validate(op, payload, prev, MAX)
        validate(op, payload, LogHead(prev.seq, prev.id), MAX)
        assert op.header.backlink == prev.id
        assert op.seq == prev.seq + 1
    assert ops[0][0].header.backlink is None
    assert ops[0][0].author == ALICE.node_id
    assert ops[0][0].header.payload_hash == hash_bytes(b"payload 0")


def test_encoding_roundtrip_is_canonical() -> None:
    for op, _ in chain(ALICE, 3):
        data = encode_operation(op)
        back = decode_operation(data)
        assert back == op
        assert encode_operation(back) == data
        assert operation_id(back) == op.id == hash_bytes(data)


def test_typed_errors() -> None:
    ops = chain(ALICE, 4)
    op0, p0 = ops[0]
    op2, p2 = ops[2]
    with pytest.raises(PayloadMismatch):
        validate(op0, b"other", None, MAX)
    with pytest.raises(PayloadMismatch):
        validate(op0, p0 + b"x", None, MAX)
    with pytest.raises(OperationTooLarge):
        validate(op0, p0, None, 3)
    with pytest.raises(SeqGap):
        validate(op2, p2, ops[0][0], MAX)
    with pytest.raises(SeqGap):
        validate(op2, p2, None, MAX)
    with pytest.raises(SeqGap):
        validate(op0, p0, ops[1][0], MAX)
    # same seq position, different chain: backlink mismatch
    other = chain(ALICE, 3, log="notes")
    forked = create_operation(ALICE, "notes", b"fork", ops[1][0], 5)
    validate(forked, b"fork", ops[1][0], MAX)
    with pytest.raises(BacklinkMismatch):
        validate(other[2][0], other[2][1], LogHead(1, b"\x00" * 32), MAX)
    # signature by someone else
    forged = Operation(header=op0.header, signature=BOB.sign(b"x"))
    with pytest.raises(SignatureMismatch):
        validate(forged, p0, None, MAX)
    # version
    for version in (1, OP_VERSION + 1):  # version 1 had no realm
        other_v = Operation(header=msgspec.structs.replace(op0.header, version=version), signature=op0.signature)
        with pytest.raises(UnknownVersion):
            validate(other_v, p0, None, MAX)
        with pytest.raises(UnknownVersion):
            decode_operation(encode_operation(other_v))
    # every typed error is an InvalidOperation and a ValueError
    assert issubclass(SeqGap, InvalidOperation) and issubclass(SeqGap, ValueError)


def test_prune_op_may_follow_a_gap() -> None:
    ops = chain(ALICE, 6, prune_at=4)
    op4, p4 = ops[4]
    validate(op4, p4, None, MAX)
    validate(op4, p4, LogHead(1, ops[1][0].id), MAX)
    with pytest.raises(SeqGap):
        validate(ops[3][0], ops[3][1], LogHead(1, ops[1][0].id), MAX)
    validate(ops[3][0], ops[3][1], LogHead(1, ops[1][0].id), MAX, allow_gap=True)
    # prune with the right predecessor still checks the backlink
    with pytest.raises(BacklinkMismatch):
        validate(op4, p4, LogHead(3, b"\x01" * 32), MAX)


def test_create_refuses_foreign_prev_and_bad_names() -> None:
    ((op0, _),) = chain(BOB, 1)
    with pytest.raises(ValueError):
        create_operation(ALICE, "notes", b"", op0, 1)
    with pytest.raises(InvalidOperation):
        create_operation(ALICE, "", b"", None, 1)
    with pytest.raises(InvalidOperation):
        create_operation(ALICE, "x" * 256, b"", None, 1)


def test_decode_garbage_raises_typed_errors_only() -> None:
    rng = random.Random(7)
    for _n in range(2000):
        data = rng.randbytes(rng.randrange(0, 300))
        with pytest.raises(InvalidOperation):
            decode_operation(data)
    with pytest.raises(OperationTooLarge):
        decode_operation(b"\x92" + b"\x00" * 5000)
    # a non-canonical but decodable encoding (int 1 as uint8) is refused
    op, _ = chain(ALICE, 1)[0]
    data = encode_operation(op)
    assert data[2] == OP_VERSION
    noncanon = data[:1] + bytes([data[1]]) + b"\xcc" + bytes([OP_VERSION]) + data[3:]
    with pytest.raises(InvalidOperation):
        decode_operation(noncanon)


def _regions(op: Operation, data: bytes) -> set[int]:
    """Byte positions inside signed content (author, hashes, signature): flips there must give
    SignatureMismatch exactly."""
    out: set[int] = set()
    h = op.header
    for field in (h.author, h.payload_hash, h.backlink, op.signature):
        if field is None:
            continue
        at = data.index(field)
        out.update(range(at, at + len(field)))
    return out


def test_single_byte_flips_are_rejected_with_the_right_error() -> None:
    """10,000 seeded single-byte corruptions of an encoded operation or its payload."""
    rng = random.Random(20260101)
    ops = chain(ALICE, 3) + chain(BOB, 2, log="a-longer-log-name/with/slashes", prune_at=1)
    cases = []
    for i, (op, payload) in enumerate(ops):
        prev = ops[i - 1][0] if op.seq > 0 and not op.prune else None
        data = encode_operation(op)
        cases.append((op, payload, prev, data, _regions(op, data)))
    seen: dict[type, int] = {}
    for n in range(10_000):
        op, payload, prev, data, signed = cases[n % len(cases)]
        flip_payload = n % 5 == 0
        target = payload if flip_payload else data
        pos = rng.randrange(len(target))
        mutated = bytearray(target)
        mutated[pos] ^= rng.randrange(1, 256)
        try:
            if flip_payload:
                validate(decode_operation(data), bytes(mutated), prev, MAX)
            else:
                validate(decode_operation(bytes(mutated)), payload, prev, MAX)
        except InvalidOperation as exc:
            seen[type(exc)] = seen.get(type(exc), 0) + 1
            if flip_payload:
                assert isinstance(exc, PayloadMismatch), (n, exc)
            elif pos in signed:
                assert isinstance(exc, SignatureMismatch), (n, pos, exc)
            elif pos == 2 and (mutated[2] < 0x80 or mutated[2] >= 0xE0):
                assert isinstance(exc, UnknownVersion), (n, exc)
        else:
            raise AssertionError(f"flip {n} at {pos} was accepted")
    assert seen[SignatureMismatch] > 3000
    assert seen[PayloadMismatch] == 2000
    assert seen.get(InvalidOperation, 0) > 100
    assert seen.get(UnknownVersion, 0) > 0


def test_header_fields_are_positional() -> None:
    op, _ = chain(ALICE, 1)[0]
    assert isinstance(msgspec.msgpack.decode(encode_operation(op)), list)
    assert Header.__struct_fields__[0] == "version"


def test_realm_and_clock_skew_are_checked_against_the_acceptance() -> None:
    op = create_operation(ALICE, "notes", b"x", None, 5_000_000, realm="r1")
    assert op.realm == "r1" and decode_operation(encode_operation(op)) == op
    validate(op, b"x", None, MAX, accept=Acceptance("r1", 5_000_000))
    with pytest.raises(ForeignRealm):
        validate(op, b"x", None, MAX, accept=Acceptance("r2", 5_000_000))
    with pytest.raises(TimestampAhead):
        validate(op, b"x", None, MAX, accept=Acceptance("r1", 4_999_999))
    # the realm is signed: rewriting it breaks the signature
    moved = Operation(header=msgspec.structs.replace(op.header, realm="r2"), signature=op.signature)
    with pytest.raises(SignatureMismatch):
        validate(moved, b"x", None, MAX, accept=Acceptance("r2", 5_000_000))
    acc = Acceptance.at("r1", 1_000_000, 300.0)
    assert acc.not_after == 301_000_000
    assert Acceptance.at("r1", MAX_TIMESTAMP, 300.0).not_after == MAX_TIMESTAMP


def test_timestamps_beyond_the_field_range_are_never_made() -> None:
    with pytest.raises(InvalidOperation):
        create_operation(ALICE, "notes", b"x", None, MAX_TIMESTAMP + 1)
    top = create_operation(ALICE, "notes", b"x", None, MAX_TIMESTAMP)
    validate_local(top, b"x", None, MAX)
    # a header built around create_operation: refused by the writer exactly as by a decoder
    bad = Operation(header=msgspec.structs.replace(top.header, timestamp=MAX_TIMESTAMP + 1), signature=top.signature)
    with pytest.raises(InvalidOperation):
        validate_local(bad, b"x", None, MAX)
    huge = Operation(header=msgspec.structs.replace(top.header, timestamp=1 << 64), signature=top.signature)
    with pytest.raises(InvalidOperation):
        validate_local(huge, b"x", None, MAX)
    with pytest.raises(TimestampAhead):
        validate_local(top, b"x", None, MAX, accept=Acceptance("default", 10**15))
