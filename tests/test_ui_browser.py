"""The web console in a real browser: headless Debian ``chromium`` loads ``/ui`` from a node,
shows the node's id and its peers, and shows a new peer when one joins (live updates over SSE).

Chromium is driven over the DevTools protocol (tests/ui_browser.py). Without a ``chromium``
binary the test skips with one line; under CI (``CI`` set; ``.ci/run`` installs chromium) a
missing browser fails instead, so the console never silently stops being tested.
"""

from __future__ import annotations

from pathlib import Path

from ui_browser import browser_or_skip, chromium

from quicmesh import Node, NodeConfig
from quicmesh.testing.wait import eventually


async def echo(payload: bytes) -> bytes:
    return payload


async def test_console_shows_node_and_a_peer_that_joins(tmp_path: Path) -> None:
    browser_or_skip()
    a = await Node.start(NodeConfig(realm="ui-browser", http="127.0.0.1:0"))
    b: Node | None = None
    try:
        sub = await a.subscribe("news.>")  # held: a dropped handle is released
        await a.advertise("echo", echo)
        async with chromium(tmp_path) as page:
            await page.send("Page.navigate", {"url": f"http://{a.http_address}/ui"})
            shown = await eventually(lambda: page.js("document.getElementById('node-id')?.textContent"),
                                     until=lambda v: v == str(a.id), timeout=20, what="the node id in the page")
            assert shown == str(a.id)
            peers_js = "Array.from(document.querySelectorAll('#peers tr[data-peer]'), r => r.dataset.peer)"
            assert await page.js(peers_js) == []
            assert await page.js("document.getElementById('realm').textContent") == "ui-browser"
            assert await page.js("document.getElementById('mode').textContent") == "open"
            assert await page.js("document.querySelector('#services tr[data-service]')?.dataset.service") == "echo"
            topics = await page.js(
                "Array.from(document.querySelectorAll('#topics tr[data-topic]'), r => r.dataset.topic)")
            assert "news" in topics and sub.topic == "news.>"
            assert await page.js("document.querySelectorAll('#containers canvas.spark').length") > 10

            b = await Node.start(NodeConfig(realm="ui-browser", bootstrap=(a.address,)))
            peers = await eventually(lambda: page.js(peers_js), until=lambda ps: str(b.id) in ps, timeout=20,
                                     what="the joining peer in the page's peer list")
            assert peers == [str(b.id)]
            assert await page.js("document.querySelector('#peers tr[data-peer] td:nth-child(2)').textContent") \
                == "direct"
            assert await page.js("document.getElementById('conn').textContent") == "live"  # updated over SSE
            print(f"chromium showed node {str(a.id)[:12]} and, live, the peer {str(b.id)[:12]} that joined")
            assert page.problems == [], page.problems  # no script error, no CSP violation
    finally:
        if b is not None:
            await b.stop()
        await a.stop()
