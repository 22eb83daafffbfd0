"""Topic names, subscription patterns, swarm keys and per-publisher ordering.

Theory of operation
-------------------
**Names.** A topic is a dot-separated list of non-empty segments (``sensors.kitchen.temp``), at
most ``MAX_TOPIC_LEN`` characters, no whitespace, and none of its segments is ``*`` or ``>``.
A *pattern* is a topic whose segments may be ``*`` (exactly one segment) or, as the last segment,
``>`` (one or more remaining segments), as in NATS. ``sensors.*`` matches ``sensors.temp`` but not
``sensors.a.b``; ``sensors.>`` matches both, but not ``sensors``.

**Swarms.** Payloads of a topic travel only inside its *swarm*, the set of nodes subscribed to a
pattern that can match it. The swarm key is the topic's **first segment**: ``sensors.kitchen.temp``
travels in swarm ``sensors``. A pattern joins the swarm of its first segment, which must therefore
be literal (``*.temp`` and ``>`` are refused with :class:`ValueError`). So a subscriber of
``sensors.temp`` also carries (relays, without delivering) ``sensors.hum``; choose first segments
as the unit of interest. Matching is done on the subscriber side: a node delivers a message only
when one of its own patterns matches the full topic.

**Ordering.** Each publisher numbers its messages per swarm (``seq`` from 0) within an ``epoch`` (a
random 64-bit value drawn each time it joins the swarm, so a restarted publisher is recognised).
Messages arrive in batches (:class:`~quicmesh.core.plumtree.Arrived`: ``seq`` is the first
message's number, a batch of n covers ``seq .. seq + n - 1``); a batch is ordered as one unit and
every count below is in messages, not batches. :class:`Ordering` keeps, per (swarm, publisher), the
next expected ``seq`` and a reorder buffer of at most ``window`` messages; all buffers together
hold at most ``max_buffered`` messages (the memory bound; a burst arriving over two paths while the
tree repairs needs a deep window for one publisher, never for all of them at once). In-order
messages are released at once. A message after a gap is buffered; the gap is given up (counted in
``gaps``, and the missing seqs counted in ``skipped``) when the buffer (or the shared budget) is
full, or when it has been waited for long enough, and the buffered messages are then released in
order. Long enough: ``gap_hold`` since the gap was first seen, and then on only while the
swarm's tree is repairing messages it was told of (a missing message is announced by the
neighbours that have it, and grafted from them: while that goes on it may be on its way),
re-checked every quarter of ``start_wait``, and never past ``gap_timeout``. At the first check an
id announced but not yet grafted counts as a repair; at later ones only a GRAFT that is out does
(an announced id is most often a payload a few milliseconds behind its IHAVE, and a busy swarm
nearly always has one). So a gap that nobody can fill (the messages a partition kept away, that
no cache holds any more) costs ~``gap_hold``, not ``gap_timeout`` (#14), however busy the swarm.
With a ``pull`` (the mesh's), a later gap is also pulled from its first check on, three times:
its publisher's batches in the missing seqs are asked of the swarm's neighbours, which answer
from their caches (a message whose every announcement was lost, or whose GRAFTs all failed).
Without a tree to ask (no ``repairing``), a gap waits ``gap_timeout``.
A message older than the next expected seq (it came after its gap was given up) is dropped and
counted as ``late``: order is never violated. The first message seen from a publisher with
``seq > 0`` (we joined mid-stream) starts a gap the same way, so a message overtaken on the way
is not lost; it waits ``start_wait`` and is held on past that only when this node has long been
in the swarm (a late joiner is not held for seconds). Publisher states live in a
:class:`~quicmesh.bounded.TtlMap` (capacity ``max_publishers``); an evicted publisher starts over
as new.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..bounded import ContainerRegistry, Tracked, TtlMap, Watch
from ..identity import NodeId
from .grammar import MAX_TOPIC_LEN, Pattern, check_topic, parse_pattern, swarm_of

if TYPE_CHECKING:  # only named in hints: the broadcast tree is not loaded with the topic grammar (#14)
    from .plumtree import Arrived

__all__ = [
    "GROUP_NAME",
    "MAX_TOPIC_LEN",
    "Ordering",
    "Pattern",
    "check_group",
    "check_topic",
    "parse_pattern",
    "swarm_of",
]

GROUP_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
"""A work-queue group name (:mod:`quicmesh.core.groups`): 1 to 64 letters, digits, ``_ . -``."""


def check_group(group: str) -> None:
    """Raise ``ValueError`` unless ``group`` is a valid work-queue group name (:data:`GROUP_NAME`)."""
    if not isinstance(group, str) or not GROUP_NAME.fullmatch(group):
        raise ValueError(f"a group name is 1 to 64 letters, digits, '_', '.' or '-', got {group!r:.80}")


PULLS_PER_GAP = 3
"""Pulls of one gap position at most (see ``Ordering.pull``)."""


class _PubState:
    __slots__ = ("at", "buf", "epoch", "held", "judged", "next", "pulled")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.next: int | None = None
        self.buf: dict[int, Arrived] = {}  # bounded: at most Ordering.window messages (held)
        self.at: dict[int, float] = {}  # bounded: one per entry of buf
        """When each buffered batch arrived, in order of arrival (a dict keeps it): the first is
        the earliest, when the gap below the buffered batches was first seen."""
        self.held = 0
        """Messages in ``buf`` (batches count their messages)."""
        self.judged = -1.0
        """When the gap last checked by :meth:`Ordering._held_on` was first seen (its first check
        is the one that finds another value here)."""
        self.pulled: tuple[float, int, int] = (-1.0, -1, 0)
        """(when the gap was first seen, the seq pulled, how many times) of the last pull."""


class Ordering(Tracked):
    """Per-(swarm, publisher) reorder buffers; see the module docstring.

    Reports the messages held for reordering, all publishers together, as the bounded structure
    ``topics.reorder_buffer`` (capacity ``max_buffered``): ``evictions`` count the messages
    released early because a buffer was full, ``expirations`` those released when a gap timed out.
    """

    kind = "reorder_buffer"

    def __init__(
        self,
        window: int,
        gap_timeout: float,
        max_publishers: int,
        registry: ContainerRegistry,
        *,
        max_buffered: int | None = None,
        idle_ttl: float = 600.0,
        start_wait: float | None = None,
        gap_hold: float | None = None,
        repairing: Callable[[str, float, bool, bool], bool] | None = None,
        pull: Callable[[str, NodeId, int, int, int, float], bool] | None = None,
    ) -> None:
        self.window = window
        self.gap_timeout = gap_timeout
        self.start_wait = gap_timeout if start_wait is None else min(start_wait, gap_timeout)
        """#14: seconds a publisher's first message seen mid-stream (we joined late, or forgot the
        publisher) waits for earlier ones before delivery starts from it."""
        self.gap_hold = gap_timeout if gap_hold is None else min(gap_hold, gap_timeout)
        """#14: seconds a later gap is waited for in any case; past it, only while ``repairing``."""
        self.repairing = repairing
        """``repairing(swarm, now, start, first)``: whether ``swarm``'s broadcast tree is repairing
        announced but missing messages (for a start gap, ``start``, only when this node has been
        a member since before ``gap_timeout`` ago; ``first``: the gap's first check, where an id
        announced but not yet grafted counts too). A gap past its first wait (``start_wait`` or
        ``gap_hold``) is held on while it does, re-checked every ``start_wait / 4``, until the
        repairs end or ``gap_timeout`` has passed since it was first seen: the missing messages
        may be on their way (a lost first message was repaired 1.2 s late under 20 % loss).
        Re-checked, not extended once to ``gap_timeout`` (#14: after a partition healed, a node
        whose swarm was repairing one message when its start wait ended held a publisher it had
        never heard from for the whole 10 s; the repair took 0.1 s). A recent joiner's start is
        not held on (it joined mid-stream: under churn that wait cost fresh joiners messages and
        doubled p99)."""
        self.pull = pull
        """``pull(swarm, publisher, epoch, seq, n, now)`` (#14): ask the swarm's neighbours for
        ``publisher``'s batches in the ``n`` messages from ``seq``
        (:meth:`~quicmesh.core.plumtree.Plumtree.pull`); whether it was asked. From its first
        check on, repairs or not, a later gap is pulled at each check, ``PULLS_PER_GAP`` times
        (again from its new start when an answer moved it on), and held a re-check
        (``start_wait / 4``) for each answer; the first check comes that many re-checks early, so
        a gap nobody can fill is still given up at ``gap_hold``. Its message may be cached next
        door and never have been announced here (every announcement of it lost), or its GRAFTs
        may have failed again and again (an answer may be lost too, hence more than one pull)."""
        self.max_buffered = max_buffered if max_buffered is not None else window * 16
        """Messages held for reordering over all publishers together: the real memory bound."""
        super().__init__("topics.reorder_buffer", self.max_buffered, registry=registry)
        self.buffered = 0
        self.states: TtlMap[tuple[str, NodeId], _PubState] = TtlMap(
            "topics.publishers", max_publishers, idle_ttl, registry=registry, on_evict=self._evicted,
            touch_granularity=min(1.0, idle_ttl / 100),
        )
        """Per-(swarm, publisher) state, dropped ``idle_ttl`` after its last message (to within
        1 s or 1 %: renewed at that granularity, not per message; #14), or, when full, the one
        closest to that."""
        self.gap_timers: TtlMap[tuple[str, NodeId], None] = TtlMap(
            "topics.gap_timers", max_publishers, gap_timeout, registry=registry
        )
        self.counters = {"gaps": 0, "skipped": 0, "late": 0, "reordered": 0}  # bounded: fixed keys

    def _evicted(self, _key: tuple[str, NodeId], st: _PubState) -> None:
        self.buffered -= st.held

    def offer(self, a: Arrived, now: float) -> list[Arrived]:
        """Take one new batch; return the batches now deliverable, in order."""
        key = (a.swarm, a.publisher)
        st = self.states.get(key)
        if st is None or st.epoch != a.epoch:
            if st is not None:
                self.buffered -= st.held
            st = _PubState(a.epoch)
            self.states.set(key, st, now)
            self.gap_timers.pop(key)
            if a.seq == 0:
                st.next = 0
        self.states.touch(key, now)
        if st.next is None and a.seq == 0:
            st.next = 0  # #14: an epoch's first message fills the start even when a later one came first
        if st.next is not None and a.seq < st.next:
            self.counters["late"] += len(a.payloads)
            return []
        if st.next is not None and a.seq == st.next:
            out = [a]
            st.next += len(a.payloads)
            if st.buf:
                out += self._release(st)
            if not st.buf:
                self.gap_timers.pop(key)
            return out
        # a gap (or a first message from mid-stream): buffer
        if a.seq in st.buf:
            return []
        n = len(a.payloads)
        st.buf[a.seq] = a
        st.at[a.seq] = now
        st.held += n
        self.buffered += n
        if self.buffered > self._peak:
            self._peak = self.buffered
        self.counters["reordered"] += n
        if key not in self.gap_timers:
            self.gap_timers.set(key, None, now, self._first_wait(st))
        if st.held >= self.window or self.buffered >= self.max_buffered:
            held = self.buffered
            out = self._skip(st)
            self._evictions += held - self.buffered
            self.gap_timers.pop(key)
            return out + self._next_gap(key, st, now)
        return []

    def _next_gap(self, key: tuple[str, NodeId], st: _PubState, now: float) -> list[Arrived]:
        """After a gap was given up: a further gap behind the released run was first seen when
        the earliest batch still buffered arrived, and it times out ``gap_timeout`` after that,
        not after the gap before it (#14: a fresh joiner's two gaps in a row held the live stream
        for two timeouts, 20 s, and the simulated run ended first); one already timed out is
        given up at once. Returns what becomes deliverable."""
        out: list[Arrived] = []
        while st.buf:
            due = next(iter(st.at.values())) + self._first_wait(st)  # the earliest arrival: O(1), not a scan
            if due > now:
                self.gap_timers.set(key, None, now, due - now)
                break
            if self._held_on(key, st, now):
                break
            held = self.buffered
            out += self._skip(st)
            self._expirations += held - self.buffered
        return out

    def _first_wait(self, st: _PubState) -> float:
        """How long a gap is held whatever happens: ``start_wait`` at a publisher's start, else
        ``gap_hold`` when the tree's repairs are known (held on only while they last), else
        ``gap_timeout``. With pulls, a later gap's first check comes ``PULLS_PER_GAP`` re-checks
        before ``gap_hold``: each of those pulls, and the last answer is judged at ``gap_hold``."""
        if st.next is None:
            return self.start_wait
        if self.repairing is None:
            return self.gap_timeout
        return self.gap_hold - PULLS_PER_GAP * self.start_wait / 4 if self.pull is not None else self.gap_hold

    def _held_on(self, key: tuple[str, NodeId], st: _PubState, now: float) -> bool:
        """Past its first wait, whether the gap below ``st``'s buffered batches is held on (its
        timer armed): while the swarm's tree repairs announced messages, re-checked every quarter
        of ``start_wait``, and at most until ``gap_timeout`` after it was first seen."""
        if self.repairing is None or not st.at:
            return False
        seen = next(iter(st.at.values()))
        left = seen + self.gap_timeout - now
        first, st.judged = st.judged != seen, seen
        pull, nxt, pulled = self.pull, st.next, False
        if left > 0.001 and pull is not None and nxt is not None:
            n = 1 if st.pulled[:2] != (seen, nxt) else st.pulled[2] + 1  # the gap moved: pulled anew
            if n <= PULLS_PER_GAP:
                st.pulled = (seen, nxt, n)  # pulled, and held a re-check for the answer
                pulled = pull(key[0], key[1], st.epoch, nxt, min(st.buf) - nxt, now)
        if left > 0.001 and (pulled or self.repairing(key[0], now, nxt is None, first)):
            self.gap_timers.set(key, None, now, min(self.start_wait / 4, left))
            return True
        hold = seen + self.gap_hold - now  # a first check come early for a pull that was not sent
        if nxt is not None and hold > 0.001:
            self.gap_timers.set(key, None, now, hold)
            return True
        return False

    def _release(self, st: _PubState) -> list[Arrived]:
        out: list[Arrived] = []
        assert st.next is not None
        released = 0
        while st.next in st.buf:
            a = st.buf.pop(st.next)
            del st.at[st.next]
            out.append(a)
            st.next += len(a.payloads)
            released += len(a.payloads)
        st.held -= released
        self.buffered -= released
        return out

    def _skip(self, st: _PubState) -> list[Arrived]:
        if not st.buf:
            return []
        low = min(st.buf)
        if st.next is not None:
            self.counters["gaps"] += 1
            self.counters["skipped"] += low - st.next
        st.next = low
        return self._release(st)

    def handle_timer(self, now: float) -> list[Arrived]:
        """Give up gaps whose timeout passed; return what becomes deliverable."""
        out: list[Arrived] = []
        for key, st in self.states.expire(now):
            self.buffered -= st.held
            self.gap_timers.pop(key)
        for key, _ in self.gap_timers.expire(now):
            state = self.states.get(key)
            if state is not None:
                # #14: judged from its own first sight: the timer may be one armed for a gap
                # before it that filled meanwhile (held on for a repair, then repaired)
                out += self._next_gap(key, state, now)
        return out

    def _size(self) -> int:
        return self.buffered

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever :meth:`next_deadline` may change."""
        for c in (self.gap_timers, self.states,):
            c.watch(w)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (a gap timeout or an idle publisher), or ``None``."""
        a, b = self.gap_timers.next_deadline(), self.states.next_deadline()
        return a if b is None or (a is not None and a < b) else b

    def purge(self, swarm: str) -> None:
        """Forget every publisher of ``swarm``."""
        for key in list(self.states.keys()):
            if key[0] == swarm:
                st = self.states.pop(key)
                if st is not None:
                    self.buffered -= st.held
                self.gap_timers.pop(key)

    def count(self, swarm: str) -> int:
        """Publisher states held for ``swarm``."""
        return sum(1 for k in self.states.keys() if k[0] == swarm)
