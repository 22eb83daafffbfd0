"""The wire format: typed messages in length-prefixed frames.

Theory of operation
-------------------
Every message is a :class:`msgspec.Struct` subclass of :class:`Message`, encoded as a MessagePack
map whose ``"t"`` field is the message's tag (a tagged union). A frame is a 4-byte big-endian
length followed by that many bytes of body. :class:`FrameDecoder` is fed arbitrary chunks of a
stream and yields whole messages; it checks each length prefix against ``max_frame_size``
**before** buffering the body, so a peer announcing a 4 GiB frame costs us 4 bytes, not 4 GiB.

Every message field carries its bounds as ``msgspec.Meta`` constraints (the aliases below: node
ids exactly 32 bytes, integers 0 to 2^63-1, names and topics at most 256 characters, address lists
capped in count and length) and topic fields are checked against the topic grammar by the
message's ``__post_init__``, so a decoded message is well formed before any state machine sees
it: a violation is a :class:`~quicmesh.errors.MalformedFrame` like any other bad frame.

Every decode failure raises a subclass of :class:`~quicmesh.errors.DecodeError`
(:class:`~quicmesh.errors.FrameTooLarge`, :class:`~quicmesh.errors.MalformedFrame`,
:class:`~quicmesh.errors.UnknownMessageType`) and never another exception. A decoder that has
raised is poisoned: the stream it parsed is out of sync and must be closed.

:class:`Codec` is built from the list of message types a protocol speaks; the node uses
:data:`quicmesh.core.messages.ALL_MESSAGES`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, ClassVar

import msgspec

from ..errors import DecodeError, FrameTooLarge, MalformedFrame, UnknownMessageType

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER",
    "MAX_INT",
    "MAX_WIRE_ADDRESSES",
    "MAX_WIRE_ADDRESS_LEN",
    "MAX_WIRE_LIST",
    "MAX_WIRE_NAME",
    "NODE_ID_LEN",
    "Address",
    "Addresses",
    "Code",
    "Codec",
    "FrameDecoder",
    "Message",
    "Name",
    "NodeIdBytes",
    "Text",
    "UInt",
]

DEFAULT_MAX_FRAME_SIZE = 1 << 20
"""1 MiB, as NATS' default max payload: large enough for documents, small enough to buffer."""

HEADER = struct.Struct(">I")
"""The frame header: the body length as an unsigned 32-bit big-endian integer."""


# -- field constraints (checked by msgspec at decode time, never at construction) -------------------

NODE_ID_LEN = 32
"""Bytes of a raw node id (an Ed25519 public key)."""
MAX_INT = (1 << 63) - 1
"""Largest integer any field accepts (counters, sequence numbers, epochs, ids, timeouts)."""
MAX_WIRE_NAME = 256
"""Longest name (procedure, realm, log) or topic on the wire, as ``topics.MAX_TOPIC_LEN``."""
MAX_WIRE_ADDRESSES = 16
"""Addresses a peer may list for itself or another (receivers keep at most 8)."""
MAX_WIRE_ADDRESS_LEN = 256
"""Longest ``HOST:PORT`` accepted."""
MAX_WIRE_LIST = 65_536
"""Cap of lists whose real size is set by configuration (service names, log heads...): the frame
size bounds them anyway; this bounds the work per frame of tiny items."""

NodeIdBytes = Annotated[bytes, msgspec.Meta(min_length=NODE_ID_LEN, max_length=NODE_ID_LEN)]
"""A raw node id: exactly 32 bytes."""
UInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
"""A non-negative integer that fits a signed 64-bit field."""
Name = Annotated[str, msgspec.Meta(max_length=MAX_WIRE_NAME)]
"""A procedure, realm or log name (at most 256 characters; receivers check the rest)."""
Code = Annotated[str, msgspec.Meta(max_length=MAX_WIRE_NAME)]
"""A machine-readable error or close code."""
Text = Annotated[str, msgspec.Meta(max_length=1 << 16)]
"""A human-readable message (at most 64 Ki characters)."""
Address = Annotated[str, msgspec.Meta(max_length=MAX_WIRE_ADDRESS_LEN)]
"""``HOST:PORT``."""
Addresses = Annotated[list[Address], msgspec.Meta(max_length=MAX_WIRE_ADDRESSES)]
"""A peer's address list."""


class Message(msgspec.Struct, tag_field="t"):
    """Base class of every wire message. Subclasses set ``tag=...`` in their class statement."""

    KIND: ClassVar[str] = "message"


