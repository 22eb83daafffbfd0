"""#13 observed addresses, sans-IO: the handshake carries each end's view of the other, the table
confirms an address only when 2 distinct peers report it, and what a node announces."""

from __future__ import annotations

import pytest
from test_handshake import dialer, listener, run, sent

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import AddressesConfig, NodeConfig, load_config
from quicmesh.core.messages import ALL_MESSAGES, Challenge, Hello
from quicmesh.core.observed import ObservedAddresses, canonical_address, is_wildcard
from quicmesh.core.wire import Codec
from quicmesh.errors import ConfigError, MalformedFrame
from quicmesh.identity import KeyPair, NodeId


def ids(n: int) -> list[NodeId]:
    return [KeyPair.generate().node_id for _ in range(n)]


def table(**kw: object) -> ObservedAddresses:
    return ObservedAddresses(AddressesConfig(**kw), ContainerRegistry("t"))  # type: ignore[arg-type]


# -- the handshake ---------------------------------------------------------------------------------


def test_handshake_tells_each_end_where_the_other_sees_it() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, expected=b.node_id), listener(b)
    d.remote = "198.51.100.7:4433"  # the address the dialer dialed
    lst.remote = "203.0.113.9:61000"  # the source address the listener sees (a NAT mapping)
    d_out, l_out = run(d, lst, b)
    assert d.established and lst.established
    hello = next(m for m in sent(d_out) if isinstance(m, Hello))
    chal = next(m for m in sent(l_out) if isinstance(m, Challenge))
    assert hello.obs == "198.51.100.7:4433" and chal.obs == "203.0.113.9:61000"
    assert d.observed == "203.0.113.9:61000"  # the dialer learns its public mapping
    assert lst.observed == "198.51.100.7:4433"  # the listener learns how it was reached


def test_handshake_without_observed_fields_still_works() -> None:
    """An older peer sends no ``obs``: the field defaults to empty and nothing is reported."""
    a, b = KeyPair.generate(), KeyPair.generate()
    d, lst = dialer(a, expected=b.node_id), listener(b)
    run(d, lst, b)
    assert d.established and d.observed == "" and lst.observed == ""


def test_observed_field_is_bounded_at_decode() -> None:
    codec = Codec(ALL_MESSAGES)
    frame = codec.frame(Challenge(nonce=b"n" * 32, obs="1" * 300))
    with pytest.raises(MalformedFrame):
        list(codec.decoder().feed(frame))
    ok = codec.frame(Challenge(nonce=b"n" * 32, obs="192.0.2.1:5"))
    (m,) = list(codec.decoder().feed(ok))
    assert isinstance(m, Challenge) and m.obs == "192.0.2.1:5"


# -- addresses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "canon"), [
    ("192.0.2.1:4000", "192.0.2.1:4000"),
    ("::ffff:192.0.2.1:4000", "192.0.2.1:4000"),
    ("2001:db8::1:4000", "[2001:db8::1]:4000"),
    ("[2001:db8::1]:4000", "[2001:db8::1]:4000"),
    ("0.0.0.0:4000", None),
    ("[::]:4000", None),
    ("224.0.0.1:4000", None),
    ("192.0.2.1:0", None),
    ("192.0.2.1:70000", None),
    ("example.com:4000", None),
    ("garbage", None),
    ("", None),
])
def test_canonical_address(raw: str, canon: str | None) -> None:
    assert canonical_address(raw) == canon


def test_is_wildcard() -> None:
    assert is_wildcard("0.0.0.0:1") and is_wildcard("[::]:1") and is_wildcard(":::1")
    assert not is_wildcard("127.0.0.1:1") and not is_wildcard("nonsense")


# -- confirmation ------------------------------------------------------------------------------------


def test_one_hostile_peer_cannot_make_a_node_announce_an_address() -> None:
    t = table()
    t.configure("192.0.2.10:4000")
    evil = ids(1)[0]
    lies = [f"203.0.113.{i % 250 + 1}:{1000 + i}" for i in range(1000)]
    changed = sum(t.report(evil, lie, float(i)) for i, lie in enumerate(lies))
    announced_lies = [a for a in t.announced() if a != "192.0.2.10:4000"]
    print(f"1 hostile peer, 1,000 reports: {len(announced_lies)} lies announced, "
          f"{changed} changes of the announced set, table {len(t.votes())} entry")
    assert changed == 0 and announced_lies == []
    assert t.announced() == ("192.0.2.10:4000",)
    assert len(t.votes()) == 1  # one peer, one vote: only its latest report is kept
    assert t.received == 1000 and t.ignored == 0


def test_two_honest_peers_confirm() -> None:
    t = table()
    t.configure("10.0.0.5:4000")
    p1, p2, p3 = ids(3)
    assert not t.report(p1, "198.51.100.1:31000", 0.0)
    assert t.confirmed() == ()
    assert t.report(p2, "198.51.100.1:31000", 1.0)  # second distinct peer: confirmed, announced
    assert t.confirmed() == ("198.51.100.1:31000",)
    assert t.announced() == ("10.0.0.5:4000", "198.51.100.1:31000")
    # the same peer repeating itself adds nothing; a third peer's different view is unconfirmed
    assert not t.report(p1, "198.51.100.1:31000", 2.0)
    assert not t.report(p3, "198.51.100.2:1", 2.0)
    st = t.stats()
    assert st["observed"] == [
        {"address": "198.51.100.1:31000", "reporters": 2, "confirmed": True},
        {"address": "198.51.100.2:1", "reporters": 1, "confirmed": False},
    ]


