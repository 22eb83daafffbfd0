"""Failure detection on live links, in the manner of SWIM and Lifeguard, as a sans-IO machine.

Theory of operation
-------------------
Every neighbour a node holds a connection to (its active views) is **probed** once per
``probe_interval`` (staggered by a random phase; probes due within a quarter interval of one
another go together, so the timer wakes a few times per interval, not once per link): a ``PROBE``
carrying a sequence number, answered at once with an ``ACK``. Any message at all from the peer
counts as an answer (:meth:`FailureDetector.heard`): a peer heard from within the last three
quarters of an interval is not probed (a busy link is never probed for nothing), and a node that
is merely slow refutes by the next thing it sends.

1. **Direct probe.** A round lasts ``max(probe_interval, 2.5 * probe_timeout)``. No answer within
   the probe timeout (``probe_timeout`` scaled by the local health multiplier, below): the peer
   is *unconfirmed* for this round.
2. **Indirect probes.** The node asks up to ``indirect_probes`` other neighbours (``PROBE_REQ``)
   to probe the peer on their own connections. A helper that has no connection to it answers at
   once ``ok=False`` (a *nack*); one that has, probes it and answers ``ok=True`` when the peer
   answers in time, ``ok=False`` otherwise. One ``ok=True`` (or any message from the peer) ends
   the round: the peer is alive, and only our link is slow.
3. **Suspicion.** When the round ends with no answer, the peer
   is *suspected*: it is sent a ``PROBE`` with ``suspect=True`` (a slow peer that sees it knows it
   is suspected, answers and raises its own health multiplier, as Lifeguard's refutation does),
   and a suspicion timer starts. Anything heard from the peer before the timer fires clears the
   suspicion (counted as a refutation). When it fires the peer is **declared failed**:
   :class:`PeerFailed` tells the owner to close the connection, which removes the peer from
   every active view and topic tree through the ordinary disconnect path (HyParView replaces it
   from the passive view, Plumtree repairs its trees).

Timing (``FailureConfig``; ``n`` = number of probed neighbours):

    suspicion_timeout = suspicion_mult * max(1, log10(n + 1)) * probe_interval
    round             = max(probe_interval, 2.5 * probe_timeout)
    detection time   <= probe_interval (until the next probe) + round + suspicion_timeout

With the defaults (1 s, 0.5 s, 3 indirect probes, ``suspicion_mult`` 1.5) and up to 9 neighbours a
SIGKILLed peer is declared failed within 1 + 1.25 + 1.5 = 3.75 s. A false positive needs the peer silent for a whole
round *and* the suspicion timeout, and every helper's probe unanswered too: a process paused
for 300 ms of every second answers each round.

**Local health** (Lifeguard's LHM): a node that is itself slow would suspect healthy peers. The
multiplier ``health`` (0 .. ``health_max``) rises by one when this node learns it is suspected,
and when its own direct probe failed but a helper's succeeded (the trouble was on our side); it
falls by one on each direct probe answered in time. The probe timeout and the suspicion timeout
are multiplied by ``1 + health``.

The machine does no I/O and reads no clock: ``now`` is an argument, randomness comes from the
injected ``rng``; outputs are :class:`ProbeSend` (send a message to a peer) and
:class:`PeerFailed`. Probed peers live in a bounded container, one entry per connected neighbour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random

from ..bounded import BoundedDict, ContainerRegistry
from ..config import FailureConfig
from ..identity import NodeId
from .wire import Message, NodeIdBytes, UInt

__all__ = [
    "FAILURE_MESSAGES",
    "FailureDetector",
    "MProbe",
    "MProbeAck",
    "MProbeReq",
    "MProbeRes",
    "PeerFailed",
    "ProbeSend",
]

_Seq = UInt
_Id = NodeIdBytes


class MProbe(Message, tag="f.probe"):
    """Are you there? ``suspect``: the sender suspects the receiver (it should answer at once)."""

    seq: _Seq
    suspect: bool = False


class MProbeAck(Message, tag="f.ack"):
    """Answer to :class:`MProbe` with the same ``seq``."""

    seq: _Seq


class MProbeReq(Message, tag="f.req"):
    """Please probe ``target`` for me and answer with :class:`MProbeRes` carrying ``seq``."""

    target: _Id
    seq: _Seq


class MProbeRes(Message, tag="f.res"):
    """Result of an indirect probe: ``ok`` when ``target`` answered in time."""

    target: _Id
    seq: _Seq
    ok: bool


FAILURE_MESSAGES: tuple[type[Message], ...] = (MProbe, MProbeAck, MProbeReq, MProbeRes)
"""The failure detector's wire messages."""


@dataclass(frozen=True, slots=True)
class ProbeSend:
    """Send ``message`` to ``peer``."""

    peer: NodeId
    message: Message


@dataclass(frozen=True, slots=True)
class PeerFailed:
    """``peer`` is declared failed: close its connection (``suspected_for`` seconds of suspicion)."""

    peer: NodeId
    suspected_for: float


Output = ProbeSend | PeerFailed


