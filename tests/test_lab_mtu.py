"""#14 datagram sizes in the network lab: large datagrams where the path's MTU is known, QUIC's
usual ones elsewhere, and no stall on paths that hide their MTU.

- Nodes on one host (a lab host's namespace, its loopback MTU set to 9000 or 1500, nodes on
  127.0.0.1): both ends must send datagrams of the loopback MTU less 48 bytes of headers (8,952 or
  1,452) from the start, without probing, and 1 KiB messages must arrive both ways.
- Two LANs joined by a router, n1 on LAN a dialing n2 on LAN b, ``transport.max_datagram_size``
  at its default. qh3's path MTU search above 1,472 bytes is not used (it was measured to take
  65,527 bytes after one 1,836-byte probe on a 9000 path, and the connection stalled), so:
  - jumbo frames (both LANs at MTU 9000): the dialer sends 1,472, the listener 1,280, and every
    message arrives both ways (with qh3's search above 1,472 on, none did);
  - a black hole (LAN a at 9000, LAN b at 1500, the router sends no ICMP, so a packet too large
    for LAN b vanishes without a "fragmentation needed"): the same sizes and every message.

Needs root, ``ip`` and ``nft`` (the ``lab`` fixture).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from quicmesh.testing.lab import Lab
from quicmesh.testing.process import NodeProcess

MESSAGES = 2000
"""1 KiB messages published each way."""
PAYLOAD = "m" * 1016  # the control channel appends "#<i>": ~1 KiB


async def _sizes(node: NodeProcess) -> list[Any]:
    """The largest UDP payload ``node`` sends to each peer now (its health's peer paths)."""
    ev = await node.request("health", "health", wait=10)
    return [p.get("datagram_size") for p in ev["health"]["relay"]["peers"]]


async def _both_ways(n1: NodeProcess, n2: NodeProcess) -> dict[str, float]:
    """Publish ``MESSAGES`` 1 KiB messages n1 -> n2 and n2 -> n1; seconds each way to the last."""
    out: dict[str, float] = {}
    for sid, (src, dst) in enumerate(((n1, n2), (n2, n1)), start=1):
        topic = f"mtu.{sid}"
        await dst.request("subscribe", "subscribed", pattern=topic, id=sid, quiet=True)
        await src.request("wait_subscriber", "ready", topic=topic, wait=20)
        t0 = time.monotonic()
        await src.request("publish", "published", topic=topic, payload=PAYLOAD, count=MESSAGES, wait=60)
        got = await dst.request("await_count", "count_reached", id=sid, count=MESSAGES, timeout=40, wait=45)
        assert got["count"] == MESSAGES, f"{src.name} -> {dst.name}: {got['count']} of {MESSAGES} delivered"
        out[f"{src.name}->{dst.name}"] = time.monotonic() - t0
    return out


async def _pair(lab: Lab, mtu_a: int, mtu_b: int, *, blackhole: bool) -> tuple[NodeProcess, NodeProcess]:
    lab.add_lan("a")
    lab.add_lan("b")
    h1, h2 = lab.add_host("h1", "a"), lab.add_host("h2", "b")
    lab.add_router("r", ["a", "b"])
    lab.set_mtu("a", mtu_a)
    lab.set_mtu("b", mtu_b)
    if blackhole:
        lab.blackhole_icmp("r")
    n2 = await lab.spawn(h2, "n2")
    n1 = await lab.spawn(h1, "n1", bootstrap=[n2.address])
    await n1.process.wait_peers(1, timeout=30)
    await n2.process.wait_peers(1, timeout=30)
    return n1.process, n2.process


@pytest.mark.parametrize(("mtu_b", "blackhole"), [(9000, False), (1500, True)], ids=["jumbo", "black-hole"])
async def test_paths_to_other_hosts_keep_quic_sizes_and_deliver(lab: Lab, mtu_b: int, blackhole: bool) -> None:
    try:
        n1, n2 = await _pair(lab, 9000, mtu_b, blackhole=blackhole)
        times = await _both_ways(n1, n2)
        dialer, listener = await _sizes(n1), await _sizes(n2)
        print(f"LAN a at MTU 9000, LAN b at {mtu_b}{', router sends no ICMP' if blackhole else ''}: dialer sends "
              f"{dialer} B datagrams, listener {listener} B; {MESSAGES} x 1 KiB each way in "
              f"{', '.join(f'{k} {v:.2f} s' for k, v in times.items())}")
        assert dialer == [1472], dialer  # qh3's search, up to its 1,472
        assert listener == [1280], listener  # a dialer on another host: the listener cannot probe
    finally:
        await lab.stop_nodes()


async def test_nodes_on_one_host_use_the_loopback_mtu(lab: Lab) -> None:
    lab.add_lan("a")
    host = lab.add_host("h1", "a")
    nodes: list[NodeProcess] = []
    try:
        for mtu in (9000, 1500):
            lab._exec(host.ns, "ip", "link", "set", "lo", "mtu", str(mtu))
            prefix = ("ip", "netns", "exec", host.ns)
            n2 = await NodeProcess.spawn(f"lo{mtu}b", realm=f"lo{mtu}", prefix=prefix, extra=["--no-local-discovery"])
            nodes.append(n2)
            n1 = await NodeProcess.spawn(f"lo{mtu}a", realm=f"lo{mtu}", prefix=prefix, bootstrap=[n2.address],
                                         extra=["--no-local-discovery"])
            nodes.append(n1)
            await n1.wait_peers(1)
            await n2.wait_peers(1)
            times = await _both_ways(n1, n2)
            dialer, listener = await _sizes(n1), await _sizes(n2)
            print(f"one host, loopback MTU {mtu}: dialer sends {dialer} B datagrams, listener {listener} B; "
                  f"{MESSAGES} x 1 KiB each way in {', '.join(f'{k} {v:.2f} s' for k, v in times.items())}")
            assert dialer == listener == [mtu - 48], (dialer, listener)
            for n in (n1, n2):
                await n.stop()
    finally:
        for n in nodes:
            await n.stop()