def test_a_peer_changing_its_report_moves_its_vote_and_reports_expire() -> None:
    t = table(observed_ttl=60.0)
    t.configure("10.0.0.5:4000")
    p1, p2 = ids(2)
    t.report(p1, "198.51.100.1:1", 0.0)
    t.report(p2, "198.51.100.1:1", 0.0)
    assert t.confirmed() == ("198.51.100.1:1",)
    assert t.report(p2, "198.51.100.1:2", 1.0)  # p2 now sees another mapping: no longer confirmed
    assert t.confirmed() == ()
    t.report(p1, "198.51.100.1:2", 2.0)
    assert t.confirmed() == ("198.51.100.1:2",)
    assert t.expire(100.0)  # both reports are older than the ttl
    assert t.confirmed() == () and t.announced() == ("10.0.0.5:4000",)


def test_ignored_reports_are_counted_and_do_not_vote() -> None:
    t = table()
    t.configure("10.0.0.5:4000")
    peers = ids(3)
    for p, bad in zip(peers, ["0.0.0.0:4000", "239.1.1.1:4000", "host.example:4000"], strict=True):
        assert not t.report(p, bad, 0.0)
    assert t.received == 3 and t.ignored == 3 and t.votes() == {}
    assert not t.report(peers[0], "", 0.0)  # no report at all: not counted
    assert t.received == 3


def test_sybil_flood_is_bounded() -> None:
    t = table(observed_reporters=64)
    t.configure("10.0.0.5:4000")
    for i, p in enumerate(ids(500)):
        t.report(p, f"198.51.100.{i % 200 + 1}:9", float(i))
    print(f"500 reporting identities: {len(t.votes())} addresses from at most 64 kept reports")
    assert sum(t.votes().values()) == 64


# -- what a node announces ---------------------------------------------------------------------------


def test_wildcard_listener_never_announces_the_wildcard() -> None:
    t = table()
    assert t.configure("0.0.0.0:4000", ["127.0.0.1:4000", "10.1.2.3:4000"]) == ("10.1.2.3:4000",)
    assert table().configure("0.0.0.0:4000", ["127.0.0.1:4000"]) == ("127.0.0.1:4000",)  # nothing else
    assert table().configure("0.0.0.0:4000") == ()
    p1, p2 = ids(2)
    t.report(p1, "198.51.100.1:4000", 0.0)
    t.report(p2, "198.51.100.1:4000", 0.0)
    assert set(t.announced()) == {"198.51.100.1:4000", "10.1.2.3:4000"}
    assert not any(a.startswith("0.0.0.0") for a in t.announced())


def test_advertise_addresses_override_everything() -> None:
    t = table(advertise_addresses=("mesh.example:443", "198.51.100.77:443"))
    assert t.configure("0.0.0.0:4000", ["10.1.2.3:4000"]) == ("mesh.example:443", "198.51.100.77:443")
    p1, p2 = ids(2)
    t.report(p1, "198.51.100.1:4000", 0.0)
    assert not t.report(p2, "198.51.100.1:4000", 0.0)
    assert t.announced() == ("mesh.example:443", "198.51.100.77:443")


def test_config_advertise_addresses() -> None:
    cfg = load_config(env={"QUICMESH_ADDRESSES__ADVERTISE_ADDRESSES": "198.51.100.1:4000,[2001:db8::1]:4000"})
    assert cfg.addresses.advertise_addresses == ("198.51.100.1:4000", "[2001:db8::1]:4000")
    with pytest.raises(ConfigError, match=r"addresses\.advertise_addresses"):
        load_config(overrides={"addresses.advertise_addresses": ("nope",)})
    with pytest.raises(ConfigError, match=r"addresses\.observed_confirmations"):
        NodeConfig(addresses={"observed_confirmations": 0})  # type: ignore[arg-type]


def test_cli_advertise_address_flag() -> None:
    from quicmesh.cli.main import _parser

    args = _parser().parse_args(["node", "--advertise-address", "198.51.100.1:1",
                                      "--advertise-address", "198.51.100.2:2"])
    assert args.advertise_address == ["198.51.100.1:1", "198.51.100.2:2"]


def test_status_shows_observed_addresses() -> None:
    import io

    from rich.console import Console

    from quicmesh.cli.status import render_status

    t = table()
    t.configure("10.0.0.5:4000")
    p1, p2, p3 = ids(3)
    t.report(p1, "198.51.100.1:31000", 0.0)
    t.report(p2, "198.51.100.1:31000", 0.0)
    t.report(p3, "0.0.0.0:1", 0.0)
    buf = io.StringIO()
    render_status({"status": "ok", "node_id": "x", "addresses": t.stats()},
                  Console(file=buf, width=160, force_terminal=False, color_system=None))
    text = buf.getvalue()
    assert "198.51.100.1:31000" in text and "10.0.0.5:4000" in text
    row = next(line for line in text.splitlines() if "198.51.100.1:31000" in line)
    assert "yes" in row and "2" in row
    assert "confirmed at 2 peers; reports 3, ignored 1" in text
