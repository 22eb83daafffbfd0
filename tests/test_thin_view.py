"""A thin realm view (linked to some peers, knowing no others) asks its unlinked bootstrap
contacts for a link, with backoff, until it knows someone to refill from (``core/discovery.py``).

CI on 65954ff failed because of this: a NATed lab node whose first dial to its second bootstrap
contact failed stayed with one active and no passive peer for the test's 30 s, so only one peer
ever reported its public address (two are needed to confirm it).
"""

from __future__ import annotations

import itertools
from random import Random
from typing import Any

from meshkit import timer_steps

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig
from quicmesh.core.effects import Dial, DialAddress, Effect, Send
from quicmesh.core.mesh import Mesh
from quicmesh.core.mesh_messages import MJoin, MNeighbor, MNeighborReply
from quicmesh.identity import KeyPair, NodeId

CFG = NodeConfig().membership


def nid(i: int) -> NodeId:
    return KeyPair.from_seed((i + 2000).to_bytes(32, "big")).node_id


K, K2, K3 = nid(1), nid(2), nid(3)


def _mesh(registry: ContainerRegistry) -> Mesh:
    return Mesh(nid(0), ("m:0",), NodeConfig(), Random(7), registry)


def _linked_to_k(m: Mesh, bootstrap: list[tuple[NodeId | None, tuple[str, ...]]], failed: list[NodeId]) -> float:
    """Join through ``bootstrap``; K answers, the contacts in ``failed`` cannot be dialled.
    Returns the time reached."""
    m.join(bootstrap, 0.0)
    for p in failed:
        m.dial_failed(p, 0.05)
    m.peer_connected(K, ("k:1",), True, 0.1)
    m.handle_message(K, MNeighborReply("", True), 0.2)
    assert m.realm.active_peers() == [K] and len(m.realm.passive) == 0
    return 0.2


def _until(m: Mesh, now: float, end: float, want: type[Any] | tuple[type[Any], ...], peer: NodeId | None = None
           ) -> tuple[float, list[Effect]] | None:
    """Run the mesh's timers until an effect of type ``want`` (to ``peer``) or ``end``."""
    for t, effs in timer_steps(m, now, end):
        if any(isinstance(e, want) and (peer is None or getattr(e, "peer", None) == peer) for e in effs):
            return t, effs
    return None


def test_thin_view_asks_an_unlinked_contact_and_stops_once_it_knows_one(registry: ContainerRegistry) -> None:
    m = _mesh(registry)
    now = _linked_to_k(m, [(K, ("k:1",)), (K2, ("k2:1",))], failed=[K2])
    hit = _until(m, now, 600.0, Dial, K2)
    assert hit is not None, "no top-up within 600 s"
    t, _ = hit
    assert CFG.join_timeout <= t - now <= CFG.join_timeout * 1.5, t
    assert m.counters["top_ups"] == 1
    # the answer to the dial: a low-priority NEIGHBOR, not a JOIN (no forward-join walk)
    effs = m.peer_connected(K2, ("k2:1",), True, t + 0.1)
    msgs = [e.message for e in effs if isinstance(e, Send) and e.peer == K2]
    assert any(isinstance(x, MNeighbor) and not x.high for x in msgs), msgs
    assert not any(isinstance(x, MJoin) for x in msgs)
    # K2 is full and refuses: both keep each other passive, the view is no longer thin (the
    # passive view's own repair keeps asking K2 now, as for any passive peer)
    m.handle_message(K2, MNeighborReply("", False), t + 0.2)
    assert K2 in m.realm.passive
    now = t + 0.2
    while (hit := _until(m, now, 3600.0, (Dial, Send), K2)) is not None:  # K2 refuses every time
        now, effs = hit
        if any(isinstance(e, Dial) for e in effs):
            m.peer_connected(K2, ("k2:1",), True, now + 0.01)
        m.handle_message(K2, MNeighborReply("", False), now + 0.02)
        assert K2 in m.realm.passive
    assert m.counters["top_ups"] == 1


def test_accepted_top_up_links_the_contact(registry: ContainerRegistry) -> None:
    m = _mesh(registry)
    now = _linked_to_k(m, [(K, ("k:1",)), (K2, ("k2:1",))], failed=[K2])
    hit = _until(m, now, 600.0, Dial, K2)
    assert hit is not None
    t, _ = hit
    m.peer_connected(K2, ("k2:1",), True, t + 0.1)
    m.handle_message(K2, MNeighborReply("", True), t + 0.2)
    assert set(m.realm.active_peers()) == {K, K2}
    # every contact is linked now: nothing more to ask, however long the view stays thin
    assert _until(m, t + 0.2, 3600.0, Dial) is None
    assert m.counters["top_ups"] == 1


