"""A node loads the HTTP stack (aiohttp) and prometheus-client only when it serves HTTP (#14):
an idle ``quicmesh node`` without ``--http`` measured 65.9 MiB resident with them and 51.3 MiB
without (README, "Soak"). A light client loads none of a node's machinery (its core, driver,
broadcast tree, store): a script that connects, publishes and exits took 561 ms and 47.8 MiB with
them, 342 ms and 44.8 MiB without (README, "Using it"; ``bench/client_start.py``). Checked in a
fresh interpreter, where nothing else imported them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

from quicmesh.config import NodeConfig
from quicmesh.runtime.node import Node

HEAVY = ("aiohttp", "prometheus_client")

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import quicmesh
    from quicmesh.config import NodeConfig
    from quicmesh.config.discovery import DiscoveryConfig

    async def main(http):
        cfg = NodeConfig(realm="lazy", listen="127.0.0.1:0", http=http, discovery=DiscoveryConfig(local=False))
        node = await quicmesh.Node.start(cfg)
        try:
            loaded = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
            served = node.http_address is not None
        finally:
            await node.stop()
        print(json.dumps({"loaded": loaded, "served": served}))

    asyncio.run(main(sys.argv[1] or None))
    """
)


def _run(http: str) -> dict[str, object]:
    argv = [sys.executable, "-c", SCRIPT, http, json.dumps(HEAVY)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_node_without_http_loads_neither_aiohttp_nor_prometheus_client() -> None:
    result = _run("")
    print(f"no HTTP endpoint: loaded {result['loaded']}")
    assert result == {"loaded": [], "served": False}


def test_a_node_with_http_loads_them_and_serves() -> None:
    result = _run("127.0.0.1:0")
    print(f"HTTP endpoint: loaded {result['loaded']}")
    assert result == {"loaded": list(HEAVY), "served": True}


def test_the_lazy_names_resolve() -> None:
    import quicmesh.observability as obs

    for name in ("HttpEndpoint", "health_document", "is_loopback", "NodeMetrics", "render", "ALL_METRICS"):
        assert getattr(obs, name) is not None
    assert set(HEAVY) <= set(sys.modules)


NODE_ONLY = (
    "quicmesh.runtime.node", "quicmesh.runtime.driver", "quicmesh.runtime.gateway", "quicmesh.runtime.logs",
    "quicmesh.core.node", "quicmesh.core.mesh", "quicmesh.core.plumtree", "quicmesh.core.membership",
    "quicmesh.core.rpc", "quicmesh.core.swarm", "quicmesh.store", "sqlite3", *HEAVY,
)
"""What a node needs and a light client does not."""

CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import quicmesh

    async def main(address):
        async with await quicmesh.Client.connect(address, realm="lazy", reconnect=False) as client:
            async with await client.subscribe("lazy.t") as sub:
                await client.publish("lazy.t", b"own", confirm=True)
                msg = await asyncio.wait_for(sub.get(), 10)
        loaded = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
        print(json.dumps({"loaded": loaded, "received": msg.payload.decode(), "type": type(msg).__name__}))

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_light_client_loads_none_of_a_nodes_machinery() -> None:
    gateway = await Node.start(NodeConfig(realm="lazy", listen="127.0.0.1:0", discovery={"local": False}))  # type: ignore[arg-type]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT_SCRIPT, str(gateway.address), json.dumps(NODE_ONLY),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await gateway.stop()
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    print(f"light client: received {result['received']!r}, loaded {result['loaded']} of {len(NODE_ONLY)} node modules")
    assert result == {"loaded": [], "received": "own", "type": "Message"}


def test_the_message_type_is_one_for_nodes_and_clients() -> None:
    import quicmesh
    from quicmesh.runtime import driver, message

    assert quicmesh.Message is message.Message is driver.Message


def test_naming_the_message_type_loads_no_node() -> None:
    script = "import json, sys, quicmesh; quicmesh.Message; print(json.dumps('quicmesh.runtime.node' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) is False
