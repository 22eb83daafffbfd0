"""#14 datagram sizes: nodes on one host send datagrams as large as the loopback interface allows,
both ways, from the first packet; other paths keep QUIC's usual sizes (see
``TransportConfig.max_datagram_size``; the network lab checks jumbo and black-hole paths in
``test_lab_mtu.py``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from qh3._hazmat import Buffer
from qh3.quic.packet import pull_quic_transport_parameters
from qh3.tls import ExtensionType

from quicmesh.config import NodeConfig, TransportConfig, load_config
from quicmesh.errors import ConfigError
from quicmesh.runtime import _quic_adapter as qa
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

LOOPBACK_MTU = qa._loopback_mtu()


def _advertised(cfg: Any) -> int | None:
    """The ``max_udp_payload_size`` a dialer with ``cfg`` puts in its ClientHello."""
    quic = qa.new_client_connection(cfg)
    quic.connect(("127.0.0.1", 9), now=0.0)
    tls = quic._tls
    assert tls is not None
    for kind, data in tls.tls.handshake_extensions:
        if kind == ExtensionType.QUIC_TRANSPORT_PARAMETERS:
            return pull_quic_transport_parameters(Buffer(data=data)).max_udp_payload_size
    raise AssertionError("no transport parameters in the ClientHello")


def test_rewritten_transport_parameters_keep_the_others() -> None:
    quic = qa.new_client_connection(qa.client_configuration(TransportConfig()))
    quic.connect(("127.0.0.1", 9), now=0.0)
    assert quic._tls is not None
    original = quic._tls.serialize_transport_parameters()
    before = pull_quic_transport_parameters(Buffer(data=original))
    after = pull_quic_transport_parameters(Buffer(data=qa._with_max_udp_payload(original, 9000)))
    assert before.max_udp_payload_size == 1472 and after.max_udp_payload_size == 9000
    for name in ("initial_max_data", "initial_max_stream_data_bidi_local", "initial_max_streams_bidi",
                 "initial_source_connection_id", "max_datagram_frame_size", "active_connection_id_limit"):
        assert getattr(after, name) == getattr(before, name), name


def test_a_dialer_advertises_its_size_only_above_qh3s() -> None:
    client = qa.client_configuration(TransportConfig())
    assert _advertised(client) == 1472  # qh3's own: other paths are unchanged
    assert _advertised(qa.relayed(client)) == qa.RELAYED_DATAGRAM_SIZE  # the relayed listener may send 16 KiB
    local = qa.local_configuration(client, 9000)
    if LOOPBACK_MTU is not None:
        assert local.max_datagram_size == min(9000, LOOPBACK_MTU - 48) and not local.probe_datagram_size
        assert _advertised(local) == local.max_datagram_size


def test_local_configuration_never_shrinks_and_respects_the_limit() -> None:
    client = qa.client_configuration(TransportConfig())
    assert qa.local_configuration(client, 1280).max_datagram_size == client.max_datagram_size
    assert qa.local_configuration(client, 1200).max_datagram_size == client.max_datagram_size
    if LOOPBACK_MTU is not None:
        assert qa.local_configuration(client, 65527).max_datagram_size == min(LOOPBACK_MTU - 48, 65507)


@pytest.mark.parametrize(("host", "local"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("192.168.1.10", False), ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False),
    ("2001:db8::1", False), ("not-an-address", False), ("", False),
])
def test_is_local(host: str, local: bool) -> None:
    assert qa.is_local(host) is local


def test_the_loopback_mtu_is_read_again_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """A light client's connect read the loopback MTU twice (a socket each, #14): a read is now
    reused for ``_MTU_FRESH`` seconds, then the kernel is asked again (a changed MTU shows)."""
    reads: list[int] = []
    clock = [1000.0]

    def read() -> int:
        reads.append(1)
        return 9000 + len(reads)

    monkeypatch.setattr(qa, "_read_loopback_mtu", read)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(qa, "_mtu_read", None)
    assert [qa._loopback_mtu() for _ in range(5)] == [9001] * 5 and len(reads) == 1
    clock[0] += qa._MTU_FRESH - 0.01
    assert qa._loopback_mtu() == 9001 and len(reads) == 1
    clock[0] += 0.02
    assert qa._loopback_mtu() == 9002 and len(reads) == 2
    clock[0] -= 5.0  # a clock that went back does not pin an old read
    assert qa._loopback_mtu() == 9003 and len(reads) == 3


@pytest.mark.parametrize("size", [0, 1199, 65528, 100_000])
def test_config_refuses_sizes_quic_or_udp_cannot_carry(size: int) -> None:
    with pytest.raises(ConfigError, match=r"transport\.max_datagram_size"):
        load_config(env={}, overrides={"transport.max_datagram_size": size})


async def _pair(size: int | None, listen: str = "127.0.0.1:0") -> tuple[Node, Node]:
    ov: dict[str, Any] = {"realm": "mtu", "discovery": {"local": False}, "listen": listen}
    if size is not None:
        ov["transport"] = {"max_datagram_size": size}
    a = await Node.start(load_config(env={}, overrides=ov))
    b = await Node.start(load_config(env={}, overrides={**ov, "bootstrap": [a.address]}))
    await eventually(lambda: bool(a.peers() and b.peers()), timeout=20, what=f"the two nodes connected on {listen}")
    return a, b


async def _exchange(a: Node, b: Node, count: int = 300) -> None:
    """``count`` 1 KiB messages each way, every one delivered."""
    for src, dst, topic in ((b, a, "mtu.ab"), (a, b, "mtu.ba")):
        sub = await dst.subscribe(topic)
        await src.wait_for_subscriber(topic, 10)
        for i in range(count):
            await src.publish(topic, i.to_bytes(4, "big") * 256)
        got = [int.from_bytes((await asyncio.wait_for(sub.get(), 10)).payload[:4], "big") for _ in range(count)]
        assert got == list(range(count))
        await sub.close()


def _sizes(node: Node) -> list[tuple[bool, int | None]]:
    return [(c.outbound, c.datagram_size) for c in node.transport.connections()]


@pytest.mark.skipif(LOOPBACK_MTU is None, reason="the loopback MTU is read with Linux's IP_MTU")
async def test_nodes_on_one_host_send_loopback_sized_datagrams_both_ways() -> None:
    a, b = await _pair(None)
    try:
        await _exchange(a, b)
        assert LOOPBACK_MTU is not None
        want = min(NodeConfig().transport.max_datagram_size, LOOPBACK_MTU - 48, 65507)
        print(f"loopback MTU {LOOPBACK_MTU}: listener sends {_sizes(a)}, dialer {_sizes(b)} (outbound, bytes)")
        assert _sizes(a) == [(False, want)] and _sizes(b) == [(True, want)]
        assert [p["datagram_size"] for p in a.health()["relay"]["peers"]] == [want]  # /health, status
    finally:
        await b.stop()
        await a.stop()


async def test_1280_keeps_quics_usual_sizes_on_loopback() -> None:
    a, b = await _pair(1280)
    try:
        await _exchange(a, b)
        assert _sizes(a) == [(False, 1280)]  # the listener's own
        assert _sizes(b) == [(True, 1472)]  # qh3's dialer probes up to 1,472
    finally:
        await b.stop()
        await a.stop()


@pytest.mark.skipif(LOOPBACK_MTU is None, reason="the loopback MTU is read with Linux's IP_MTU")
async def test_ipv6_loopback_nodes_send_large_datagrams_too() -> None:
    a, b = await _pair(None, "[::1]:0")
    try:
        await _exchange(a, b, count=100)
        assert LOOPBACK_MTU is not None
        want = min(NodeConfig().transport.max_datagram_size, LOOPBACK_MTU - 48)
        assert _sizes(a) == [(False, want)] and _sizes(b) == [(True, want)], (a.address, _sizes(a), _sizes(b))
    finally:
        await b.stop()
        await a.stop()
