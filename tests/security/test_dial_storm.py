"""Dial storm (#11): addresses learned from others never make a node dial beyond its caps.

Before: 400 ``MFind`` made a node open 399 concurrent handshakes to an address of the
attacker's choosing despite ``max_connections=50`` (+19 MiB in 3 s). Now every dial passes the
core's dial gate (:mod:`quicmesh.core.dialgate`): at most ``max_pending_dials`` learned dials in
flight, ``dial_rate`` new ones a second, one per address and per node id, never more than
``max_connections`` together with the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from random import Random

import psutil
from transportkit import Quiet

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig, TransportConfig
from quicmesh.core.effects import Dial, DialAddress
from quicmesh.core.mesh_messages import MFind
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.node import NodeCore
from quicmesh.core.wire import Codec
from quicmesh.identity import KeyPair
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic import QuicTransport
from quicmesh.testing.wait import eventually

MAX_CONNECTIONS = 50
FINDS = 400


def _transport_cfg(**kw: object) -> TransportConfig:
    return dataclasses.replace(TransportConfig(max_connections=MAX_CONNECTIONS), **kw)  # type: ignore[arg-type]


def _core(**kw: object) -> NodeCore:
    cfg = NodeConfig(transport=_transport_cfg(**kw))
    return NodeCore(KeyPair.from_seed(b"\x01" * 32), cfg, Random(1), ContainerRegistry("t"), addresses=("10.0.0.1:1",))


def _finds(n: int, *, same_address: str | None = None) -> list[MFind]:
    """``n`` walks for one swarm, each naming a fresh origin id and (unless ``same_address``) a
    fresh address."""
    out = []
    for i in range(n):
        origin = KeyPair.from_seed(i.to_bytes(4, "big") + b"\x07" * 28).node_id
        addr = same_address or f"127.0.{1 + i // 250}.{1 + i % 250}:9"
        out.append(MFind("victim", origin.raw, [addr], 0))
    return out


def _dials(out: list[object]) -> list[Dial | DialAddress]:
    return [e for e in out if isinstance(e, Dial | DialAddress)]


# -- the core --------------------------------------------------------------------------------------


def test_core_dials_for_400_walks_stay_within_the_pending_cap_and_the_rate() -> None:
    core = _core()
    attacker = KeyPair.from_seed(b"\x02" * 32).node_id
    core.peer_connected(attacker, (), False, 0.0)
    in_flight: list[Dial | DialAddress] = []
    peak = started = 0
    now = 0.0
    for msg in _finds(FINDS):
        new = _dials(core.message(attacker, msg, now))
        in_flight += new
        started += len(new)
        peak = max(peak, len(in_flight))
        now += 0.001
    st = core.dials.stats()
    print(f"\ncore: {FINDS} MFind -> {started} dials started, peak {peak} in flight (cap 8), "
          f"{st['dials_queued']} queued, {st['dials_dropped']} dropped")
    assert peak <= 8 and started == 8
    assert st["dials_dropped"] >= FINDS - 1 - 8 - 64  # the rest waits (64) or was dropped
    # the driver reports each dial failed (nothing listens): queued ones start, at most 8 at a time,
    # no faster than dial_rate once the burst is spent
    for _ in range(200):
        now += 0.05
        if in_flight:
            d = in_flight.pop(0)
            out = core.dial_failed(d.peer if isinstance(d, Dial) else None, d.addresses, now)
        else:
            out = core.timer(now)
        new = _dials(out) + _dials(core.timer(now))
        in_flight += new
        started += len(new)
        peak = max(peak, len(in_flight))
        assert core.dials.stats()["dials_in_flight"] <= 8
    print(f"core: after reports: {started} dials started in all, peak {peak} in flight")
    assert peak <= 8
    assert started <= 8 + 64  # never more than the slots plus the queue


def test_core_one_address_named_by_400_ids_gets_one_dial() -> None:
    core = _core()
    attacker = KeyPair.from_seed(b"\x02" * 32).node_id
    core.peer_connected(attacker, (), False, 0.0)
    dials: list[Dial | DialAddress] = []
    for msg in _finds(FINDS, same_address="192.0.2.7:4433"):
        dials += _dials(core.message(attacker, msg, 0.5))
    print(f"\ncore: {FINDS} ids at one address -> {len(dials)} dial(s), "
          f"{core.dials.stats()['dials_dropped_address']} dropped as the same address")
    assert len(dials) == 1


def test_core_user_dials_go_first_and_connections_plus_dials_stay_within_max_connections() -> None:
    core = _core(max_pending_dials=4, max_queued_dials=4)
    attacker = KeyPair.from_seed(b"\x02" * 32).node_id
    core.peer_connected(attacker, (), False, 0.0)
    for msg in _finds(50):
        core.message(attacker, msg, 0.1)
    assert core.dials.stats()["dials_in_flight"] == 4
    # a bootstrap contact (the user's) is dialled at once although learned dials fill their slots
    out = core.join([(None, ("203.0.113.9:1",))], 0.2)
    assert any(isinstance(e, DialAddress) and e.addresses == ("203.0.113.9:1",) for e in out)
    # 44 more connections: 45 connections + 5 dials in flight reach max_connections
    for i in range(44):
        core.peer_connected(KeyPair.from_seed(bytes([100 + i]) * 32).node_id, (), False, 0.3)
    conns = len(core.mesh.links.conns)
    assert conns + core.dials.stats()["dials_in_flight"] == MAX_CONNECTIONS
    more = _dials(core.message(attacker, _finds(60)[55], 0.4))
    print(f"\ncore: {conns} connections + {core.dials.stats()['dials_in_flight']} dials in flight = "
          f"{MAX_CONNECTIONS}: {len(more)} new dial(s) started")
    assert more == []


# -- a real node over QUIC ---------------------------------------------------------------------------


class _Sink(asyncio.DatagramProtocol):
    """A third party's UDP port: counts what it receives, never answers."""

    def __init__(self) -> None:
        self.packets = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets += 1


