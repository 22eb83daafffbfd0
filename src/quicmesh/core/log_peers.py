"""Per-peer state of log replication (sans-IO): the log names each connected peer declared
interest in (:class:`~quicmesh.core.log_messages.LogInterest`) and the token bucket that
rate-limits its ``l.req`` messages. One entry per connection in each map (bounded LRU maps,
registered). Time enters only as ``now``."""

from __future__ import annotations

from ..bounded import ContainerRegistry, LruMap
from ..identity import NodeId
from .log_messages import LogInterest
from .oplog import MAX_LOG_NAME

__all__ = ["REQ_BURST", "REQ_RATE", "PeerLogs", "valid_name"]

REQ_RATE = 100.0
"""``l.req`` messages per second a peer may send us (token bucket refill rate). A catch-up pulls
one 64-operation batch per request, so 100/s is ~6,400 operations/s per peer."""
REQ_BURST = 400.0
"""Token bucket depth for ``l.req``: a peer that connects and syncs many logs at once."""


def valid_name(name: object) -> bool:
    """Whether ``name`` is a valid log name (1 to ``MAX_LOG_NAME`` UTF-8 bytes)."""
    return isinstance(name, str) and 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_LOG_NAME


class PeerLogs:
    """The interest sets of the connected peers (at most ``max_names`` names each) and their
    ``l.req`` token buckets."""

    def __init__(self, max_peers: int, max_names: int, *, registry: ContainerRegistry) -> None:
        self.interests: LruMap[NodeId, frozenset[str]] = LruMap("logs.peer_interests", max_peers, registry=registry)
        self.tokens: LruMap[NodeId, tuple[float, float]] = LruMap("logs.req_tokens", max_peers, registry=registry)
        self.max_names = max_names
        self.names_ignored = 0

    def __contains__(self, peer: object) -> bool:
        return peer in self.interests

    def peers(self) -> list[NodeId]:
        """The connected peers."""
        return list(self.interests.keys())

    def connect(self, peer: NodeId, names: frozenset[str] = frozenset()) -> None:
        """``peer`` connected: no interest known yet (or ``names``, kept from its other
        connection)."""
        self.interests.set(peer, names)

    def disconnect(self, peer: NodeId) -> frozenset[str]:
        """``peer`` is gone: forget it; returns the names it was interested in."""
        self.tokens.pop(peer)
        return self.interests.pop(peer) or frozenset()

    def drop(self, peer: NodeId, name: str) -> bool:
        """``peer`` does not replicate ``name`` (it said so): forget it; whether it was held."""
        names = self.interests.peek(peer)
        if names is None or name not in names:
            return False
        self.interests.set(peer, names - {name})
        return True

    def names(self, peer: NodeId) -> frozenset[str]:
        """The names ``peer`` is interested in."""
        return self.interests.peek(peer) or frozenset()

    def sharing(self, name: str) -> list[NodeId]:
        """The connected peers interested in ``name``."""
        return [p for p, names in self.interests.items() if name in names]

    def update(self, peer: NodeId, msg: LogInterest) -> frozenset[str]:
        """Apply ``msg`` from a connected ``peer``; returns the names whose interest changed.
        Invalid names and names past the cap are ignored (counted)."""
        if peer not in self.interests:
            return frozenset()
        old = self.names(peer)
        cap = self.max_names
        new = set() if msg.reset else set(old)
        new.difference_update(msg.removed[: cap + len(new)])
        for name in msg.added:
            if len(new) >= cap:
                self.names_ignored += len(msg.added)
                break
            if valid_name(name):
                new.add(name)
            else:
                self.names_ignored += 1
        frozen = frozenset(new)
        self.interests.set(peer, frozen)
        return old ^ frozen

    def take_token(self, peer: NodeId, now: float) -> bool:
        """Whether ``peer`` may have one more ``l.req`` served now (token bucket)."""
        tokens, last = self.tokens.peek(peer) or (REQ_BURST, now)
        tokens = min(REQ_BURST, tokens + (now - last) * REQ_RATE)
        if tokens < 1.0:
            self.tokens.set(peer, (tokens, now))
            return False
        self.tokens.set(peer, (tokens - 1.0, now))
        return True
