"""Direct publish/subscribe between connected peers.

Theory of operation
-------------------
Each node keeps the set of topic *patterns* its local subscriptions use, reference-counted
(several subscriptions may share one pattern). Whenever that set changes, and whenever a peer
connects, the node sends the peer an :class:`~quicmesh.core.messages.Interest` carrying the full
set (it replaces what the peer knew, so a lost or reordered update heals with the next one).
Each node remembers its connected peers' interest sets in a bounded map.

``publish(topic)`` delivers locally when a local pattern matches, and sends one
:class:`~quicmesh.core.messages.Publish` to each connected peer whose interest matches: the
sender filters, so a peer receives only what it asked for. A received ``Publish`` is delivered
if a local pattern matches (a peer might race an unsubscribe); otherwise it is dropped and counted.

Patterns are dot-separated: ``*`` matches exactly one segment, ``>`` (last segment only)
matches one or more remaining segments. ``sensors.*`` matches ``sensors.temp`` but not
``sensors.temp.room1``; ``sensors.>`` matches both.

All state is bounded: local patterns by ``max_subscriptions``, peers by the connection cap
(``peer_capacity``), patterns per peer by ``max_peer_patterns``. A peer's state is dropped when
it disconnects.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bounded import ContainerRegistry, LruMap, Overflow
from ..config import PubSubConfig
from ..errors import ConfigError, LimitExceeded, MessageTooLarge
from ..identity import NodeId
from .effects import Deliver, Effect, Send
from .messages import Interest, Publish
from .wire import Message

__all__ = ["PubSub", "PubSubStats", "match", "validate_pattern", "validate_topic"]

_MAX_TOPIC_LEN = 256


def validate_topic(topic: str) -> None:
    """A publishable topic: 1-256 characters, non-empty dot-separated segments, no wildcards."""
    if not isinstance(topic, str) or not 0 < len(topic) <= _MAX_TOPIC_LEN:
        raise ConfigError("topic", f"must be 1 to {_MAX_TOPIC_LEN} characters, got {topic!r:.80}")
    for seg in topic.split("."):
        if not seg or seg in ("*", ">") or any(c.isspace() for c in seg):
            raise ConfigError("topic", f"invalid topic {topic!r:.80}: empty, wildcard or blank segment")


def validate_pattern(pattern: str) -> None:
    """A subscription pattern: like a topic, plus ``*`` segments and a final ``>``."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= _MAX_TOPIC_LEN:
        raise ConfigError("pattern", f"must be 1 to {_MAX_TOPIC_LEN} characters, got {pattern!r:.80}")
    segs = pattern.split(".")
    for i, seg in enumerate(segs):
        if not seg or any(c.isspace() for c in seg):
            raise ConfigError("pattern", f"invalid pattern {pattern!r:.80}: empty or blank segment")
        if seg == ">" and i != len(segs) - 1:
            raise ConfigError("pattern", f"invalid pattern {pattern!r:.80}: '>' must be the last segment")
        if ("*" in seg or ">" in seg) and seg not in ("*", ">"):
            raise ConfigError("pattern", f"invalid pattern {pattern!r:.80}: wildcards are whole segments")


