"""#11: no exception escapes decoding or handling, across a hypothesis run of mutated frames of
every message type.

1. Valid instances of every message type (derived from the struct definitions, see
   ``tests/wire_values.py``) are encoded and mutated -- bit flips, truncation, splicing with
   another message, and structural edits (huge and negative integers, long strings, wrong types,
   lists and maps where scalars belong) -- and decoded with the node's codec: only
   :class:`~quicmesh.errors.DecodeError` subclasses ever come out.
2. Every message that *does* decode (well typed, possibly hostile) is fed to a
   :class:`~quicmesh.core.node.NodeCore` from a connected peer, as the driver would: the core never
   raises, neither then nor at its next timer and flush.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_values import MESSAGE_INFO, strategy_for

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig
from quicmesh.core.handshake import CONTROL_TYPES
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.node import NodeCore
from quicmesh.core.wire import Codec, Message
from quicmesh.errors import DecodeError
from quicmesh.identity import KeyPair

CODEC = Codec(ALL_MESSAGES)
PEER = KeyPair.from_seed(b"\x02" * 32).node_id
OTHER = KeyPair.from_seed(b"\x03" * 32).node_id
APP_TYPES = tuple(t for t in ALL_MESSAGES if t not in CONTROL_TYPES)
"""What a connected peer's messages can be once the transport took the control messages."""

any_message = st.one_of([strategy_for(MESSAGE_INFO[t]) for t in ALL_MESSAGES])
app_message = st.one_of([strategy_for(MESSAGE_INFO[t]) for t in APP_TYPES])

HOSTILE_VALUES: list[Any] = [
    2**64 - 1, 2**63, 2**63 - 1, -1, -(2**63), 0, 1.5, float("inf"), True, None,
    "", "x" * 400_003, "news." + "y" * 300, "a..b", "*", ">", "a b", "\x00",
    b"", b"\x00" * 31, b"\xff" * 33, b"z" * 100_000,
    [], [0] * 2_000, [b"i" * 16] * 600, {}, {"k": 1}, [[1, 2], [3]], [None],
]
"""Values put in place of a field by the structural mutations: out of range, too long, wrong type."""

stats: Counter[str] = Counter()


def _core() -> NodeCore:
    core = NodeCore(KeyPair.from_seed(b"\x01" * 32), NodeConfig(), random.Random(1), ContainerRegistry("fuzz"),
                    addresses=("127.0.0.1:1",))
    now = 1.0
    core.peer_connected(PEER, ("127.0.0.1:2",), False, now)
    core.peer_connected(OTHER, ("127.0.0.1:3",), True, now)
    for pattern in ("a.>", "news.>", "é€.*"):
        core.subscribe(pattern, now)
    core.publish("a.mine", b"hello", now)
    core.flush(now)
    return core


def _feed(core: NodeCore, msg: Message, now: float) -> None:
    """Hand ``msg`` to the core as the driver does; nothing may raise."""
    if type(msg) in CONTROL_TYPES:
        return
    core.message(PEER, msg, now)
    stats["handled"] += 1


def _mutate_bytes(body: bytes, other: bytes, rng: random.Random) -> bytes:
    b = bytearray(body)
    kind = rng.randrange(5)
    if kind == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1 and b:  # truncation
        del b[rng.randrange(len(b)):]
    elif kind == 2:  # splice with another message
        return bytes(b[: rng.randrange(len(b) + 1)]) + other[rng.randrange(len(other) + 1):]
    elif kind == 3 and b:  # MessagePack markers that announce huge or odd items
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.choice([0xC1, 0xCF, 0xD3, 0xDB, 0xDD, 0xDF, 0xC6, 0xCB, 0xC0, 0xFF])
    else:  # random bytes inserted
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 16))
    return bytes(b)


def _mutate_fields(msg: Message, rng: random.Random) -> bytes:
    """``msg`` with one to three fields (or items of list fields) replaced by hostile values."""
    fields: dict[str, Any] = msgspec.to_builtins(msg)
    names = [k for k in fields if k != "t"]
    for _ in range(rng.randint(1, 3)):
        if not names:
            break
        name = rng.choice(names)
        value = fields[name]
        if isinstance(value, list) and value and rng.random() < 0.5:
            value[rng.randrange(len(value))] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        else:
            fields[name] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    if rng.random() < 0.1:
        fields["t"] = rng.choice(["", "m.nope", 7, None])
    return msgspec.msgpack.encode(fields)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message, any_message, st.randoms(use_true_random=False))
def test_mutated_frames_decode_or_raise_decode_error_and_never_break_the_core(
    msg: Message, other: Message, rng: random.Random
) -> None:
    core = _core()
    body = CODEC.encode(msg)
    candidates = [_mutate_bytes(body, CODEC.encode(other), rng) for _ in range(4)]
    candidates += [_mutate_fields(msg, rng) for _ in range(4)]
    for i, data in enumerate(candidates):
        try:
            decoded = CODEC.decode(data)
        except DecodeError:
            stats["refused"] += 1
            continue
        stats["decoded"] += 1
        assert isinstance(decoded, ALL_MESSAGES)
        _feed(core, decoded, 2.0 + i)
    core.timer(100.0)
    core.flush(100.0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(app_message, min_size=1, max_size=25))
def test_well_typed_hostile_messages_never_raise_in_the_core(msgs: list[Message]) -> None:
    core = _core()
    now = 2.0
    for msg in msgs:
        decoded = CODEC.decode(CODEC.encode(msg))  # as received: through the codec
        _feed(core, decoded, now)
        now += 0.01
    for t in (now, now + 1.0, now + 700.0):
        core.timer(t)
        core.flush(t)
    core.peer_disconnected(PEER, now + 701.0, graceful=False)
    core.timer(now + 2000.0)


def test_fuzz_figures() -> None:
    """Runs last in this file: the figures of the two properties above."""
    total = stats["refused"] + stats["decoded"]
    print(f"{total:,} mutated frames of {len(ALL_MESSAGES)} message types: {stats['refused']:,} refused with a "
          f"DecodeError, {stats['decoded']:,} decoded; {stats['handled']:,} well-typed messages handled by a "
          f"NodeCore; 0 other exceptions")
    assert stats["refused"] > 0 and stats["decoded"] > 0 and stats["handled"] > 0
