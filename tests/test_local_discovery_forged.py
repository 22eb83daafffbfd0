"""Forged local-discovery announcements (#13): a flood of mDNS announcements that claim this
node's realm, with made-up node ids, pointing at a node of another realm or at nothing. They cost
bounded look-ups, a bounded table and refused dials; they never make a connection (admission is
the QUIC handshake's)."""

from __future__ import annotations

import secrets
import socket

import pytest

from quicmesh import Node
from quicmesh.config import DiscoveryConfig, NodeConfig
from quicmesh.identity import KeyPair
from quicmesh.runtime.local_discovery import SERVICE_TYPE, announcement_properties
from quicmesh.testing.wait import eventually

FORGED = 100
CAP = 32


@pytest.mark.timeout(90)
async def test_forged_announcements_never_connect_and_stay_bounded() -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    realm = f"ldf-{secrets.token_hex(4)}"
    disc = DiscoveryConfig(loopback=True, interval=2.0, max_peers=CAP, max_announcements=CAP)
    node = await Node.start(NodeConfig(realm=realm, discovery=disc))
    if node.local_discovery.state != "on":
        await node.stop()
        pytest.skip(f"no multicast on loopback here: {node.local_discovery.state}")
    other = await Node.start(NodeConfig(realm=realm + "-other", discovery=DiscoveryConfig(local=False)))
    forger = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        targets = [other.address, "127.0.0.1:9"]  # a node of another realm, and nothing at all
        for i in range(FORGED):
            nid = str(KeyPair.generate().node_id)
            addr = targets[i % 2]
            info = AsyncServiceInfo(
                SERVICE_TYPE, f"{nid}.{SERVICE_TYPE}", port=int(addr.rpartition(":")[2]), server=f"f{i}.local.",
                addresses=[socket.inet_aton("127.0.0.1")],
                properties=announcement_properties(KeyPair.generate().node_id, realm, (addr,)),
            )
            await forger.async_register_service(info, cooperating_responders=True)
        c = node.local_discovery.table.counters
        await eventually(lambda: c["joins"] >= 1 and c["seen"] >= CAP, timeout=20, what="forged announcements handled")
        # every dial the joins started has ended (refused or timed out) and the node is still alone
        await eventually(lambda: node.core.dials.stats().get("dials_in_flight", 0) == 0, timeout=30,
                         what="dials ended")
        peers = len(node.local_discovery.table.peers)
        print(f"0 of {FORGED} forged announcements connected: {len(node.peers())} connections; "
              f"{c['seen']} handled ({c['ignored_rate']} over the rate cap of {CAP} per 2 s), "
              f"table {peers}/{CAP}, {c['dialled']} dials in {c['joins']} joins, all refused")
        assert node.peers() == [] and other.peers() == []
        assert len(node.mesh.realm.active) == 0
        assert peers <= CAP and c["ignored_rate"] > 0
        assert c["dialled"] <= c["accepted"]  # at most one dial per announcement from discovery
    finally:
        await forger.async_close()
        await node.stop()
        await other.stop()