class Codec:
    """Encodes and decodes one protocol's messages (a tagged union of ``types``)."""

    def __init__(self, types: Sequence[type[Message]], *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not types:
            raise ValueError("a codec needs at least one message type")
        if max_frame_size < 16 or max_frame_size > 0xFFFFFFFF:
            raise ValueError(f"max_frame_size out of range: {max_frame_size}")
        self.types = tuple(types)
        self.max_frame_size = max_frame_size
        union: Any = self.types[0] if len(self.types) == 1 else _union(self.types)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(union)
        self._tags = frozenset(_tag_of(t) for t in self.types)

    def encode(self, message: Message) -> bytes:
        """The body of ``message`` (no length prefix)."""
        return self._encoder.encode(message)

    def frame(self, message: Message) -> bytes:
        """``message`` as one length-prefixed frame. Raises ``FrameTooLarge`` when too big."""
        body = self._encoder.encode(message)
        if len(body) > self.max_frame_size:
            raise FrameTooLarge(len(body), self.max_frame_size)
        return HEADER.pack(len(body)) + body

    def frames(self, messages: Iterable[Message]) -> bytes:
        """Several messages as consecutive frames in one buffer (one write, many messages)."""
        out = bytearray()
        limit = self.max_frame_size
        encode_into = self._encoder.encode_into
        for m in messages:
            start = len(out)
            out += b"\0\0\0\0"
            encode_into(m, out, start + 4)
            n = len(out) - start - 4
            if n > limit:
                raise FrameTooLarge(n, limit)
            HEADER.pack_into(out, start, n)
        return bytes(out)

    def decode(self, body: bytes | bytearray | memoryview) -> Message:
        """Decode one frame body. Raises only :class:`DecodeError` subclasses."""
        try:
            msg = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            text = str(exc)
            if text.startswith("Invalid value") and text.endswith("- at `$.t`"):
                raise UnknownMessageType(text) from None
            raise MalformedFrame(text) from None
        except msgspec.DecodeError as exc:
            raise MalformedFrame(str(exc)) from None
        except Exception as exc:  # pragma: no cover - defensive: msgspec raised something else
            raise MalformedFrame(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(msg, Message):
            raise MalformedFrame(f"decoded a {type(msg).__name__}, not a message")
        return msg

    def decoder(self) -> FrameDecoder:
        """A fresh stream decoder using this codec."""
        return FrameDecoder(self)


class FrameDecoder:
    """Splits a byte stream into messages; checks the frame size before buffering the body."""

    __slots__ = ("_buf", "_codec", "_failed", "_need")

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._buf = bytearray()  # bounded: at most one frame header + max_frame_size bytes
        self._need = -1
        self._failed: DecodeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add bytes; return the messages completed by them (possibly none).

        Raises a :class:`DecodeError` subclass on the first bad frame; afterwards every call
        raises the same error.
        """
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        if not buf and self._need < 0 and len(data) >= 4:
            # #14: a chunk that is one whole frame (a request, a reply, a lone batch) is decoded
            # where it lies, without a copy into the buffer: 1.0 µs against 1.8
            (length,) = HEADER.unpack_from(data, 0)
            if length + 4 == len(data) and length <= self._codec.max_frame_size:
                try:  # (the view is released once decoded: msgspec copies what it keeps)
                    return [self._codec.decode(memoryview(data)[4:])]
                except DecodeError as exc:
                    self._failed = exc
                    raise
        out: list[Message] = []
        buf += data
        limit = self._codec.max_frame_size
        pos = 0
        try:
            while True:
                if self._need < 0:
                    if len(buf) - pos < 4:
                        break
                    (length,) = HEADER.unpack_from(buf, pos)
                    if length > limit:
                        raise FrameTooLarge(length, limit)
                    pos += 4
                    self._need = length
                if len(buf) - pos < self._need:
                    break
                end = pos + self._need
                with memoryview(buf) as view, view[pos:end] as body:
                    out.append(self._codec.decode(body))
                pos = end
                self._need = -1
        except DecodeError as exc:
            self._failed = exc
            buf.clear()
            raise
        finally:
            if self._failed is None and pos:
                del buf[:pos]
        return out


def _tag_of(t: type[Message]) -> str:
    # the struct's own config (msgspec >= 0.14): ``inspect.type_info`` took ~1 ms per type, and
    # every node builds its codecs when it starts
    tag = getattr(getattr(t, "__struct_config__", None), "tag", None)
    if not isinstance(tag, str):
        raise ValueError(f"{t.__name__} has no string tag")
    return tag


def _union(types: Sequence[type[Message]]) -> Any:
    from typing import Union

    return Union[tuple(types)]  # noqa: UP007 - a runtime union of many classes
