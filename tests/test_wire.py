"""The wire format: every message round-trips, and no input makes a decoder raise anything but a
``DecodeError`` subclass or buffer more than one frame.

Message strategies are derived from the struct definitions (``msgspec.inspect``, see
``tests/wire_values.py``: they honour the field constraints and the topic grammar), so a message
type added to ``ALL_MESSAGES`` is covered without editing this file; a field type the derivation
does not know fails ``test_every_message_type_has_a_strategy`` instead of being skipped.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_values import MESSAGE_INFO, messages, random_message, random_value, strategy_for

from quicmesh.core.messages import ALL_MESSAGES, Ping, Refuse, Reply
from quicmesh.core.wire import DEFAULT_MAX_FRAME_SIZE, HEADER, Codec, Message
from quicmesh.errors import DecodeError, FrameTooLarge, MalformedFrame, UnknownMessageType

MiB = 1 << 20
FUZZ_CASES = 10_000


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec(ALL_MESSAGES)


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_every_message_type_has_a_strategy(cls: type[Message]) -> None:
    strategy_for(MESSAGE_INFO[cls])
    random_value(MESSAGE_INFO[cls], random.Random(0))


def test_tags_are_unique() -> None:
    tags = [MESSAGE_INFO[c].tag for c in ALL_MESSAGES]
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_round_trip_each_type(cls: type[Message]) -> None:
    codec = Codec(ALL_MESSAGES)

    @settings(max_examples=60, deadline=None)
    @given(strategy_for(MESSAGE_INFO[cls]))
    def check(msg: Message) -> None:
        assert codec.decode(codec.encode(msg)) == msg
        frame = codec.frame(msg)
        assert HEADER.unpack_from(frame)[0] == len(frame) - HEADER.size
        assert codec.decoder().feed(frame) == [msg]

    check()


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=6), st.data())
def test_stream_of_frames_in_any_chunking(msgs: list[Message], data: st.DataObject) -> None:
    codec = Codec(ALL_MESSAGES)
    stream = codec.frames(msgs)
    assert stream == b"".join(codec.frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = codec.decoder()
    out: list[Message] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += dec.feed(stream[a:b])
    assert out == msgs
    assert dec.buffered == 0


def test_byte_by_byte_feeding(codec: Codec) -> None:
    rng = random.Random(7)
    msgs = [random_message(rng) for _ in range(50)]
    stream = codec.frames(msgs)
    dec = codec.decoder()
    out: list[Message] = []
    for i in range(len(stream)):
        got = dec.feed(stream[i : i + 1])
        out += got
        assert dec.buffered <= HEADER.size + codec.max_frame_size
    assert out == msgs
    assert dec.buffered == 0


def test_feed_accepts_memoryview_and_bytearray(codec: Codec) -> None:
    frame = codec.frame(Ping(seq=3))
    assert codec.decoder().feed(memoryview(frame)) == [Ping(seq=3)]
    assert codec.decoder().feed(bytearray(frame)) == [Ping(seq=3)]
    assert codec.decode(memoryview(frame)[4:]) == Ping(seq=3)


def test_a_whole_frame_is_decoded_where_it_lies_and_let_go(codec: Codec) -> None:
    """#14: a chunk that is exactly one frame is decoded without a copy into the buffer; nothing
    of it is kept (the caller's bytearray can be changed and resized at once)."""
    frame = bytearray(codec.frame(Ping(seq=3)))
    dec = codec.decoder()
    assert dec.feed(frame) == [Ping(seq=3)]
    frame[-1:] = b"\x05"
    frame.extend(b"more")  # would raise BufferError if a view of it were still held
    assert dec.buffered == 0
    assert dec.feed(codec.frame(Ping(seq=4))[:3]) == [] and dec.buffered == 3  # a part: buffered as before
    assert dec.feed(codec.frame(Ping(seq=4))[3:]) == [Ping(seq=4)] and dec.buffered == 0


# -- typed errors ------------------------------------------------------------------------------


def test_unknown_tag_is_unknown_message_type(codec: Codec) -> None:
    with pytest.raises(UnknownMessageType):
        codec.decode(msgspec.msgpack.encode({"t": "no-such-message", "seq": 1}))


@pytest.mark.parametrize(
    "body",
    [
        msgspec.msgpack.encode({"t": "ping"}),  # missing field
        msgspec.msgpack.encode({"t": "ping", "seq": "one"}),  # wrong type
        msgspec.msgpack.encode({"t": 5, "seq": 1}),  # tag of the wrong type
        msgspec.msgpack.encode({"seq": 1}),  # no tag
        msgspec.msgpack.encode([1, 2, 3]),  # not a map
        b"",
        b"\xc1",  # a never-used MessagePack byte
        msgspec.msgpack.encode({"t": "ping", "seq": 1}) + b"\x00",  # trailing bytes
    ],
)
def test_bad_bodies_are_malformed(codec: Codec, body: bytes) -> None:
    with pytest.raises(MalformedFrame):
        codec.decode(body)


def test_field_validation_error_is_not_mistaken_for_unknown_tag() -> None:
    """A bad value in a field whose name starts with "t" is a malformed frame, not a bad tag."""

    class Topic(Message, tag="topic"):
        topic: Literal["a", "b"]

    class Other(Message, tag="other"):
        n: int

    codec = Codec([Topic, Other])
    with pytest.raises(MalformedFrame) as info:
        codec.decode(msgspec.msgpack.encode({"t": "topic", "topic": "zzz"}))
    assert not isinstance(info.value, UnknownMessageType)
    with pytest.raises(UnknownMessageType):
        codec.decode(msgspec.msgpack.encode({"t": "zzz", "topic": "a"}))


def test_codec_refuses_bad_construction() -> None:
    with pytest.raises(ValueError):
        Codec([])
    with pytest.raises(ValueError):
        Codec(ALL_MESSAGES, max_frame_size=8)
    with pytest.raises(ValueError):
        Codec(ALL_MESSAGES, max_frame_size=1 << 32)


# -- the frame cap -----------------------------------------------------------------------------


def test_default_frame_cap_is_one_mib(codec: Codec) -> None:
    assert codec.max_frame_size == DEFAULT_MAX_FRAME_SIZE == MiB


def test_two_mib_prefix_is_refused_after_four_bytes(codec: Codec) -> None:
    dec = codec.decoder()
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(HEADER.pack(2 * MiB))
    assert info.value.length == 2 * MiB
    assert info.value.limit == MiB
    assert dec.buffered == 0


def test_oversized_prefix_split_across_feeds(codec: Codec) -> None:
    header = HEADER.pack(0xFFFFFFFF)  # a peer asking for 4 GiB
    dec = codec.decoder()
    for i in range(3):
        assert dec.feed(header[i : i + 1]) == []
        assert dec.buffered == i + 1
    with pytest.raises(FrameTooLarge):
        dec.feed(header[3:])
    assert dec.buffered == 0


def test_oversized_prefix_after_good_frames_keeps_nothing(codec: Codec) -> None:
    dec = codec.decoder()
    good = codec.frame(Ping(seq=1))
    with pytest.raises(FrameTooLarge):
        dec.feed(good + HEADER.pack(2 * MiB) + b"x" * 1000)
    assert dec.buffered == 0


def test_poisoned_decoder_keeps_raising(codec: Codec) -> None:
    dec = codec.decoder()
    with pytest.raises(MalformedFrame) as first:
        dec.feed(HEADER.pack(1) + b"\xc1")
    for feed in (codec.frame(Ping(seq=1)), b"", b"\x00"):
        with pytest.raises(MalformedFrame) as again:
            dec.feed(feed)
        assert again.value is first.value
    assert dec.buffered == 0


def test_configurable_frame_cap() -> None:
    small = Codec(ALL_MESSAGES, max_frame_size=64)
    fits = Refuse(code="x", reason="y" * 20)
    too_big = Refuse(code="x", reason="y" * 200)
    assert small.decoder().feed(small.frame(fits)) == [fits]
    with pytest.raises(FrameTooLarge):
        small.frame(too_big)
    with pytest.raises(FrameTooLarge):
        small.frames([fits, too_big])
    big_frame = Codec(ALL_MESSAGES).frame(too_big)
    dec = small.decoder()
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(big_frame[:4])
    assert info.value.limit == 64
    exact = 64
    dec = small.decoder()
    assert dec.feed(HEADER.pack(exact)) == []  # exactly at the cap: accepted, body awaited
    assert dec.feed(b"\x00" * (exact - 1)) == []
    assert dec.buffered == exact - 1


def test_decoder_buffer_never_exceeds_one_frame(codec: Codec) -> None:
    payload = b"p" * (MiB - 200)
    frame = codec.frame(Reply(id=1, payload=payload))
    dec = codec.decoder()
    peak = 0
    for i in range(0, len(frame), 65536):
        dec.feed(frame[i : i + 65536])
        peak = max(peak, dec.buffered)
    assert peak <= HEADER.size + codec.max_frame_size
    assert dec.buffered == 0


# -- fuzzing: only DecodeError subclasses or valid messages ------------------------------------


def _mutate(frame: bytes, rng: random.Random) -> bytes:
    b = bytearray(frame)
    kind = rng.randrange(6)
    if kind == 0 and b:  # flip a few bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1 and b:  # truncate
        del b[rng.randrange(len(b)) :]
    elif kind == 2:  # insert random bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 8))
    elif kind == 3 and b:  # delete a slice
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 8)]
    elif kind == 4 and len(b) >= 4:  # edit the length prefix
        new = rng.choice([0, 1, len(b) - 5, len(b) - 3, rng.randrange(1 << 16), rng.randrange(1 << 32)])
        HEADER.pack_into(b, 0, max(0, min(new, 0xFFFFFFFF)))
    else:  # overwrite a random byte with an interesting MessagePack marker
        if b:
            b[rng.randrange(len(b))] = rng.choice([0xC0, 0xC1, 0xC4, 0xD9, 0xDC, 0xDE, 0xDF, 0xFF, 0x80, 0x90])
    return bytes(b)


