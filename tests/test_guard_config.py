"""The guard's offence limits are configuration (``offence_limit``, ``offence_window``,
``block_seconds``; environment ``QUICMESH_OFFENCE_LIMIT`` ...), the constants their defaults."""

from __future__ import annotations

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig, load_config
from quicmesh.core.guard import BLOCK_SECONDS, OFFENCE_LIMIT, OFFENCE_WINDOW, Guard
from quicmesh.core.trust import Trust
from quicmesh.errors import ConfigError
from quicmesh.identity import KeyPair


def test_offence_limits_come_from_the_configuration(registry: ContainerRegistry) -> None:
    cfg = load_config(env={"QUICMESH_OFFENCE_LIMIT": "5", "QUICMESH_OFFENCE_WINDOW": "10",
                           "QUICMESH_BLOCK_SECONDS": "30"})
    assert (cfg.offence_limit, cfg.offence_window, cfg.block_seconds) == (5, 10.0, 30.0)
    kp = KeyPair.from_seed(b"g" * 32)
    guard = Guard(kp, Trust.open_realm("x"), wall=lambda now: now, registry=registry, config=cfg)
    peer = KeyPair.from_seed(b"p" * 32).node_id
    for i in range(4):
        guard.offence(peer, float(i))
    assert not guard.blocked(peer, 4.0) and not guard.kicked
    guard.offence(peer, 4.5)
    assert guard.blocked(peer, 5.0) and guard.take_kicked() == [peer]
    assert guard.blocked(peer, 34.0) and not guard.blocked(peer, 35.0)
    guard.offence(peer, 40.0)
    guard.offence(peer, 51.0)  # the window (10 s) passed: counting starts again
    assert not guard.blocked(peer, 52.0)
    default = Guard(kp, Trust.open_realm("x"), wall=lambda now: now, registry=registry)
    assert default.offence_limit == NodeConfig().offence_limit == OFFENCE_LIMIT == 3
    assert (NodeConfig().offence_window, NodeConfig().block_seconds) == (OFFENCE_WINDOW, BLOCK_SECONDS)
    for key in ("offence_limit", "offence_window", "block_seconds"):
        with pytest.raises(ConfigError, match=key):
            NodeConfig().replace(**{key: 0})
