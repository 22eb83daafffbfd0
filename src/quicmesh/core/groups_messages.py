"""Wire messages of work-queue groups (see :mod:`quicmesh.core.groups`).

Every field is constrained at decode time (:mod:`quicmesh.core.wire` types); the receiver checks
the rest (the group name's grammar, the pattern, that the topic matches it).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .wire import MAX_WIRE_LIST, Message, Name, UInt

__all__ = ["GROUP_MESSAGES", "GAck", "GPush"]


class GPush(Message, tag="g.push"):
    """Publisher node -> the member node it chose: take message ``i`` (the publisher's own
    number) on topic ``s`` (subject) for group ``g`` of pattern ``q``."""

    i: UInt
    s: Name
    g: Name
    q: Name
    d: bytes


class GAck(Message, tag="g.ack"):
    """Member node -> publisher node: messages ``i`` were taken by a local member (``n``: refused
    or given back untaken; the publisher redelivers them to another member)."""

    i: Annotated[list[UInt], msgspec.Meta(max_length=MAX_WIRE_LIST)]
    n: bool = False


GROUP_MESSAGES: tuple[type[Message], ...] = (GPush, GAck)
