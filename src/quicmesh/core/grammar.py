"""The topic grammar: topic names, subscription patterns and swarm keys (no state).

A topic is a dot-separated list of non-empty segments, at most :data:`MAX_TOPIC_LEN` characters,
no whitespace, no segment ``*`` or ``>``; a pattern may use ``*`` (one segment) and, last, ``>``
(the rest), its first segment (the swarm key) literal. See :mod:`quicmesh.core.topics` for the
theory of operation. This module imports nothing but ``re`` so that the wire messages can check
the grammar at decode time (:mod:`quicmesh.core.mesh_messages`) without an import cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["MAX_TOPIC_LEN", "Pattern", "check_pattern", "check_swarm_key", "check_topic", "match_segments",
           "parse_pattern", "swarm_of"]

MAX_TOPIC_LEN = 256
"""Longest topic or pattern (characters)."""


def _segments(text: str, what: str) -> list[str]:
    if not isinstance(text, str) or not text or len(text) > MAX_TOPIC_LEN:
        raise ValueError(f"a {what} is 1 to {MAX_TOPIC_LEN} characters: {text!r:.80}")
    if any(c.isspace() for c in text):
        raise ValueError(f"a {what} has no whitespace: {text!r:.80}")
    segs = text.split(".")
    if any(not s for s in segs):
        raise ValueError(f"a {what} has no empty segment: {text!r:.80}")
    return segs


_SEGMENT = r"(?![*>](?:\.|\Z))[^.\s]+"
_VALID_TOPIC = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
"""A valid topic in one C-level match (the regex whitespace class is ``str.isspace``'s); every
publish checks its topic, so the common case must be cheap. The slow path explains the error."""


_CHECKED_MAX = 1024
_checked: dict[str, None] = {}  # bounded: cleared at _CHECKED_MAX entries
"""Topics found valid lately. A message is checked where it is built and again where it is
decoded, hop after hop (#14: a dictionary lookup instead of the match, ~70 against 290-480 ns); a
string is immutable, so a topic once valid stays valid. Emptied when full (a node seeing many
distinct topics matches them again, as without it)."""


def check_topic(topic: str) -> str:
    """Validate a concrete topic (no wildcards); returns it. Raises ``ValueError``."""
    if type(topic) is str and topic in _checked:
        return topic
    if isinstance(topic, str) and len(topic) <= MAX_TOPIC_LEN and _VALID_TOPIC.fullmatch(topic):
        if len(_checked) >= _CHECKED_MAX:
            _checked.clear()
        _checked[topic] = None
        return topic
    segs = _segments(topic, "topic")
    if any(s in ("*", ">") for s in segs):
        raise ValueError(f"a published topic has no wildcard: {topic!r:.80}")
    return topic


def swarm_of(topic: str) -> str:
    """The swarm key of a topic or pattern: its first segment."""
    return topic.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed subscription pattern."""

    text: str
    segments: tuple[str, ...] = field(repr=False)

    @property
    def swarm(self) -> str:
        """The swarm this pattern joins (its literal first segment)."""
        return self.segments[0]

    def matches(self, topic: str) -> bool:
        """Whether the concrete ``topic`` matches this pattern."""
        return match_segments(self.segments, topic)


def match_segments(pattern: tuple[str, ...], subject: str) -> bool:
    """Whether the concrete ``subject`` (a topic, or a procedure or log name) matches the pattern
    split into ``pattern`` segments (``*`` one segment, a last ``>`` one or more)."""
    t = subject.split(".")
    for i, seg in enumerate(pattern):
        if seg == ">":
            return len(t) > i
        if i >= len(t):
            return False
        if seg != "*" and seg != t[i]:
            return False
    return len(t) == len(pattern)


def parse_pattern(text: str) -> Pattern:
    """Parse a subscription pattern. Raises ``ValueError`` (see the module docstring)."""
    segs = _segments(text, "pattern")
    if segs[0] in ("*", ">"):
        raise ValueError(f"a pattern's first segment (its swarm) must be literal: {text!r:.80}")
    for i, s in enumerate(segs):
        if s == ">" and i != len(segs) - 1:
            raise ValueError(f"'>' may only be the last segment: {text!r:.80}")
        if s not in ("*", ">") and ("*" in s or ">" in s):
            raise ValueError(f"wildcards are whole segments: {text!r:.80}")
    return Pattern(text, tuple(segs))


def check_pattern(text: str) -> str:
    """Validate a subscription pattern; returns it. Raises ``ValueError``."""
    parse_pattern(text)
    return text


def check_swarm_key(key: str) -> str:
    """Validate a swarm key as found in every mesh message's ``s``: ``""`` (the realm overlay) or
    one literal topic segment. Returns it; raises ``ValueError``."""
    if key == "":
        return key
    if not isinstance(key, str) or "." in key:
        raise ValueError(f"a swarm key is one topic segment: {key!r:.80}")
    return check_topic(key)
