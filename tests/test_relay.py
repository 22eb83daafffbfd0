"""#13 relays, the sans-IO parts: relayed addresses, token buckets, the relay's decisions."""

from __future__ import annotations

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config.relay import RelayConfig
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.relay import RelayAddress, RelayServer, TokenBucket, behind_nat, is_relay_address
from quicmesh.core.relay_messages import RelayData, RelayForward
from quicmesh.core.wire import Codec
from quicmesh.errors import ConfigError
from quicmesh.identity import KeyPair, NodeId


def ids(n: int) -> list[NodeId]:
    return [KeyPair.generate().node_id for _ in range(n)]


def test_relayed_address_round_trips() -> None:
    r, b = ids(2)
    a = RelayAddress(r, "10.0.0.1:7000", b)
    text = str(a)
    assert text == f"relay:{r}@10.0.0.1:7000/{b}" and is_relay_address(text) and len(text) < 255
    assert RelayAddress.parse(text) == a
    own = RelayAddress(r, "[::1]:7000")
    assert RelayAddress.parse(str(own)) == own and own.target is None
    for bad in ("10.0.0.1:7000", f"relay:{r}", f"relay:{r}@host/{b}", f"relay:nope@1.2.3.4:5/{b}",
                f"relay:{r}@1.2.3.4:5/xyz", f"relay:{r}@1.2.3.4:0/{b}"):
        with pytest.raises(ValueError):
            RelayAddress.parse(bad)


def test_behind_nat() -> None:
    own = ["192.168.1.5:7000", "127.0.0.1:7000"]
    assert not behind_nat(own, [])  # nobody reported: no evidence
    assert not behind_nat(own, ["192.168.1.5:7000"])
    assert behind_nat(own, ["203.0.113.9:40001", "203.0.113.9:40002"])  # port-randomising NAT too


def test_token_bucket() -> None:
    b = TokenBucket(rate=10.0, burst=10.0)
    assert sum(b.take(1, 0.0) for _ in range(20)) == 10  # the burst
    assert not b.take(1, 0.05)
    assert b.take(1, 0.1)  # refilled at the rate
    assert sum(b.take(1, 100.0) for _ in range(20)) == 10  # never above the burst


def test_relay_messages_in_the_codec() -> None:
    codec = Codec(ALL_MESSAGES)
    r, = ids(1)
    for m in (RelayData(r.raw, b"\x01" * 1200), RelayForward(r.raw, b"")):
        assert codec.decoder().feed(codec.frame(m)) == [m]


def test_config_checks() -> None:
    with pytest.raises(ConfigError):
        RelayConfig(mode="sometimes")
    with pytest.raises(ConfigError):
        RelayConfig(via=("nope",))
    with pytest.raises(ConfigError):
        RelayConfig(max_relayed_peers=0)


def server(registry: ContainerRegistry, **kw: object) -> RelayServer:
    return RelayServer(RelayConfig(serve=True, **kw), registry)  # type: ignore[arg-type]


def test_forwards_only_to_reserved_peers_and_back(registry: ContainerRegistry) -> None:
    a, b, c = ids(3)
    s = server(registry)
    assert s.forward(a, b, 100, 0.0) == "no_reservation"
    assert s.reserve(b) is None and s.reserved(b)
    assert s.forward(a, b, 100, 0.0) is None
    assert s.forward(b, a, 100, 0.0) is None  # the session lets b answer a
    assert s.forward(b, c, 100, 0.0) == "no_reservation"  # but not reach anyone else
    assert s.forward(a, b, 100, 0.0, member=False) == "not_member"
    assert s.forward(a, b, 100, 0.0, route=False) == "no_route"
    st = s.stats()
    assert st["forwarded_packets"] == 2 and st["sessions"] == 1 and st["peers"] == 2
    assert st["dropped:no_reservation"] == 2 and st["dropped:not_member"] == 1
    s.peer_lost(b)
    assert s.stats()["peers"] == 0 and s.stats()["sessions"] == 0
    assert s.forward(a, b, 100, 1.0) == "no_reservation"


def test_disabled_relay_forwards_nothing(registry: ContainerRegistry) -> None:
    a, b = ids(2)
    s = RelayServer(RelayConfig(serve=False), registry)
    assert s.reserve(b) == "disabled"
    assert s.forward(a, b, 10, 0.0) == "disabled"


def test_sessions_expire(registry: ContainerRegistry) -> None:
    a, b = ids(2)
    s = server(registry, session_idle=5.0)
    s.reserve(b)
    assert s.forward(a, b, 10, 0.0) is None
    s.expire(4.0)
    assert s.stats()["sessions"] == 1
    s.expire(10.0)
    assert s.stats()["sessions"] == 0 and s.stats()["peers"] == 1  # b keeps its reservation
    assert s.forward(b, a, 10, 11.0) == "no_reservation"  # the session ended: b cannot reach a


def test_caps(registry: ContainerRegistry) -> None:
    peers = ids(12)
    s = server(registry, max_relayed_peers=4, max_sessions_per_peer=2)
    granted = [s.reserve(p) for p in peers]
    assert granted.count(None) == 4 and granted.count("max_relayed_peers") == 8
    target = peers[0]
    # sessions towards one reserved peer: at most 2
    src = peers[1:4]
    assert [s.forward(p, target, 10, 0.0) for p in src] == [None, None, "sessions"]
    assert s.stats()["peers"] == 4 and s.stats()["dropped:sessions"] == 1


def test_status_shows_peer_paths() -> None:
    from io import StringIO

    from rich.console import Console

    from quicmesh.cli.status import render_status

    r, a, b = ids(3)
    health = {"status": "ok", "node_id": str(a), "relay": {
        "serve": False, "mode": "auto", "relays": [str(r)], "failovers": 1,
        "peers": [{"peer": str(b), "path": f"relayed:{r}", "address": str(RelayAddress(r, "10.0.0.1:7000", b))},
                  {"peer": str(r), "path": "direct", "address": "10.0.0.1:7000"}]}}
    out = StringIO()
    render_status(health, Console(file=out, width=200))
    text = out.getvalue()
    assert "peer paths" in text and f"relayed via {str(r)[:16]}" in text and "direct" in text
    assert "through 1 relay(s), failovers 1" in text
