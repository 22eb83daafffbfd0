"""#13 hole punching: two nodes behind NATs open a direct path by coordinated simultaneous sends.

Theory of operation
-------------------
Three roles, all in one :class:`Puncher` per node: the **initiator** A (wants a direct path to
B), the **target** B, and **K**, a node both are connected to (the relay of a relayed
connection, a bootstrap node, any common neighbour). The exchange is DCUtR's (rust-libp2p),
carried by K:

1. A -> K ``PunchForward(to=B, CONNECT)``: a :class:`~.punch_messages.PunchEnvelope` signed by
   A that carries A's own signed self-record (its addresses: listen, interface and the
   *observed* public mappings its peers confirmed, :mod:`quicmesh.core.observed`). A notes the
   time it sent it.
2. K forwards it as ``PunchRelayed(frm=A)`` to B only when A and B are both admitted members K
   holds a connection to, and within A's budget (a token bucket per source,
   ``forward_rate``/``forward_burst``, in a bounded LRU of ``forward_sources``); otherwise it
   answers ``PunchRefused(reason)`` and counts the refusal. K never reads or alters an envelope:
   it cannot, the origin signed it.
3. B verifies the envelope (:meth:`Puncher._verify`): A's signature; B is the addressee; the
   sender K names is the signer; the record is A's own (signed by A, about A); the signing time
   is within ``max_age``; the nonce was not seen (a bounded TTL set). A failure is counted by
   reason and the envelope dropped. B answers ``REPLY`` with its own record, through K.
4. A gets the ``REPLY``: the round trip through K is ``rtt``. A sends ``SYNC`` through K and
   dials B's addresses ``rtt / 2`` later; B dials A's addresses when the ``SYNC`` arrives. Both
   dials leave at about the same time, so each side's first packets open its own NAT's mapping
   and filter towards the other's mapping before (or about when) the other's packets arrive.
   The dials are :class:`PunchDial` outputs: the runtime dials from the node's one listening
   socket (the socket whose NAT mapping the peers observed) and reports the outcome
   (:meth:`Puncher.dial_done`).
5. A successful dial makes the direct connection *the* connection for that peer (the runtime's
   business, see :mod:`quicmesh.runtime.holepunch`). A failed attempt (no answer within
   ``exchange_timeout``, every K refused, or the dials failed, e.g. a port-randomising NAT) is
   retried by A after ``backoff * 2**(n-1)`` seconds (capped at ``backoff_max``, spread by
   +-``jitter`` from the seeded RNG) up to ``attempts`` times; then :class:`PunchDone`
   ``final=True`` and the peer is left in cooldown (no automatic punch for ``cooldown``
   seconds). Nothing else changes: the nodes stay on whatever path they had.

Without a K given, A tries up to ``via_candidates`` connected nodes as K one after the other
(a ``PunchRefused`` moves on at once). Everything that grows is bounded: attempts and answers
(``max_active`` each), the replay cache, the per-source buckets, the cooldowns. Pure state: no
I/O; time (``now``), the wall clock (``wall``) and the RNG are arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from random import Random

from ..bounded import BoundedDict, ContainerRegistry, TtlMap, TtlSet
from ..config.punch import PunchConfig
from ..identity import KeyPair, NodeId
from .effects import Send
from .mesh_messages import SelfRecord
from .observed import canonical_address
from .punch_messages import (
    CONNECT,
    REPLY,
    SYNC,
    PunchEnvelope,
    PunchForward,
    PunchRefused,
    PunchRelayed,
    sign_envelope,
    verify_envelope,
)
from .selfrecord import verify_record
from .wire import Message

__all__ = ["PunchDial", "PunchDone", "Puncher"]


@dataclass(frozen=True, slots=True)
class PunchDial:
    """Dial ``peer`` at every one of ``addresses`` at once, from the listening socket, for at
    most ``timeout`` seconds; report with :meth:`Puncher.dial_done` (``nonce`` identifies the
    attempt)."""

    peer: NodeId
    addresses: tuple[str, ...]
    nonce: int
    timeout: float


@dataclass(frozen=True, slots=True)
class PunchDone:
    """A punch this node initiated ended an attempt: ``ok`` (direct path open, ``elapsed``
    seconds after the punch started), or failed for ``reason``; ``final``: no retry follows."""

    peer: NodeId
    ok: bool
    reason: str
    elapsed: float
    final: bool


@dataclass(slots=True)
class _Attempt:
    peer: NodeId
    vias: list[NodeId]
    started: float
    nonce: int = 0
    via: int = 0
    phase: str = "connect"  # connect -> dial_wait -> dialing; backoff between attempts
    sent: float = 0.0
    deadline: float = 0.0
    failures: int = 0
    addresses: tuple[str, ...] = field(default=())
    unconnected: int = 0
    """Nodes of this round that answered ``not_connected`` (none is connected to the peer)."""


@dataclass(slots=True)
class _Answer:
    peer: NodeId
    via: NodeId
    nonce: int
    addresses: tuple[str, ...]
    deadline: float
    dialing: bool = False
    dial_at: float | None = None
    gave_way: float | None = None  # when this node's own punch to the peer started (it answers instead)


class Puncher:
    """The hole-punch coordinator of one node (see the module docstring)."""

    def __init__(
        self,
        keypair: KeyPair,
        realm: str,
        config: PunchConfig,
        rng: Random,
        registry: ContainerRegistry,
        *,
        wall: Callable[[float], float],
        own_record: Callable[[], SelfRecord | None],
        connected: Callable[[NodeId], bool],
        member: Callable[[NodeId, float], bool],
    ) -> None:
        self.id = keypair.node_id
        self._key = keypair
        self.realm = realm
        self.config = config
        self._rng = rng
        self._wall = wall
        self._own_record = own_record
        self._connected = connected
        self._member = member
        self._attempts: BoundedDict[NodeId, _Attempt] = BoundedDict("punch.attempts", config.max_active,
                                                                    registry=registry)
        self._answers: BoundedDict[NodeId, _Answer] = BoundedDict("punch.answers", config.max_active,
                                                                 registry=registry)
        self._seen: TtlSet[tuple[bytes, int, int]] = TtlSet("punch.replay", config.replay_cache,
                                                            2 * config.max_age, registry=registry)
        # a bucket untouched for burst/rate seconds is full again: the same as no entry
        self._buckets: TtlMap[NodeId, tuple[float, float]] = TtlMap(
            "punch.forward_budgets", config.forward_sources,
            max(config.forward_burst / max(config.forward_rate, 1e-9), 1e-3), registry=registry)
        self._cooldown: TtlMap[NodeId, bool] = TtlMap("punch.cooldown", config.max_cooldowns,
                                                      max(config.cooldown, 1e-3), registry=registry)
        self.counters: dict[str, int] = {  # bounded: fixed keys (plus one per reason, a fixed set)
            "attempts": 0, "successes": 0, "failures": 0, "started": 0, "answered": 0, "forwarded": 0,
            "forward_refused": 0, "refused": 0,
        }
        self.failures_by_reason: dict[str, int] = {}  # bounded: reasons are a fixed set of codes
        self.forward_refused_by_reason: dict[str, int] = {}  # bounded: fixed set of codes
        self.refused_by_reason: dict[str, int] = {}  # bounded: fixed set of codes
        self.time_to_direct: list[float] = []  # bounded: the last 256 samples (trimmed in _success)
        self.time_to_direct_sum = 0.0
        self.time_to_direct_max = 0.0

    # -- queries ---------------------------------------------------------------------------------

    def active(self, peer: NodeId) -> bool:
        """Whether a punch to ``peer`` this node initiated is in progress."""
        return peer in self._attempts

    def cooling(self, peer: NodeId) -> bool:
        """Whether ``peer``'s punch failed for good lately (no automatic punch for now)."""
        return peer in self._cooldown

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`timer` has something to do."""
        best = self._seen.next_deadline()
        for d in (self._cooldown.next_deadline(), self._buckets.next_deadline()):
            if d is not None and (best is None or d < best):
                best = d
        if self._attempts or self._answers:
            ds = [a.deadline for a in self._attempts.values()]
            ds += [a.deadline if a.dial_at is None else a.dial_at for a in self._answers.values()]
            if best is not None:
                ds.append(best)
            return min(ds) if ds else None
        return best

    def stats(self) -> dict[str, object]:
        """Counters and sizes for ``/health`` and ``/metrics``."""
        n = self.counters["successes"]
        return {
            **self.counters, "active": len(self._attempts), "answering": len(self._answers),
            "cooling": len(self._cooldown), "failures_by_reason": dict(self.failures_by_reason),
            "forward_refused_by_reason": dict(self.forward_refused_by_reason),
            "refused_by_reason": dict(self.refused_by_reason),
            "time_to_direct_sum": self.time_to_direct_sum, "time_to_direct_count": n,
            "time_to_direct_max": self.time_to_direct_max,
        }

    # -- commands --------------------------------------------------------------------------------

    def start(self, peer: NodeId, vias: Sequence[NodeId], now: float) -> list[object]:
        """Punch a direct path to ``peer`` through the first of ``vias`` that forwards (outputs:
        ``Send``s, later a :class:`PunchDial` and a :class:`PunchDone`). A punch already in
        progress to ``peer`` goes on (nothing new is started)."""
        if peer in self._attempts:
            return []
        vias = [v for v in vias if v != peer and v != self.id]
        if not self.config.enabled or peer == self.id:
            return [PunchDone(peer, False, "disabled" if peer != self.id else "self", 0.0, True)]
        if not vias:
            self._count_failure("no_common_node")
            return [PunchDone(peer, False, "no_common_node", 0.0, True)]
        if len(self._attempts) >= self.config.max_active:
            self._count_failure("busy")
            return [PunchDone(peer, False, "busy", 0.0, True)]
        att = _Attempt(peer, vias[: self.config.via_candidates], now)
        self._attempts[peer] = att
        self.counters["started"] += 1
        return self._connect(att, now)

    def handle(self, frm: NodeId, msg: Message, now: float) -> list[object]:
        """A punch message arrived from connected peer ``frm``."""
        if type(msg) is PunchForward:
            return self._forward(frm, msg, now)
        if type(msg) is PunchRelayed:
            return self._relayed(frm, msg, now)
        if type(msg) is PunchRefused:
            att = self._attempts.get(NodeId(msg.to)) if len(msg.to) == 32 else None
            if att is None or att.phase != "connect" or att.nonce != msg.n or att.vias[att.via] != frm:
                return []
            if msg.reason == "not_connected":
                att.unconnected += 1
                if att.unconnected >= len(att.vias):  # the peer is gone: no retry, no cooldown
                    del self._attempts[att.peer]
                    self._count_failure("unreachable")
                    return [PunchDone(att.peer, False, "unreachable", now - att.started, True)]
            return self._next_via(att, now, f"refused_{msg.reason}" if msg.reason in _NAK_REASONS else "refused")
        return []

    def dial_done(self, peer: NodeId, nonce: int, ok: bool, now: float, reason: str = "dial_failed") -> list[object]:
        """The runtime finished the :class:`PunchDial` of attempt ``nonce`` to ``peer``."""
        ans = self._answers.get(peer)
        if ans is not None and ans.nonce == nonce:
            del self._answers[peer]
            if ok:
                self._cooldown.pop(peer)
            if ans.gave_way is not None:  # this node's own punch, led by the peer: it ends here
                if ok:
                    self.counters["successes"] += 1
                else:
                    self._count_failure(reason)
                return [PunchDone(peer, ok, "direct" if ok else reason, now - ans.gave_way, True)]
        att = self._attempts.get(peer)
        if att is None or att.nonce != nonce or att.phase != "dialing":
            return []
        if ok:
            return self._success(att, now)
        return self._fail(att, now, reason)

    def connected(self, peer: NodeId, now: float) -> list[object]:
        """A direct connection to ``peer`` is up by other means (the target's dial won, or a
        plain dial): a punch in progress to it ends as a success."""
        att = self._attempts.get(peer)
        if att is None or att.phase not in ("dial_wait", "dialing"):
            return []
        return self._success(att, now)

    def timer(self, now: float) -> list[object]:
        """Run the due deadlines: exchange timeouts, dials to start, retries, expiries."""
        self._seen.expire(now)
        self._cooldown.expire(now)
        self._buckets.expire(now)
        out: list[object] = []
        for peer, ans in list(self._answers.items()):
            if ans.dial_at is not None and ans.dial_at <= now:
                ans.dial_at = None
                out.append(PunchDial(peer, ans.addresses, ans.nonce, self.config.dial_timeout))
            elif ans.deadline <= now:
                del self._answers[peer]
                if ans.gave_way is not None:
                    self._count_failure("timeout")
                    out.append(PunchDone(peer, False, "timeout", now - ans.gave_way, True))
        for att in [a for a in self._attempts.values() if a.deadline <= now]:
            if att.phase == "connect":
                out += self._next_via(att, now, "timeout")
            elif att.phase == "dial_wait":
                att.phase = "dialing"
                att.deadline = now + self.config.dial_timeout + self.config.exchange_timeout  # runtime reports first
                out.append(PunchDial(att.peer, att.addresses, att.nonce, self.config.dial_timeout))
            elif att.phase == "dialing":
                out += self._fail(att, now, "dial_timeout")
            elif att.phase == "backoff":
                att.via = att.unconnected = 0
                out += self._connect(att, now)
        return out

    # -- initiator -------------------------------------------------------------------------------

    def _env(self, k: int, dst: NodeId, nonce: int, now: float) -> PunchEnvelope:
        rec = self._own_record() if k != SYNC else None
        return sign_envelope(self._key, self.realm, k, dst, nonce, int(self._wall(now) * 1000), rec)

    def _connect(self, att: _Attempt, now: float) -> list[object]:
        att.nonce = self._rng.getrandbits(62)
        att.phase, att.sent, att.deadline = "connect", now, now + self.config.exchange_timeout
        via = att.vias[att.via]
        return [Send(via, PunchForward(att.peer.raw, self._env(CONNECT, att.peer, att.nonce, now)))]

    def _next_via(self, att: _Attempt, now: float, reason: str) -> list[object]:
        if att.via + 1 < len(att.vias):
            att.via += 1
            return self._connect(att, now)
        return self._fail(att, now, reason)

    def _reply(self, att: _Attempt, env: PunchEnvelope, now: float) -> list[object]:
        rtt = max(0.0, now - att.sent)
        att.addresses = self._addresses(env)
        att.phase, att.deadline = "dial_wait", now + rtt / 2 + self._stagger(att.peer)
        self.counters["attempts"] += 1
        return [Send(att.vias[att.via], PunchForward(att.peer.raw, self._env(SYNC, att.peer, att.nonce, now)))]

    def _success(self, att: _Attempt, now: float) -> list[object]:
        del self._attempts[att.peer]
        self._cooldown.pop(att.peer)
        elapsed = now - att.started
        self.counters["successes"] += 1
        self.time_to_direct_sum += elapsed
        self.time_to_direct_max = max(self.time_to_direct_max, elapsed)
        self.time_to_direct.append(elapsed)
        del self.time_to_direct[:-256]
        return [PunchDone(att.peer, True, "direct", elapsed, True)]

    def _fail(self, att: _Attempt, now: float, reason: str) -> list[object]:
        att.failures += 1
        self._count_failure(reason)
        final = att.failures >= self.config.attempts
        if final:
            del self._attempts[att.peer]
            if self.config.cooldown > 0:
                self._cooldown.set(att.peer, True, now, self.config.cooldown)
        else:
            c = self.config
            delay = min(c.backoff * 2 ** (att.failures - 1), c.backoff_max)
            delay *= 1 + c.jitter * (2 * self._rng.random() - 1)
            att.phase, att.deadline = "backoff", now + delay
        return [PunchDone(att.peer, False, reason, now - att.started, final)]

    def _count_failure(self, reason: str) -> None:
        self.counters["failures"] += 1
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1

    # -- K -----------------------------------------------------------------------------------------

    def _forward(self, frm: NodeId, msg: PunchForward, now: float) -> list[object]:
        reason = self._forward_check(frm, msg, now)
        if reason is not None:
            self.counters["forward_refused"] += 1
            self.forward_refused_by_reason[reason] = self.forward_refused_by_reason.get(reason, 0) + 1
            return [Send(frm, PunchRefused(msg.to, msg.env.n, reason))]
        self.counters["forwarded"] += 1
        return [Send(NodeId(msg.to), PunchRelayed(frm.raw, msg.env))]

    def _forward_check(self, frm: NodeId, msg: PunchForward, now: float) -> str | None:
        if not self.config.forward:
            return "disabled"
        try:
            to = NodeId(msg.to)
        except ValueError:
            return "not_connected"
        if to == frm or to == self.id:
            return "self"
        if not self._member(frm, now) or not self._member(to, now):
            return "not_member"
        if not self._connected(to):
            return "not_connected"
        c = self.config
        tokens, last = self._buckets.get(frm) or (float(c.forward_burst), now)
        tokens = min(float(c.forward_burst), tokens + (now - last) * c.forward_rate)
        if tokens < 1.0:
            self._buckets.set(frm, (tokens, now), now)
            return "rate"
        self._buckets.set(frm, (tokens - 1.0, now), now)
        return None

    # -- target (and the initiator's REPLY) --------------------------------------------------------

    def _relayed(self, via: NodeId, msg: PunchRelayed, now: float) -> list[object]:
        env = msg.env
        reason = self._verify(msg, now)
        if reason is not None:
            self.counters["refused"] += 1
            self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1
            return []
        src = NodeId(env.src)
        if env.k == REPLY:
            att = self._attempts.get(src)
            if att is None or att.phase != "connect" or att.nonce != env.n:
                return []
            return self._reply(att, env, now)
        if env.k == SYNC:
            ans = self._answers.get(src)
            if ans is None or ans.nonce != env.n or ans.dialing:
                return []
            ans.dialing, ans.deadline = True, now + self.config.dial_timeout + self.config.exchange_timeout
            stagger = self._stagger(src)
            if stagger > 0:
                ans.dial_at = now + stagger
                return []
            return [PunchDial(src, ans.addresses, ans.nonce, self.config.dial_timeout)]
        # CONNECT: answer with our own addresses
        if not self.config.enabled:
            return []
        own = self._attempts.get(src)
        gave_way = None
        if own is not None:
            if own.phase != "connect" or self.id < src:
                return []  # both punch each other: the lower id leads, the other answers
            del self._attempts[src]
            gave_way = own.started
        if src not in self._answers and len(self._answers) >= self.config.max_active:
            return []
        self._answers[src] = _Answer(src, via, env.n, self._addresses(env), now + 2 * self.config.exchange_timeout,
                                     gave_way=gave_way)
        self.counters["answered"] += 1
        return [Send(via, PunchForward(env.src, self._env(REPLY, src, env.n, now)))]

    def _verify(self, msg: PunchRelayed, now: float) -> str | None:
        """Why the envelope in ``msg`` is refused, or ``None`` when it is valid."""
        env = msg.env
        if verify_envelope(env, self.realm) is None:
            return "bad_signature"
        if env.src != msg.frm:
            return "wrong_source"
        if env.dst != self.id.raw:
            return "wrong_target"
        if env.k != SYNC:
            if env.rec is None or verify_record(env.rec, self.realm, NodeId(env.src)) is None:
                return "bad_record"  # a record of someone else, or altered: addresses not the signer's
        if abs(self._wall(now) * 1000 - env.at) > self.config.max_age * 1000:
            return "stale"
        if not self._seen.add((env.src, env.k, env.n), now):
            return "replay"
        return None

    def _stagger(self, peer: NodeId) -> float:
        """Extra delay of this side's dials: the side with the smaller id (whose dial survives
        QUIC's duplicate rule) sends ``stagger`` seconds after the other, so that the other's
        packets have opened the other NAT when its own first packet arrives there."""
        return self.config.stagger if self.id < peer else 0.0

    def _addresses(self, env: PunchEnvelope) -> tuple[str, ...]:
        out: list[str] = []  # bounded: at most 8 (below)
        for a in env.rec.addrs if env.rec is not None else ():
            c = canonical_address(a)
            if c is not None and c not in out:
                out.append(c)
            if len(out) >= 8:
                break
        return tuple(out)


_NAK_REASONS = frozenset({"not_connected", "not_member", "rate", "disabled", "self"})
