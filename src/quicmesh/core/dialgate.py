"""The dial gate: every dial the core asks for passes one capped, rate-limited queue.

Theory of operation
-------------------
:class:`DialGate` is owned by :class:`~quicmesh.core.node.NodeCore`, which hands it every
:class:`~quicmesh.core.effects.Dial` and :class:`~quicmesh.core.effects.DialAddress` any machine
emits (the mesh's overlays and discovery walks, the caller's provider dials) before they reach
the driver. Addresses learned from others (``MFind``/``MFound``, shuffles, forward joins,
adverts) are attacker-controlled: before this gate, 400 ``MFind`` made a node open 399
handshakes to one address of the attacker's choosing. The gate decides, for each dial:

* **merged**: a dial to a peer id (or an address set) already in flight or waiting is the same
  dial; nothing more goes out (the answer serves both askers);
* **dropped**: a dial naming an address another dial in flight or waiting already targets
  (one handshake per address at a time), or a learned dial when the queue is full, or any dial
  when connections plus dials in flight reached ``max_connections``. The asker is told the dial
  failed at once (the caller of :meth:`offer` receives it in ``dropped``); counted;
* **started**: emitted to the driver, counted in flight until the driver reports the
  connection (``PeerConnected`` outbound) or the failure (``DialFailed``), see :meth:`finished`;
* **queued**: a learned dial waits (FIFO, at most ``max_queued_dials``, each at most
  ``dial_queue_wait`` seconds) while ``max_pending_dials`` learned dials are in flight or the
  token bucket (``dial_rate`` per second, ``dial_burst`` deep) is empty.

Dials **the user asked for** -- to peers and addresses given to ``join`` (bootstrap) or
``add_peer`` (:meth:`prefer`) -- skip the queue and the token bucket and do not count against
``max_pending_dials`` (they are bounded by what the user configured: at most
:data:`MAX_PREFERRED` ids and addresses); they still respect ``max_connections``.

Invariant (what the runtime asserts): dials in flight <= :attr:`DialGate.hard_cap`, and
connections + dials in flight <= ``max_connections`` whenever a dial starts. An in-flight entry
the driver never reports is forgotten after every address had its handshake timeout (a guard;
the driver reports every dial). Time is an argument; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..bounded import BoundedDeque, ContainerRegistry, LruMap, Overflow, TtlMap
from ..config import NodeConfig
from ..identity import NodeId
from .addressbook import normalize_addresses
from .effects import Dial, DialAddress

__all__ = ["MAX_PREFERRED", "DialGate", "DialRequest"]

MAX_PREFERRED = 256
"""Peer ids and addresses remembered as asked for by the user (bootstrap, ``add_peer``)."""

DialRequest = Dial | DialAddress


@dataclass(slots=True)
class _Entry:
    eff: DialRequest
    addrs: tuple[str, ...]
    user: bool
    until: float
    """Queued: when it is dropped as failed. In flight: when the guard forgets it."""


class DialGate:
    """One node's dial queue (see the module docstring).

    ``connections()`` returns the connections held now (the mesh's connection table)."""

    def __init__(self, config: NodeConfig, registry: ContainerRegistry, connections: Callable[[], int]) -> None:
        t = config.transport
        self.max_connections = t.max_connections
        self.max_pending = t.max_pending_dials
        self.rate = t.dial_rate
        self.burst = float(t.dial_burst)
        self.wait = t.dial_queue_wait
        self.handshake_timeout = t.handshake_timeout
        self.connections = connections
        self.hard_cap = min(self.max_connections, self.max_pending + MAX_PREFERRED)
        """Dials in flight at most, whoever asked (what the driver asserts): learned ones at most
        ``max_pending_dials``, user ones at most :data:`MAX_PREFERRED`."""
        self.tokens = self.burst
        self.refilled = 0.0
        self.counters = {  # bounded: fixed keys
            "dials_started": 0, "dials_merged": 0, "dials_queued": 0, "dials_dropped": 0,
            "dials_dropped_address": 0, "dials_dropped_full": 0, "dials_dropped_connections": 0,
            "dials_expired": 0,
        }
        cap = self.max_pending + MAX_PREFERRED
        self.in_flight: TtlMap[int, _Entry] = TtlMap(
            "dials.in_flight", cap, max(1.0, self.handshake_timeout), Overflow.REJECT, registry=registry
        )
        """Dials started and not reported yet, by entry number."""
        self.queue: BoundedDeque[tuple[int, _Entry]] = BoundedDeque(
            "dials.queue", t.max_queued_dials, Overflow.DROP_NEWEST, registry=registry
        )
        self.by_peer: LruMap[NodeId, int] = LruMap("dials.by_peer", cap + t.max_queued_dials, registry=registry)
        self.by_addr: LruMap[str, int] = LruMap("dials.by_address", 8 * (cap + t.max_queued_dials), registry=registry)
        self.preferred_ids: LruMap[NodeId, None] = LruMap("dials.preferred_ids", MAX_PREFERRED, registry=registry)
        self.preferred_addrs: LruMap[str, None] = LruMap("dials.preferred_addresses", MAX_PREFERRED,
                                                         registry=registry)
        self.learned_in_flight = 0
        self._ids = 0
        self._entries: dict[int, _Entry] = {}  # bounded: the entries of in_flight and queue

    # -- user dials ------------------------------------------------------------------------------

    def prefer(self, peer: NodeId | None, addresses: Iterable[str]) -> None:
        """``peer`` / ``addresses`` were given by the user: dials to them go first."""
        if peer is not None:
            self.preferred_ids.set(peer, None)
        for a in normalize_addresses(addresses):
            self.preferred_addrs.set(a, None)

    # -- dials -----------------------------------------------------------------------------------

    def offer(self, eff: DialRequest, now: float) -> tuple[list[DialRequest], list[DialRequest]]:
        """Decide on one dial: ``(started, dropped)``. Started ones go to the driver now (with
        others released from the queue); dropped ones must be reported failed to the asker."""
        peer = eff.peer if isinstance(eff, Dial) else None
        addrs = normalize_addresses(eff.addresses)
        if peer is not None and peer in self.by_peer:
            self.counters["dials_merged"] += 1
            return [], []
        taken = [self.by_addr.peek(a) for a in addrs]
        if any(n is not None for n in taken):
            first = next(n for n in taken if n is not None)
            other = self._entries.get(first)
            if peer is None and other is not None and isinstance(other.eff, DialAddress) and other.addrs == addrs:
                self.counters["dials_merged"] += 1
                return [], []
            return [], self._drop(eff, "dials_dropped_address")
        user = (peer is not None and peer in self.preferred_ids) or any(a in self.preferred_addrs for a in addrs)
        entry = _Entry(eff, addrs, user, now + self.wait)
        self._refill(now)
        if len(self.in_flight) + self.connections() >= self.max_connections:
            return [], self._drop(eff, "dials_dropped_connections")
        if user:
            if len(self.in_flight) - self.learned_in_flight >= MAX_PREFERRED:
                return [], self._drop(eff, "dials_dropped_full")
            return [self._start(self._new(entry), entry, now)], []
        if not self.queue and self.learned_in_flight < self.max_pending and self.tokens >= 1.0:
            self.tokens -= 1.0
            return [self._start(self._new(entry), entry, now)], []
        if len(self.queue) >= self.queue.capacity:
            return [], self._drop(eff, "dials_dropped_full")
        n = self._new(entry)
        self.queue.append((n, entry))
        self.counters["dials_queued"] += 1
        return [], []

    def finished(self, peer: NodeId | None, addresses: Iterable[str]) -> bool:
        """The driver reported a dial's end: a connection to ``peer`` it dialled (``addresses``
        holds the address dialled) or a failure. Frees its slot; ``True`` if one was freed."""
        n = self.by_peer.peek(peer) if peer is not None else None
        if n is None or n not in self.in_flight:
            n = None
            for a in normalize_addresses(addresses):
                m = self.by_addr.peek(a)
                if m is not None and m in self.in_flight:
                    e = self._entries.get(m)
                    if e is not None and (peer is None or isinstance(e.eff, DialAddress)):
                        n = m
                        break
        if n is None:
            return False
        self._forget(n)
        return True

    def release(self, now: float) -> tuple[list[DialRequest], list[DialRequest]]:
        """Start the queued dials that now have a slot and a token; drop those that waited too
        long: ``(started, dropped)``."""
        started: list[DialRequest] = []
        dropped: list[DialRequest] = []
        if not self.queue:
            return started, dropped
        self._refill(now)
        while self.queue:
            n, entry = self.queue.peekleft()
            if entry.until <= now:
                self.queue.popleft()
                self._forget(n)
                self.counters["dials_expired"] += 1
                self.counters["dials_dropped"] += 1
                dropped.append(entry.eff)
                continue
            if self.learned_in_flight >= self.max_pending or self.tokens < 1.0:
                break
            self.queue.popleft()
            if len(self.in_flight) + self.connections() >= self.max_connections:
                self._forget(n)
                dropped += self._drop(entry.eff, "dials_dropped_connections")
                continue
            self.tokens -= 1.0
            started.append(self._start(n, entry, now))
        return started, dropped

    def expire(self, now: float) -> None:
        """Forget in-flight dials the driver never reported (a guard, see the module docstring)."""
        for n, _ in self.in_flight.expire(now):
            self._forget(n, in_flight_gone=True)

    def next_deadline(self) -> float | None:
        """When :meth:`release` or :meth:`expire` has work: the next token while dials wait for
        one, the oldest queued dial's limit, an in-flight guard."""
        best = self.in_flight.next_deadline()
        if self.queue:
            head = self.queue.peekleft()[1].until
            best = head if best is None or head < best else best
            if self.learned_in_flight < self.max_pending and self.rate > 0:
                t = self.refilled + max(0.0, 1.0 - self.tokens) / self.rate
                best = t if best is None or t < best else best
        return best

    def stats(self) -> dict[str, int]:
        """Gauges and counters for ``/metrics``."""
        return {"dials_in_flight": len(self.in_flight), "dials_waiting": len(self.queue), **self.counters}

    # -- internals -------------------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        if now > self.refilled:
            self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
            self.refilled = now

    def _new(self, entry: _Entry) -> int:
        self._ids += 1
        n = self._ids
        self._entries[n] = entry
        eff = entry.eff
        if isinstance(eff, Dial):
            self.by_peer.set(eff.peer, n)
        for a in entry.addrs:
            self.by_addr.set(a, n)
        return n

    def _start(self, n: int, entry: _Entry, now: float) -> DialRequest:
        guard = self.handshake_timeout * max(1, len(entry.addrs)) + 5.0
        entry.until = now + guard
        self.in_flight.set(n, entry, now, ttl=guard)
        if not entry.user:
            self.learned_in_flight += 1
        self.counters["dials_started"] += 1
        return entry.eff

    def _drop(self, eff: DialRequest, why: str) -> list[DialRequest]:
        self.counters[why] += 1
        self.counters["dials_dropped"] += 1
        return [eff]

    def _forget(self, n: int, *, in_flight_gone: bool = False) -> None:
        entry = self._entries.pop(n, None)
        if entry is None:
            return
        if in_flight_gone or self.in_flight.pop(n) is not None:
            if not entry.user:
                self.learned_in_flight -= 1
        eff = entry.eff
        if isinstance(eff, Dial) and self.by_peer.peek(eff.peer) == n:
            self.by_peer.pop(eff.peer)
        for a in entry.addrs:
            if self.by_addr.peek(a) == n:
                self.by_addr.pop(a)
