"""#13 (relay): relayed addresses and the relay's forwarding decisions (sans-IO).

Theory of operation
-------------------
A node behind NAT (B) keeps an ordinary authenticated quicmesh connection to a relay (R) and
asks it for a *reservation* (:class:`~.relay_messages.RelayReserve`). B then announces, in its
signed self-record, the relayed address ``relay:<R>@<R's HOST:PORT>/<B>``
(:class:`RelayAddress`). A peer (A) that dials that address makes sure it is connected to R,
and runs a normal QUIC connection to B whose UDP datagrams travel, one per
:class:`~.relay_messages.RelayData` frame, on A's connection to R; R forwards each to B on its
connection to B, tagged with the authenticated source A. B's endpoint takes them in as
datagrams from a *virtual address* standing for (R, A), and what B's QUIC sends to that
address goes back the same way. The A-B connection does its own TLS and quicmesh handshake end
to end: R sees only encrypted QUIC packets, and cannot pose as either end.

The relay decides on every packet with :class:`RelayServer` (I/O-free; time is an argument):

* only from a peer connected as an admitted member of the realm (the runtime asks with
  ``member=...``; light clients and nodes of other realms never get that far), to a member
  connected to R (else ``not_member`` / ``no_route``);
* a new *session* (an unordered pair of peers) only towards a peer that holds a reservation
  (``no_reservation``), and at most ``max_sessions_per_peer`` sessions per peer
  (``sessions``); a session lasts ``session_idle`` seconds after its last packet;
* at most ``max_relayed_peers`` peers hold state (a reservation or a session) at once
  (``max_relayed_peers``);
* each sending peer has two token buckets, bytes and packets per second, with one second's
  worth of burst (``bytes``, ``packets``).

Every refusal is counted by reason (``dropped``), every forwarded packet and byte too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..bounded import ContainerRegistry, LruMap, Overflow, TtlMap
from ..config.relay import RelayConfig
from ..errors import InvalidNodeId
from ..identity import NodeId

__all__ = [
    "DROP_REASONS",
    "RELAY_SCHEME",
    "RelayAddress",
    "RelayServer",
    "TokenBucket",
    "behind_nat",
    "is_relay_address",
]

RELAY_SCHEME = "relay:"
"""Prefix of a relayed address."""

DROP_REASONS = ("disabled", "not_member", "no_route", "no_reservation", "sessions", "max_relayed_peers",
                "packets", "bytes", "congested")
"""Why a relay drops a packet (the ``reason`` label of ``relay_dropped_total``)."""


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """``relay:<relay id>@<HOST:PORT>/<target id>``: ``target`` reached through the relay
    ``relay`` listening at ``host``. Without ``/<target id>`` (``target is None``) the address
    is a relay's own announcement that it relays (dialing it dials the relay itself)."""

    relay: NodeId
    host: str
    target: NodeId | None = None

    def __str__(self) -> str:
        tail = f"/{self.target}" if self.target is not None else ""
        return f"{RELAY_SCHEME}{self.relay}@{self.host}{tail}"

    @classmethod
    def parse(cls, text: str) -> RelayAddress:
        """Parse the text form; ``ValueError`` when it is not one."""
        if not isinstance(text, str) or not text.startswith(RELAY_SCHEME) or len(text) > 255:
            raise ValueError(f"not a relayed address: {text!r:.80}")
        rest = text[len(RELAY_SCHEME):]
        rid, at, tail = rest.partition("@")
        if not at:
            raise ValueError(f"relayed address without '@': {text!r:.80}")
        host, slash, target = tail.partition("/")
        h, sep, port = host.rpartition(":")
        if not sep or not h or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"relayed address without HOST:PORT: {text!r:.80}")
        try:
            return cls(NodeId.parse(rid), host, NodeId.parse(target) if slash else None)
        except InvalidNodeId as exc:
            raise ValueError(str(exc)) from None


def is_relay_address(text: str) -> bool:
    """Whether ``text`` has the relayed-address prefix (not whether it parses)."""
    return text.startswith(RELAY_SCHEME)


