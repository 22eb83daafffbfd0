"""Log interest across connections: a second connection to a connected peer (a duplicate dial, or
the peer restarted) keeps what the peer declared, since only one side may see a new connection;
a peer that answers a sync request ``refused`` no longer replicates that log and is forgotten for it."""

from __future__ import annotations

from random import Random

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig
from quicmesh.core.log_messages import LogInterest, SyncBatch
from quicmesh.core.replication import LogReplication
from quicmesh.identity import KeyPair


def test_a_second_connection_keeps_the_interest_and_a_refusal_forgets_it(registry: ContainerRegistry) -> None:
    rep = LogReplication(KeyPair.from_seed(b"a" * 32), NodeConfig(), Random(1), registry)
    peer = KeyPair.from_seed(b"b" * 32).node_id
    rep.acquire("l", 0.0)
    rep.peer_connected(peer, 0.0)
    rep.handle_message(peer, LogInterest(added=["l"], removed=[], reset=True), 0.0)
    assert rep.shares_with(peer) and rep.peers.sharing("l") == [peer]
    rep.peer_connected(peer, 1.0)  # a duplicate connection: the peer sends no new reset
    assert rep.shares_with(peer) and (peer, "l") in rep.sync.running()
    session = rep.sync._sessions.peek((peer, "l"))
    assert session is not None
    rep.handle_message(peer, SyncBatch(sid=session.sid, log="l", ops=[], more=False, refused=True), 1.5)
    assert not rep.shares_with(peer) and rep.peers.sharing("l") == []
    assert "l" not in rep.peers.names(peer) and rep.sync.interests()["l"] == frozenset()
