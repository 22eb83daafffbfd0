"""A node loads the HTTP stack (aiohttp) and prometheus-client only when it serves HTTP (#14):
an idle ``quicmesh node`` without ``--http`` measured 65.9 MiB resident with them and 51.3 MiB
without (README, "Soak"). Checked in a fresh interpreter, where nothing else imported them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