def behind_nat(own: Iterable[str], observed: Iterable[str]) -> bool:
    """Whether peers report seeing this node at an address that is not one of its own (so it
    sits behind a NAT): some report exists and none names one of the node's own IP addresses.
    ``observed`` holds the reported ``HOST:PORT`` addresses, confirmed or not: a NAT that
    randomises ports never gets a report confirmed, yet every report shows its public IP."""
    ips = {a.rpartition(":")[0] for a in own}
    seen = [a.rpartition(":")[0] for a in observed]
    return bool(seen) and not any(ip in ips for ip in seen)


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` held; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, n: float, now: float) -> bool:
        """Take ``n`` tokens if there are enough (refilled up to ``now``)."""
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        elif now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


@dataclass(slots=True)
class _Peer:
    bytes: TokenBucket
    packets: TokenBucket
    reserved: bool = False
    sessions: int = 0


@dataclass(slots=True)
class RelayCounters:
    """What the relay did (``relay_*`` in ``/metrics``)."""

    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    reservations_total: int = 0
    reservations_refused: int = 0
    sessions_total: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))  # bounded: DROP_REASONS


class RelayServer:
    """The relay's state: peers with a reservation or a session, sessions, budgets, counters."""

    def __init__(self, config: RelayConfig, registry: ContainerRegistry | None = None) -> None:
        self.config = config
        self.counters = RelayCounters()
        self._peers: LruMap[NodeId, _Peer] = LruMap(
            "relay.peers", config.max_relayed_peers, Overflow.REJECT, registry=registry)
        self._sessions: TtlMap[tuple[NodeId, NodeId], float] = TtlMap(
            "relay.sessions", config.max_relayed_peers * config.max_sessions_per_peer, config.session_idle,
            Overflow.REJECT, registry=registry)

    # -- inputs ------------------------------------------------------------------------------

    def reserve(self, peer: NodeId, on: bool = True) -> str | None:
        """A reservation request from ``peer`` (a connected member); ``None`` when granted,
        else the refusal reason."""
        if not self.config.serve:
            self.counters.reservations_refused += 1
            return "disabled"
        st = self._peers.get(peer)
        if not on:
            if st is not None:
                st.reserved = False
                self._maybe_forget(peer, st)
            return None
        if st is None:
            st = self._new_peer(peer)
            if st is None:
                self.counters.reservations_refused += 1
                return "max_relayed_peers"
        if not st.reserved:
            self.counters.reservations_total += 1
        st.reserved = True
        return None

    def forward(self, src: NodeId, dst: NodeId, size: int, now: float, *, member: bool = True,
                route: bool = True) -> str | None:
        """Decide on one packet of ``size`` bytes from ``src`` to ``dst``: ``None`` to forward
        it (counted), else the drop reason (counted). ``member``: ``src`` is connected as an
        admitted member; ``route``: ``dst`` is too."""
        reason = self._decide(src, dst, size, now, member, route)
        c = self.counters
        if reason is None:
            c.forwarded_packets += 1
            c.forwarded_bytes += size
        else:
            c.dropped[reason] += 1
        return reason

    def count_drop(self, reason: str) -> None:
        """Count a packet dropped after :meth:`forward` allowed it (``congested``)."""
        c = self.counters
        c.forwarded_packets -= 1
        c.dropped[reason] += 1

    def peer_lost(self, peer: NodeId) -> None:
        """``peer``'s connection to the relay closed: its reservation and sessions end."""
        if self._peers.peek(peer) is None:
            return
        for key in [k for k in self._sessions.keys() if peer in k]:
            self._sessions.pop(key)
            self._session_gone(key, None)
        self._peers.pop(peer)

    def expire(self, now: float) -> None:
        """End the sessions idle for ``session_idle`` seconds."""
        for key, _ in self._sessions.expire(now):
            self._session_gone(key, None)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has work next."""
        return self._sessions.next_deadline()

    # -- queries -----------------------------------------------------------------------------

    def reserved(self, peer: NodeId) -> bool:
        """Whether ``peer`` holds a reservation."""
        st = self._peers.peek(peer)
        return st is not None and st.reserved

    def holds(self, peer: NodeId) -> bool:
        """Whether ``peer`` holds a reservation or a session here."""
        return self._peers.peek(peer) is not None

    def stats(self) -> dict[str, int]:
        """Gauges and counters (``relay_*`` metrics; ``dropped:<reason>`` per reason)."""
        c = self.counters
        out = {
            "peers": len(self._peers),
            "peers_capacity": self._peers.capacity,
            "reservations": sum(1 for p in self._peers.values() if p.reserved),
            "sessions": len(self._sessions),
            "forwarded_packets": c.forwarded_packets,
            "forwarded_bytes": c.forwarded_bytes,
            "reservations_total": c.reservations_total,
            "reservations_refused": c.reservations_refused,
            "sessions_total": c.sessions_total,
        }
        for reason, n in c.dropped.items():
            out[f"dropped:{reason}"] = n
        return out

    def close(self) -> None:
        """Forget everything (the relay stopped)."""
        self._sessions.close()
        self._peers.close()

    # -- internals ---------------------------------------------------------------------------

    def _decide(self, src: NodeId, dst: NodeId, size: int, now: float, member: bool, route: bool) -> str | None:
        if not self.config.serve:
            return "disabled"
        if not member:
            return "not_member"
        if not route or src == dst:
            return "no_route"
        key = (src, dst) if src < dst else (dst, src)
        sp = self._peers.peek(src)
        last = self._sessions.get(key)
        if last is not None:
            if now - last >= 1.0:  # refreshed once a second, not per packet: ends idle + <= 1 s after its last
                self._sessions.set(key, now, now)
        else:
            dp = self._peers.peek(dst)
            if dp is None or not dp.reserved:
                return "no_reservation"
            if sp is None:
                sp = self._new_peer(src)
                if sp is None:
                    return "max_relayed_peers"
            cap = self.config.max_sessions_per_peer
            if sp.sessions >= cap or dp.sessions >= cap:
                self._maybe_forget(src, sp)
                return "sessions"
            self._sessions.set(key, now, now)  # room: at most max_sessions_per_peer per held peer
            sp.sessions += 1
            dp.sessions += 1
            self.counters.sessions_total += 1
        assert sp is not None  # a session's peers hold state until it ends
        if not sp.packets.take(1.0, now):
            return "packets"
        if not sp.bytes.take(float(size), now):
            return "bytes"
        return None

    def _new_peer(self, peer: NodeId) -> _Peer | None:
        cfg = self.config
        st = _Peer(TokenBucket(cfg.peer_bytes_per_second, cfg.peer_bytes_per_second),
                   TokenBucket(cfg.peer_packets_per_second, cfg.peer_packets_per_second))
        if len(self._peers) >= self._peers.capacity:
            return None
        self._peers.set(peer, st)
        return st

    def _session_gone(self, key: tuple[NodeId, NodeId], _value: float | None) -> None:
        for peer in key:
            st = self._peers.peek(peer)
            if st is not None:
                st.sessions = max(0, st.sessions - 1)
                self._maybe_forget(peer, st)

    def _maybe_forget(self, peer: NodeId, st: _Peer) -> None:
        if not st.reserved and st.sessions == 0:
            self._peers.pop(peer)