@dataclass(slots=True)
class _Peer:
    next_probe: float
    seq: int = 0
    probe_sent: float | None = None
    """When the pending direct probe went out (None: no probe pending)."""
    round_ends: float | None = None
    indirect_sent: bool = False
    indirect_ok: bool = False
    suspected_at: float | None = None
    suspicion_deadline: float | None = None
    heard: float = 0.0


@dataclass(slots=True)
class _Job:
    """An indirect probe this node runs for ``requester``."""

    requester: NodeId
    target: NodeId
    seq: int
    own_seq: int
    deadline: float


PROBE_COALESCE = 0.25
"""Probes due within this fraction of ``probe_interval`` after a due one are sent with it."""


class FailureDetector:
    """Probes neighbours, asks others to probe them, suspects and declares them failed."""

    def __init__(self, local: NodeId, params: FailureConfig, rng: Random, *, capacity: int,
                 registry: ContainerRegistry | None = None) -> None:
        self.local = local
        self.params = params
        self._rng = rng
        self._peers: BoundedDict[NodeId, _Peer] = BoundedDict("failure.peers", capacity, registry=registry)
        self._jobs: BoundedDict[tuple[NodeId, int], _Job] = BoundedDict(
            "failure.indirect_jobs", params.max_indirect_jobs, registry=registry)
        self._seq = 0
        self._deadline: float | None = None
        self._dirty = False
        """Whether ``_deadline`` must be recomputed (state changed since it was)."""
        self.health = 0
        """Lifeguard's local health multiplier (0 = healthy)."""
        self.probes = 0
        self.acks = 0
        self.indirect_requests = 0
        self.suspicions = 0
        self.refutations = 0
        self.failures = 0
        self.suspected_self = 0
        self.jobs_refused = 0

    # -- peers ------------------------------------------------------------------------------------

    def add(self, peer: NodeId, now: float) -> None:
        """Start probing ``peer`` (a connected neighbour); the first probe comes after a random
        phase within one interval."""
        if peer == self.local or peer in self._peers:
            return
        if len(self._peers) >= self._peers.capacity:
            return
        self._peers[peer] = _Peer(next_probe=now + self._rng.random() * self.params.probe_interval, heard=now)
        self._dirty = True

    def remove(self, peer: NodeId) -> None:
        """Stop probing ``peer`` (its connection is gone)."""
        if self._peers.pop(peer, None) is not None:
            self._dirty = True
        if self._jobs:
            for key in [k for k, j in self._jobs.items() if j.target == peer or j.requester == peer]:
                self._jobs.pop(key, None)
                self._dirty = True

    def probed(self) -> list[NodeId]:
        """The neighbours being probed."""
        return list(self._peers)

    def suspected(self) -> list[NodeId]:
        """The neighbours currently suspected."""
        return [p for p, s in self._peers.items() if s.suspected_at is not None]

    def heard(self, peer: NodeId, now: float) -> None:
        """Anything arrived from ``peer``: it is alive (ends a probe round, refutes a suspicion)."""
        st = self._peers.get(peer)
        if st is None:
            return
        st.heard = now
        if st.probe_sent is not None:
            self._answered(st, now)

    def _answered(self, st: _Peer, now: float) -> None:
        self._dirty = True
        if st.probe_sent is not None and not st.indirect_sent and now - st.probe_sent <= self._probe_timeout():
            self.health = max(0, self.health - 1)
        if st.suspected_at is not None:
            self.refutations += 1
        st.probe_sent = None
        st.round_ends = None
        st.indirect_sent = False
        st.indirect_ok = False
        st.suspected_at = None
        st.suspicion_deadline = None

    # -- timing -----------------------------------------------------------------------------------

    def _probe_timeout(self) -> float:
        return self.params.probe_timeout * (1 + self.health)

    def _round(self) -> float:
        return max(self.params.probe_interval, 2.5 * self._probe_timeout())

    def suspicion_timeout(self) -> float:
        """Seconds a suspected peer has to refute before it is declared failed."""
        n = max(1, len(self._peers))
        base = self.params.suspicion_mult * max(1.0, math.log10(n + 1)) * self.params.probe_interval
        return base * (1 + self.health)

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` has something to do (cached: recomputed only
        after the state changed, so the call after every event costs nothing)."""
        if self._dirty:
            self._deadline = self._compute_deadline()
            self._dirty = False
        return self._deadline

    def _compute_deadline(self) -> float | None:
        best = math.inf
        timeout = self._probe_timeout()
        for st in self._peers.values():
            if st.suspected_at is None:
                if st.probe_sent is None and st.next_probe < best:
                    best = st.next_probe
                if st.round_ends is not None and st.round_ends < best:
                    best = st.round_ends
                if st.probe_sent is not None and not st.indirect_sent and st.probe_sent + timeout < best:
                    best = st.probe_sent + timeout  # not once suspected: handle_timer sends it none
            if st.suspicion_deadline is not None and st.suspicion_deadline < best:
                best = st.suspicion_deadline
        for job in self._jobs.values():
            if job.deadline < best:
                best = job.deadline
        return None if best == math.inf else best

    def handle_timer(self, now: float) -> list[Output]:
        """Send due probes, start indirect probes, suspect and declare failures.

        Probes coalesce: when one is due, every probe due within the next ``PROBE_COALESCE`` of
        an interval goes with it (earlier, never later, so the detection bound holds), which
        keeps this machine's timer to a few wake-ups per interval however many links it has."""
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return []  # another machine's timer: nothing is due here
        out: list[Output] = []
        p = self.params
        early = now + PROBE_COALESCE * p.probe_interval
        quiet = (1 - PROBE_COALESCE) * p.probe_interval  # heard within this long ago: not probed
        self._dirty = True
        for peer, st in list(self._peers.items()):
            if st.suspicion_deadline is not None:
                if now >= st.suspicion_deadline:
                    self.failures += 1
                    out.append(PeerFailed(peer, now - (st.suspected_at or now)))
                    self._peers.pop(peer, None)
                continue
            if st.probe_sent is None:
                if early >= st.next_probe and now < st.heard + quiet:
                    # it spoke lately: that is its answer (the next look is after ``early``)
                    st.next_probe = st.heard + p.probe_interval
                elif early >= st.next_probe:
                    self._seq += 1
                    st.seq = self._seq
                    st.probe_sent = now
                    st.round_ends = now + self._round()
                    st.next_probe = now + p.probe_interval
                    self.probes += 1
                    out.append(ProbeSend(peer, MProbe(seq=st.seq)))
                continue
            if not st.indirect_sent and now >= st.probe_sent + self._probe_timeout():
                st.indirect_sent = True
                helpers = [q for q in self._peers if q != peer]
                self._rng.shuffle(helpers)
                for h in helpers[: p.indirect_probes]:
                    self.indirect_requests += 1
                    out.append(ProbeSend(h, MProbeReq(target=peer.raw, seq=st.seq)))
            if st.round_ends is not None and now >= st.round_ends:
                if st.indirect_ok:  # alive through someone else: our link or we are slow
                    self._answered(st, now)
                    continue
                self.suspicions += 1
                st.suspected_at = now
                st.suspicion_deadline = now + self.suspicion_timeout()
                st.round_ends = None
                out.append(ProbeSend(peer, MProbe(seq=st.seq, suspect=True)))
        for key, job in list(self._jobs.items()):
            if now >= job.deadline:
                self._jobs.pop(key, None)
                out.append(ProbeSend(job.requester, MProbeRes(target=job.target.raw, seq=job.seq, ok=False)))
        return out

    # -- messages ---------------------------------------------------------------------------------

    def handle(self, peer: NodeId, msg: Message, now: float) -> list[Output]:
        """Handle a failure-detector message from ``peer`` (call :meth:`heard` for every message)."""
        if isinstance(msg, MProbe):
            if msg.suspect:
                self.suspected_self += 1
                self.health = min(self.params.health_max, self.health + 1)
            return [ProbeSend(peer, MProbeAck(seq=msg.seq))]
        if isinstance(msg, MProbeAck):
            self.acks += 1
            job = self._jobs.pop((peer, msg.seq), None)
            if job is not None:
                self._dirty = True
                return [ProbeSend(job.requester, MProbeRes(target=job.target.raw, seq=job.seq, ok=True))]
            return []
        if isinstance(msg, MProbeReq | MProbeRes) and len(msg.target) != 32:
            return []  # malformed: ignored (a valid target is a node id)
        if isinstance(msg, MProbeReq):
            return self._probe_for(peer, msg, now)
        if isinstance(msg, MProbeRes):
            st = self._peers.get(NodeId(msg.target))
            if st is not None and msg.ok and msg.seq == st.seq and st.probe_sent is not None:
                self._dirty = True
                st.indirect_ok = True
                self.health = min(self.params.health_max, self.health + 1)
            return []
        return []

    def _probe_for(self, requester: NodeId, msg: MProbeReq, now: float) -> list[Output]:
        self._dirty = True
        target = NodeId(msg.target)
        if target not in self._peers or target == requester:
            return [ProbeSend(requester, MProbeRes(target=msg.target, seq=msg.seq, ok=False))]
        if len(self._jobs) >= self._jobs.capacity:
            self.jobs_refused += 1
            return [ProbeSend(requester, MProbeRes(target=msg.target, seq=msg.seq, ok=False))]
        self._seq += 1
        own = self._seq
        self._jobs[(target, own)] = _Job(requester, target, msg.seq, own, now + self._probe_timeout())
        return [ProbeSend(target, MProbe(seq=own))]

    def stats(self) -> dict[str, int | float]:
        """Counters for ``/metrics`` and ``/health``."""
        return {"probed": len(self._peers), "suspected": len(self.suspected()), "health": self.health,
                "probes": self.probes, "acks": self.acks, "indirect_requests": self.indirect_requests,
                "suspicions": self.suspicions, "refutations": self.refutations, "failures": self.failures,
                "suspected_self": self.suspected_self, "jobs_refused": self.jobs_refused}