def match(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (``*``: one segment, ``>``: the rest)."""
    if pattern == topic:
        return True
    p = pattern.split(".")
    t = topic.split(".")
    for i, seg in enumerate(p):
        if seg == ">":
            return len(t) > i
        if i >= len(t):
            return False
        if seg != "*" and seg != t[i]:
            return False
    return len(p) == len(t)


def _any_match(patterns: frozenset[str], topic: str) -> bool:
    return topic in patterns or any(match(p, topic) for p in patterns)


@dataclass(slots=True)
class PubSubStats:
    published: int = 0
    sent: int = 0
    received: int = 0
    delivered: int = 0
    dropped_unwanted: int = 0
    dropped_too_large: int = 0
    interest_truncated: int = 0


class PubSub:
    """The direct pub/sub state machine of one node (see the module docstring)."""

    def __init__(
        self,
        me: NodeId,
        config: PubSubConfig,
        *,
        peer_capacity: int,
        registry: ContainerRegistry | None = None,
    ) -> None:
        self.me = me
        self.config = config
        self._patterns: LruMap[str, int] = LruMap(
            "pubsub.local_patterns", config.max_subscriptions, Overflow.REJECT, registry=registry
        )
        self._peers: LruMap[NodeId, frozenset[str]] = LruMap(
            "pubsub.peer_interest", peer_capacity, Overflow.EVICT_OLDEST, registry=registry
        )
        self._connected: LruMap[NodeId, bool] = LruMap(
            "pubsub.connected_peers", peer_capacity, Overflow.EVICT_OLDEST, registry=registry
        )
        self._seq = 0
        self._frozen: frozenset[str] = frozenset()
        self.stats = PubSubStats()

    # -- local subscriptions ---------------------------------------------------------------------

    @property
    def patterns(self) -> frozenset[str]:
        """The local patterns currently subscribed."""
        return self._frozen

    def subscribe(self, pattern: str) -> list[Effect]:
        """Count one more local subscription to ``pattern``; announce a new pattern to peers.

        Raises :class:`~quicmesh.errors.LimitExceeded` past ``max_subscriptions`` patterns.
        """
        validate_pattern(pattern)
        count = self._patterns.peek(pattern)
        if count is None:
            try:
                self._patterns.set(pattern, 1)
            except LimitExceeded:
                raise LimitExceeded("pubsub.max_subscriptions", self.config.max_subscriptions) from None
            return self._announce()
        self._patterns.set(pattern, count + 1)
        return []

    def unsubscribe(self, pattern: str) -> list[Effect]:
        """Count one local subscription fewer; when the last goes, tell peers."""
        count = self._patterns.peek(pattern)
        if count is None:
            return []
        if count > 1:
            self._patterns.set(pattern, count - 1)
            return []
        self._patterns.pop(pattern)
        return self._announce()

    def _announce(self) -> list[Effect]:
        self._frozen = frozenset(self._patterns.keys())
        msg = Interest(sorted(self._frozen))
        return [Send(peer, msg) for peer in self._connected.keys()]

    # -- peers -----------------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId) -> list[Effect]:
        """A connection to ``peer`` is up: tell it our interest."""
        self._connected.set(peer, True)
        return [Send(peer, Interest(sorted(self._frozen)))]

    def peer_disconnected(self, peer: NodeId) -> None:
        """Forget everything about ``peer``."""
        self._connected.pop(peer)
        self._peers.pop(peer)

    def peer_interest(self, peer: NodeId) -> frozenset[str]:
        """What ``peer`` told us it subscribes to."""
        return self._peers.peek(peer) or frozenset()

    def interested_peers(self, topic: str) -> list[NodeId]:
        """Connected peers with a pattern matching ``topic``."""
        return [p for p, pats in self._peers.items() if _any_match(pats, topic)]

    # -- messages --------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, now: float) -> list[Effect]:
        """Publish from this node: local delivery plus one Send per interested peer."""
        validate_topic(topic)
        if len(payload) > self.config.max_message_size:
            raise MessageTooLarge(len(payload), self.config.max_message_size)
        self._seq += 1
        self.stats.published += 1
        effects: list[Effect] = []
        if _any_match(self._frozen, topic):
            effects.append(Deliver(topic, payload, self.me, self._seq))
            self.stats.delivered += 1
        peers = self.interested_peers(topic)
        if peers:
            msg = Publish(topic, payload, self.me.raw, self._seq, int(now * 1_000_000))
            effects.extend(Send(p, msg) for p in peers)
            self.stats.sent += len(peers)
        return effects

    def handle_message(self, peer: NodeId, msg: Message) -> list[Effect]:
        """Process an :class:`Interest` or :class:`Publish` from ``peer``."""
        if isinstance(msg, Interest):
            patterns = msg.patterns
            if len(patterns) > self.config.max_peer_patterns:
                self.stats.interest_truncated += 1
                patterns = patterns[: self.config.max_peer_patterns]
            valid: list[str] = []
            for p in patterns:
                try:
                    validate_pattern(p)
                except ConfigError:
                    continue
                valid.append(p)
            if peer in self._connected:
                self._peers.set(peer, frozenset(valid))
            return []
        if isinstance(msg, Publish):
            self.stats.received += 1
            if len(msg.payload) > self.config.max_message_size:
                self.stats.dropped_too_large += 1
                return []
            if not _any_match(self._frozen, msg.topic):
                self.stats.dropped_unwanted += 1
                return []
            try:
                publisher = NodeId(msg.publisher)
            except ValueError:
                self.stats.dropped_unwanted += 1
                return []
            self.stats.delivered += 1
            return [Deliver(msg.topic, msg.payload, publisher, msg.seq)]
        return []
