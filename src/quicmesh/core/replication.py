"""A node's log replication: which log names it replicates, with whom, and the sync machine.

Theory of operation
-------------------
:class:`LogReplication` is the log part of a :class:`~quicmesh.core.node.NodeCore`. It composes
:class:`~quicmesh.core.logsync.LogSync` (height-based sync, live pushes, the gossip buffer) with
the *interest* protocol around it, and asks for every store access as an output
(:class:`~quicmesh.core.log_effects.StoreRead` / ``StoreWrite``) whose result comes back through
:meth:`store_done`: nothing here touches a store.

* **Interest.** A log name is replicated while the application holds a reference to it
  (:meth:`acquire` / :meth:`release`, reference counted; at most ``store.max_interests`` names).
  Interest is exchanged with directly connected peers with
  :class:`~quicmesh.core.log_messages.LogInterest`: the whole set when a connection comes up
  (``reset``), changes afterwards. A name is synced with the connected peers interested in it
  too (``LogSync.interest(name, peers)``); a peer's interest set is capped at
  ``store.max_interests`` names (:class:`~quicmesh.core.log_peers.PeerLogs`).
* **Abuse.** ``l.req`` (which makes us read up to one batch from the store) is rate-limited per
  peer with a token bucket; requests beyond it are dropped and counted (the puller retries
  after its timeout).
* **Pinning.** :meth:`shares_with` says whether a peer syncs a name with us: the core keeps such
  a connection open.
* **A second connection** to a connected peer (it restarted, or both sides dialled at once)
  restarts the sync with it: every shared log is synced at once. What the peer declared stands
  until it says otherwise (its ``reset`` on a new connection, sent when it replicates any log):
  the other side may not have seen a new connection at all. A name the peer no longer
  replicates (it restarted without it) is dropped when it answers a sync request ``refused``.

Outputs: ``Send``/``Disconnect`` for the network, the store requests, and
:class:`~quicmesh.core.log_effects.OperationStored` / ``Appended`` for the driver's watchers and
appenders. Bounds: names (``store.max_interests``), per-peer state (one entry per connection),
store requests in flight (``max_requests``), and LogSync's own.
"""

from __future__ import annotations

from random import Random

from ..bounded import ContainerRegistry
from ..config import NodeConfig
from ..errors import InvalidOperation, LimitExceeded
from ..identity import KeyPair, NodeId
from .effects import Send
from .guard import Guard
from .log_messages import LogInterest, SyncBatch, SyncRequest
from .log_peers import PeerLogs, valid_name
from .logsync import LogSync
from .oplog import MAX_LOG_NAME
from .wire import Message

__all__ = ["STORE_REQUESTS", "LogReplication"]

STORE_REQUESTS = 1024
"""Store requests of log sync in flight at most (``LogSync(max_requests=...)``)."""