def _check_decode(codec: Codec, body: bytes) -> str:
    """Decode ``body``; only a message or a DecodeError may come out. Returns which."""
    try:
        msg = codec.decode(body)
    except DecodeError:
        return "error"
    assert isinstance(msg, ALL_MESSAGES)
    return "message"


def _check_stream(codec: Codec, stream: bytes, rng: random.Random) -> str:
    """Feed ``stream`` in random chunks; only messages or a DecodeError may come out."""
    dec = codec.decoder()
    pos = 0
    got = 0
    try:
        while pos < len(stream):
            step = rng.randint(1, max(1, len(stream) // 2))
            for msg in dec.feed(stream[pos : pos + step]):
                assert isinstance(msg, ALL_MESSAGES)
                got += 1
            pos += step
            assert dec.buffered <= HEADER.size + codec.max_frame_size
    except DecodeError:
        assert dec.buffered == 0
        with pytest.raises(DecodeError):
            dec.feed(b"")
        return "error"
    return "message" if got else "incomplete"


def _assert_mixed(outcomes: Counter[str]) -> None:
    """The fuzzer reached both sides: some inputs were refused, some decoded."""
    assert outcomes["error"] > 0, outcomes
    assert outcomes["message"] > 0, outcomes


def test_random_bytes_to_decode(codec: Codec) -> None:
    rng = random.Random(1)
    outcomes: Counter[str] = Counter()
    for _ in range(FUZZ_CASES):
        outcomes[_check_decode(codec, rng.randbytes(rng.randrange(64)))] += 1
    assert outcomes["error"] > FUZZ_CASES // 2  # random bytes are rarely a message


def test_random_bytes_to_frame_decoder(codec: Codec) -> None:
    rng = random.Random(2)
    outcomes: Counter[str] = Counter()
    for i in range(FUZZ_CASES):
        data = rng.randbytes(rng.randrange(64))
        if i % 2 and len(data) >= 4:  # half of them get a length prefix that matches their size
            data = HEADER.pack(len(data) - 4) + data[4:]
        outcomes[_check_stream(codec, data, rng)] += 1
    assert outcomes["error"] > FUZZ_CASES // 2


def test_mutated_bodies_to_decode(codec: Codec) -> None:
    rng = random.Random(3)
    outcomes: Counter[str] = Counter()
    for _ in range(FUZZ_CASES):
        body = codec.encode(random_message(rng))
        outcomes[_check_decode(codec, _mutate(HEADER.pack(len(body)) + body, rng)[4:])] += 1
    _assert_mixed(outcomes)


def test_mutated_frames_to_frame_decoder(codec: Codec) -> None:
    rng = random.Random(4)
    outcomes: Counter[str] = Counter()
    for _ in range(FUZZ_CASES):
        stream = codec.frames([random_message(rng) for _ in range(rng.randint(1, 3))])
        outcomes[_check_stream(codec, _mutate(stream, rng), rng)] += 1
    _assert_mixed(outcomes)


def test_unmutated_random_messages_decode_exactly(codec: Codec) -> None:
    rng = random.Random(5)
    msgs = [random_message(rng) for _ in range(2_000)]
    assert codec.decoder().feed(codec.frames(msgs)) == msgs
