"""Simulator scenarios of issue #4 (continued): full delivery under packet loss, and no topic
state left after everyone unsubscribes."""

from __future__ import annotations

import pytest
from simkit import assert_bounded, assert_full_delivery

from quicmesh.testing.scenarios import BroadcastScenario, UnsubscribeScenario, run


@pytest.mark.parametrize(
    ("loss", "mode"),
    [(0.05, "retransmit"), (0.20, "retransmit"), (0.05, "drop_gossip"), (0.20, "drop_gossip")],
)
def test_packet_loss_full_delivery_after_repair(loss: float, mode: str) -> None:
    r = run(BroadcastScenario(name=f"loss_{loss}_{mode}", messages=200, loss=loss, loss_mode=mode))
    print(r.format())
    assert r.figures["net_lost"] > 0
    assert_full_delivery(r, 100)
    assert_bounded(r)


@pytest.mark.parametrize("seed", [3, 6])
def test_outright_gossip_drops_lose_nothing_a_neighbour_still_caches(seed: int) -> None:
    """#14: at 20 % gossip drop (500 messages) seeds 3, 6 and 7 each lost one message at one node
    (99.8 %). Seed 3: its 16 GRAFTs over 11 s to five announcers all failed (10 GRAFTs and 5
    answers dropped, one not answered so soon after another). Seed 6: a node with three swarm
    neighbours lost its eager payload, both IHAVEs and all three re-announcements, and never heard
    of the message. A later gap is now pulled at its first check (the publisher's batches from the
    missing seq asked of every neighbour) and held a re-check for the answer: 100 %."""
    r = run(BroadcastScenario(name=f"gossip_drop_20pct_seed_{seed}", messages=500, loss=0.20,
                              loss_mode="drop_gossip", seed=seed))
    assert r.figures["net_lost"] > 0
    assert_full_delivery(r, 100)
    assert_bounded(r)


def test_everyone_unsubscribes_zero_topic_state() -> None:
    r = run(UnsubscribeScenario())
    print(r.format())
    f = r.figures
    assert f["topic_state_before"] > 0
    # a node that only subscribed holds nothing at once; the publishers stay publishers until
    # PUBLISH_LINGER after their last publish, and then hold nothing either
    assert f["topic_state_after_unsubscribe_not_publishers"] == 0
    assert f["publishers_kept"] == f["publishers"] == 7
    assert f["topic_state_after"] == 0
    assert f["swarm_containers_after"] == 0
    assert f["swarms_after"] == 0
    assert f["hints_after_ttl"] == 0