async def test_400_mfind_over_quic_never_push_handshakes_beyond_the_caps() -> None:
    loop = asyncio.get_running_loop()
    sink = _Sink()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    victim = f"127.0.0.1:{sock.getsockname()[1]}"
    sink_transport, _ = await loop.create_datagram_endpoint(lambda: sink, sock=sock)
    tcfg = _transport_cfg(handshake_timeout=2.0)
    node = await Node.start(NodeConfig(realm="storm", transport=tcfg))
    codec = Codec(ALL_MESSAGES)
    adversary = QuicTransport(KeyPair.generate(), "storm", TransportConfig(), codec)
    await adversary.start(Quiet())
    proc = psutil.Process(os.getpid())
    rss_before = proc.memory_info().rss
    samples: list[tuple[int, int]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        quic = node.transport
        assert isinstance(quic, QuicTransport)
        while not stop.is_set():
            q = quic.quic_state()
            samples.append((q["dials"], len(quic.table.dialing)))
            await asyncio.sleep(0.005)

    sampler = asyncio.ensure_future(sample())
    try:
        conn = await adversary.dial(node.address, node.id)
        # half the walks name the victim's port under 200 ids, half 200 distinct dead addresses
        finds = _finds(200, same_address=victim) + _finds(FINDS)[200:]
        for m in finds:
            assert conn.send(m)
        await eventually(lambda: node.core.dials.stats()["dials_started"] >= 8, timeout=10.0)
        await eventually(lambda: node.core.dials.stats()["dials_in_flight"] == 0
                         and node.core.dials.stats()["dials_waiting"] == 0, timeout=30.0)
        rss_peak = max(proc.memory_info().rss, rss_before)
    finally:
        stop.set()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await adversary.stop()
        await node.stop()
        sink_transport.close()
    st = node.core.dials.stats()
    peak_dials = max(d for d, _ in samples)
    peak_handshakes = max(h for _, h in samples)
    print(f"\nQUIC: {FINDS} MFind from one peer -> peak {peak_dials} concurrent dials, {peak_handshakes} "
          f"outgoing handshakes (cap max_pending_dials=8, max_connections={MAX_CONNECTIONS}); "
          f"{st['dials_started']} started, {st['dials_dropped']} dropped "
          f"({st['dials_dropped_address']} same address), driver peak {node.dials_in_flight_peak}, "
          f"victim port got {sink.packets} packets; "
          f"RSS +{(rss_peak - rss_before) / 2**20:.1f} MiB over {len(samples)} samples")
    assert peak_dials <= 8 and peak_handshakes <= 8
    assert node.dials_in_flight_peak <= 8 and node.dials_refused == 0  # the runtime's own check
    assert rss_peak - rss_before < 12 * 2**20  # was +19 MiB in 3 s
    assert st["dials_started"] <= 8 + 64 + 1
    assert st["dials_dropped"] >= FINDS - 2 - 8 - 64 - 1
