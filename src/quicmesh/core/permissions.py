"""Permissions: allow/deny patterns per action, in the topic grammar.

Theory of operation
-------------------
A member certificate or a light client's credential carries a :class:`Permissions`: a list of
``allow`` rules and a list of ``deny`` rules, each an :data:`Action` and a pattern. The actions:

- ``publish``: publish on a topic (subject: the topic);
- ``subscribe``: subscribe to a pattern (subject: the pattern);
- ``advertise``: provide a procedure (subject: the procedure name);
- ``call``: call a procedure (subject: the procedure name);
- ``log``: write to a named log or map (subject: the log or map name).

Patterns use the topic grammar (dot-separated segments; ``*`` is one segment, ``>`` as the last
segment one or more), except that the first segment may be a wildcard too, so ``>`` alone means
everything. A concrete subject is **allowed** when some allow rule of its action matches it and no
deny rule does (deny wins; no rule means denied). For ``subscribe`` the subject is itself a
pattern: it is allowed when an allow pattern *covers* it (every topic it can match is matched by
the allow pattern) and no deny pattern covers it; a subscription that is allowed but overlaps a
deny pattern (``a.>`` allowed, ``a.secret`` denied) is accepted and the denied topics are filtered
on delivery (:meth:`Permissions.allows` per message), as NATS does.

:meth:`Permissions.parse` reads the command line's ``ACTION:PATTERN`` form and raises
:class:`ValueError` on anything else; :data:`EVERYTHING` allows every action everywhere (the
permissions of every node of an open realm). Matching is pure and cheap: patterns are split once
(:class:`Rule` caches its segments) and a matcher's answers are not cached here.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Literal, get_args

import msgspec

from .grammar import match_segments
from .topics import MAX_TOPIC_LEN

__all__ = [
    "ACTIONS",
    "EVERYTHING",
    "NOTHING",
    "Action",
    "Permissions",
    "Rule",
    "covers",
    "matches",
    "parse_rule_pattern",
]

Action = Literal["publish", "subscribe", "advertise", "call", "log"]
ACTIONS: tuple[Action, ...] = get_args(Action)
"""Every action a permission can name."""

MAX_RULES = 64
"""Most rules of each kind (allow, deny) in one permission set."""


def parse_rule_pattern(text: str) -> tuple[str, ...]:
    """Split and check a permission pattern; returns its segments. Raises :class:`ValueError`.

    The topic grammar, except that any segment (the first too) may be ``*`` and the last may be
    ``>``, so ``>`` alone means everything.
    """
    if not isinstance(text, str) or not text or len(text) > MAX_TOPIC_LEN:
        raise ValueError(f"a pattern is 1 to {MAX_TOPIC_LEN} characters: {text!r:.80}")
    if any(c.isspace() for c in text):
        raise ValueError(f"a pattern has no whitespace: {text!r:.80}")
    segs = tuple(text.split("."))
    for i, s in enumerate(segs):
        if not s:
            raise ValueError(f"a pattern has no empty segment: {text!r:.80}")
        if s == ">" and i != len(segs) - 1:
            raise ValueError(f"'>' may only be the last segment: {text!r:.80}")
        if s not in ("*", ">") and ("*" in s or ">" in s):
            raise ValueError(f"wildcards are whole segments: {text!r:.80}")
    return segs


@lru_cache(maxsize=4096)  # bounded: at most 4,096 distinct patterns split and kept
def _split(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("."))


def matches(pattern: tuple[str, ...], subject: str) -> bool:
    """Whether the concrete ``subject`` (a topic or a name) matches the split ``pattern``."""
    return match_segments(pattern, subject)


def covers(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """Whether every subject matched by pattern ``inner`` is matched by pattern ``outer``."""
    for i, seg in enumerate(outer):
        if seg == ">":
            return len(inner) > i
        if i >= len(inner):
            return False
        s = inner[i]
        if s == ">":
            return False  # inner matches any depth from here, outer a fixed one
        if seg == "*":
            continue
        if s == "*" or s != seg:
            return False
    return len(inner) == len(outer)


class Rule(msgspec.Struct, array_like=True, frozen=True):
    """One permission rule: an action and a pattern in the topic grammar."""

    action: Action
    pattern: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r:.40}")
        parse_rule_pattern(self.pattern)

    @property
    def segments(self) -> tuple[str, ...]:
        """The pattern split into segments (cached per pattern text)."""
        return _split(self.pattern)

    def __str__(self) -> str:
        return f"{self.action}:{self.pattern}"

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse ``ACTION:PATTERN``. Raises :class:`ValueError`."""
        action, sep, pattern = text.partition(":")
        if not sep:
            raise ValueError(f"a permission is ACTION:PATTERN, got {text!r:.80}")
        action = action.strip()
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r:.40}; one of {', '.join(ACTIONS)}")
        return cls(action, pattern.strip())


def _rules_check(rules: tuple[Rule, ...], what: str) -> None:
    if len(rules) > MAX_RULES:
        raise ValueError(f"at most {MAX_RULES} {what} rules, got {len(rules)}")


class Permissions(msgspec.Struct, array_like=True, frozen=True):
    """Allow and deny rules; deny wins, and what no allow rule names is denied."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        _rules_check(self.allow, "allow")
        _rules_check(self.deny, "deny")

    @classmethod
    def parse(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> Permissions:
        """Build from ``ACTION:PATTERN`` strings (the command line's form). Raises ``ValueError``."""
        return cls(tuple(Rule.parse(a) for a in allow), tuple(Rule.parse(d) for d in deny))

    def allows(self, action: Action, subject: str) -> bool:
        """Whether ``action`` on the concrete ``subject`` (topic, procedure or log name) is allowed."""
        if any(r.action == action and matches(r.segments, subject) for r in self.deny):
            return False
        return any(r.action == action and matches(r.segments, subject) for r in self.allow)

    def allows_subscription(self, pattern: str) -> bool:
        """Whether subscribing to ``pattern`` is allowed: an allow rule covers it and no deny rule
        covers it (topics of a partly denied subscription are filtered with :meth:`allows`)."""
        try:
            segs = parse_rule_pattern(pattern)
        except ValueError:
            return False
        if any(r.action == "subscribe" and covers(r.segments, segs) for r in self.deny):
            return False
        return any(r.action == "subscribe" and covers(r.segments, segs) for r in self.allow)

    def filters(self) -> bool:
        """Whether delivery to a subscriber must check each topic with :meth:`allows` (some
        ``subscribe`` rule is denied)."""
        return any(r.action == "subscribe" for r in self.deny)

    @property
    def unrestricted(self) -> bool:
        """Whether everything is allowed (no deny rule, ``>`` allowed for every action)."""
        if self.deny:
            return False
        return all(any(r.action == a and r.pattern == ">" for r in self.allow) for a in ACTIONS)

    def describe(self) -> list[str]:
        """Human-readable rules: ``allow publish:a.>``, ``deny log:secret``."""
        return [f"allow {r}" for r in self.allow] + [f"deny {r}" for r in self.deny]


EVERYTHING = Permissions(tuple(Rule(a, ">") for a in ACTIONS))
"""Every action allowed everywhere (the permissions of an open realm's members)."""

NOTHING = Permissions()
"""Nothing allowed."""