def test_unreachable_contact_is_retried_with_capped_backoff_forever(registry: ContainerRegistry) -> None:
    m = _mesh(registry)
    now = _linked_to_k(m, [(K, ("k:1",)), (K2, ("k2:1",))], failed=[K2])
    times = [now]
    for _ in range(12):
        hit = _until(m, now, now + 600.0, Dial, K2)
        assert hit is not None, f"no retry after {len(times) - 1} attempts"
        now = hit[0]
        times.append(now)
        m.dial_failed(K2, now + 0.05)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= CFG.join_timeout / 2
    assert max(gaps) <= CFG.join_backoff_max * 1.25 + 1
    assert gaps[-1] > gaps[0] * 4, gaps
    assert m.counters["top_ups"] == 12
    assert m.realm.active_peers() == [K]


def test_contacts_are_asked_round_robin(registry: ContainerRegistry) -> None:
    m = _mesh(registry)
    now = _linked_to_k(m, [(K, ("k:1",)), (K2, ("k2:1",)), (K3, ("k3:1",))], failed=[K2, K3])
    asked: list[NodeId] = []
    for _ in range(4):
        hit = _until(m, now, now + 600.0, Dial)
        assert hit is not None
        now, effs = hit
        dials = [e.peer for e in effs if isinstance(e, Dial)]
        assert len(dials) == 1
        asked.append(dials[0])
        m.dial_failed(dials[0], now + 0.05)
    assert set(asked) == {K2, K3} and asked[0] != asked[1] and asked[1] != asked[2]


def test_contact_known_by_address_is_dialled_and_asked(registry: ContainerRegistry) -> None:
    m = _mesh(registry)
    effs = m.join([(None, ("k:1",)), (None, ("k2:1",))], 0.0)
    assert set(effs) == {DialAddress(("k:1",)), DialAddress(("k2:1",))}
    m.address_dial_failed(("k2:1",), 0.05)
    m.peer_connected(K, ("k:1",), True, 0.1)
    m.handle_message(K, MNeighborReply("", True), 0.2)
    m.book.add(K, ("k:1",), 0.2, own=True)
    hit = _until(m, 0.2, 600.0, DialAddress)
    assert hit is not None
    t, effs = hit
    assert [e for e in effs if isinstance(e, DialAddress)] == [DialAddress(("k2:1",))]
    effs = m.peer_connected(K2, ("k2:1",), True, t + 0.1)
    msgs = [e.message for e in effs if isinstance(e, Send) and e.peer == K2]
    assert any(isinstance(x, MNeighbor) and not x.high for x in msgs), msgs


def test_no_top_up_without_bootstrap_or_with_a_full_view(registry: ContainerRegistry) -> None:
    m = _mesh(registry)
    m.peer_connected(K, ("k:1",), False, 0.0)
    m.handle_message(K, MNeighbor("", True, ["k:1"]), 0.0)
    assert m.realm.active_peers() == [K]
    assert _until(m, 0.0, 600.0, Dial) is None and _until(m, 0.0, 600.0, DialAddress) is None
    assert m.counters["top_ups"] == 0


def test_contact_known_by_a_name_its_peer_does_not_announce_is_not_redialled(registry: ContainerRegistry) -> None:
    """A bootstrap contact given by a name (``bootstrap:4433`` in ``deploy/compose.yaml``) that
    the peer does not announce: the peer that answered it is remembered, so a thin view linked to
    it does not dial the name again and again (each dial a second connection to the same peer)."""
    m = _mesh(registry)
    assert m.join([(None, ("boot:1",))], 0.0) == [DialAddress(("boot:1",))]
    m.peer_connected(K, ("boot:1",), True, 0.1)
    m.book.add(K, ("10.0.0.1:4433",), 0.1, own=True)
    m.handle_message(K, MNeighborReply("", True), 0.2)
    assert m.realm.active_peers() == [K] and len(m.realm.passive) == 0  # thin
    assert _until(m, 0.2, 3600.0, DialAddress) is None
    assert _until(m, 0.2, 3600.0, Dial) is None
    assert m.counters["top_ups"] == 0


async def test_join_and_top_up_counters_are_exported() -> None:
    """``/metrics``: ``quicmesh_node_events_total{name="realm_join_attempts_total"}`` and
    ``{name="realm_top_ups_total"}``, ``{name="realm_replenished_total"}`` (a node that joined
    through one contact: 1, 0 and 0; a two-node realm has no one else to replenish from)."""
    from quicmesh import Node, NodeConfig
    from quicmesh.config import DiscoveryConfig
    from quicmesh.observability.metrics import render
    from quicmesh.testing.wait import eventually

    cfg = NodeConfig(listen="127.0.0.1:0", realm="thin", discovery=DiscoveryConfig(local=False))
    a = await Node.start(cfg)
    b = await Node.start(cfg.replace(bootstrap=(a.address,)))
    try:
        await eventually(lambda: len(b.mesh.realm.active) == 1, timeout=10)
        text = render(b).decode()
        assert 'quicmesh_node_events_total{name="realm_join_attempts_total"} 1.0' in text
        assert 'quicmesh_node_events_total{name="realm_top_ups_total"} 0.0' in text
        assert 'quicmesh_node_events_total{name="realm_replenished_total"} 0.0' in text
        assert b.health()["membership"]["replenished_total"] == 0
    finally:
        await b.stop()
        await a.stop()