class LogReplication:
    """Log names replicated by one node, the interest exchange and the sync (see the module
    docstring)."""

    def __init__(self, keypair: KeyPair, config: NodeConfig, rng: Random, registry: ContainerRegistry, *,
                 max_requests: int = STORE_REQUESTS, realm: str | None = None, wall_offset: float = 0.0,
                 guard: Guard | None = None) -> None:
        """``realm``: the realm's wire identity signed into operations (default ``config.realm``);
        ``wall_offset``: wall clock minus the driver's ``now`` (seconds; see :attr:`wall_offset`);
        ``guard``: the node's guard, whose trust checks the authors' certificates and ``log``
        permissions of received operations in an authority realm (:mod:`quicmesh.core.log_trust`)."""
        self.config = config
        cap_peers = config.transport.max_connections
        self.sync = LogSync(
            keypair, config.store, rng, registry, max_requests=max_requests, max_peers=cap_peers,
            realm=config.realm if realm is None else realm, wall_offset=wall_offset, guard=guard,
        )
        """The sync machine (sessions, live pushes, store requests)."""
        self.peers = PeerLogs(cap_peers, config.store.max_interests, registry=registry)
        """Interest sets and request token buckets of the connected peers."""
        self.refs: dict[str, int] = {}  # bounded: <= store.max_interests names, checked in acquire()
        """Log name -> references the application holds."""
        self.requests_limited = 0
        self.requests_served = 0

    @property
    def wall_offset(self) -> float:
        """Wall clock minus the driver's ``now`` (seconds): the clock operation timestamps are
        checked against (the runtime sets it when it starts)."""
        return self.sync.wall_offset

    @wall_offset.setter
    def wall_offset(self, value: float) -> None:
        self.sync.wall_offset = float(value)

    # -- the application's interest ----------------------------------------------------------------

    def acquire(self, name: str, now: float) -> list[object]:
        """One more reference to ``name``; the first starts replicating it. Raises
        ``InvalidOperation`` for a bad name and ``LimitExceeded`` past ``store.max_interests``."""
        if not valid_name(name):
            raise InvalidOperation(f"a log name is 1 to {MAX_LOG_NAME} UTF-8 bytes")
        n = self.refs.get(name, 0)
        if n:
            self.refs[name] = n + 1
            return []
        cap = self.config.store.max_interests
        if len(self.refs) >= cap:
            raise LimitExceeded("store.max_interests", cap)
        effects = self.sync.interest(name, self.peers.sharing(name), now)
        self.refs[name] = 1
        msg = LogInterest(added=[name], removed=[])
        out: list[object] = [Send(p, msg) for p in self.peers.peers()]
        out += effects
        return out

    def release(self, name: str, now: float) -> list[object]:
        """One reference fewer on ``name``; the last stops replicating it."""
        n = self.refs.get(name, 0)
        if n > 1:
            self.refs[name] = n - 1
            return []
        if self.refs.pop(name, None) is None:
            return []
        out: list[object] = list(self.sync.uninterest(name, now))
        msg = LogInterest(added=[], removed=[name])
        out += [Send(p, msg) for p in self.peers.peers()]
        return out

    def append(self, name: str, payload: bytes, *, now: float, now_us: int,
               min_us: int = 0) -> tuple[int, list[object]]:
        """Append to this node's log ``name``: the request id and the outputs; the result is an
        ``Appended`` with that id from :meth:`store_done`."""
        req_id, outs = self.sync.append(name, payload, now=now, now_us=now_us, min_us=min_us)
        return req_id, list(outs)

    def store_done(self, req_id: int, result: object, now: float) -> list[object]:
        """The store answered request ``req_id`` (``result`` may be an exception)."""
        return list(self.sync.store_done(req_id, result, now))

    # -- the core's log machine ----------------------------------------------------------------

    def peer_connected(self, peer: NodeId, now: float) -> list[object]:
        """A connection to ``peer`` is up: tell it our interests and sync what we share."""
        out: list[object] = []
        kept: frozenset[str] = frozenset()
        if peer in self.peers:
            # another connection (the peer restarted, or a duplicate): restart the sync with it,
            # keeping what it declared until its reset arrives
            kept = self.peers.names(peer)
            out += self.peer_disconnected(peer, now)
        self.peers.connect(peer, kept)
        if self.refs:
            out.append(Send(peer, LogInterest(added=sorted(self.refs), removed=[], reset=True)))
        for name in sorted(kept & self.refs.keys()):  # sorted: a set of str's order varies by process
            out += self.sync.interest(name, self.peers.sharing(name), now)
        out += self.sync.peer_connected(peer, now)
        return out

    def peer_disconnected(self, peer: NodeId, now: float) -> list[object]:
        """The connection to ``peer`` is gone."""
        had = self.peers.disconnect(peer)
        out: list[object] = list(self.sync.peer_disconnected(peer, now))
        for name in sorted(had):
            if name in self.refs:
                out += self.sync.interest(name, self.peers.sharing(name), now)
        return out

    def handle_message(self, peer: NodeId, msg: Message, now: float) -> list[object]:
        """An ``l.*`` message from ``peer``."""
        if isinstance(msg, LogInterest):
            out: list[object] = []
            for name in sorted(self.peers.update(peer, msg) & self.refs.keys()):
                out += self.sync.interest(name, self.peers.sharing(name), now)
            return out
        if isinstance(msg, SyncRequest):
            if not self.peers.take_token(peer, now):
                self.requests_limited += 1
                return []
            self.requests_served += 1
        out = list(self.sync.handle_message(peer, msg, now))
        if isinstance(msg, SyncBatch) and msg.refused and self.peers.drop(peer, msg.log) and msg.log in self.refs:
            out += self.sync.interest(msg.log, self.peers.sharing(msg.log), now)  # a stale interest: forgotten
        return out

    def handle_timer(self, now: float) -> list[object]:
        """Run what is due at ``now``."""
        return list(self.sync.handle_timer(now))

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next."""
        return self.sync.next_deadline()

    def shares_with(self, peer: NodeId) -> bool:
        """Whether ``peer`` syncs a log name with us (its connection must stay open)."""
        return any(n in self.refs for n in self.peers.names(peer))

    def close(self) -> None:
        """Release the sync machine's state (the node stopped)."""
        self.sync.close()
