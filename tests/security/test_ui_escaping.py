"""The web console renders hostile strings from the network as text, and its CSP is in force.

A denial's subject is whatever a peer or light client asked for (a call name, a topic): the
console must show it literally. Headless Chromium loads ``/ui`` (tests/ui_browser.py; skipped
without chromium outside CI) and the test asserts that none of the markup or script in those
strings ran or became elements, and that the page's Content-Security-Policy blocks inline script.
"""

from __future__ import annotations

from pathlib import Path

from ui_browser import browser_or_skip, chromium

from quicmesh import Node, NodeConfig
from quicmesh.testing.wait import eventually

HOSTILE = (
    '<img src=x onerror="window.__pwned=1">',
    "<script>window.__pwned=2</script>",
    '"><svg onload="window.__pwned=3">',
    "<iframe srcdoc='<script>parent.__pwned=4</script>'></iframe>",
    "javascript:window.__pwned=5",
)


async def test_hostile_names_are_shown_as_text_and_inline_script_is_blocked(tmp_path: Path) -> None:
    browser_or_skip()
    a = await Node.start(NodeConfig(realm="ui-escape", http="127.0.0.1:0"))
    try:
        for subject in HOSTILE:
            a.core.guard.deny("call", subject)  # as the core does for a peer's call it refuses
        async with chromium(tmp_path) as page:
            await page.send("Page.navigate", {"url": f"http://{a.http_address}/ui"})
            shown = await eventually(
                lambda: page.js("Array.from(document.querySelectorAll('#denials tr td:nth-child(3)'),"
                                " td => td.textContent)"),
                until=lambda v: isinstance(v, list) and len(v) == len(HOSTILE), timeout=20,
                what="the denials in the page")
            assert shown == list(reversed(HOSTILE))  # newest first, literally
            elements = await page.js("document.querySelectorAll('#denials img, #denials script, #denials svg,"
                                     " #denials iframe, #denials a').length")
            ran = await page.js("window.__pwned === undefined ? 0 : 1")
            # an inline script added at run time must be refused by the page's CSP
            await page.js("document.body.append(Object.assign(document.createElement('script'),"
                          " {textContent: 'window.__inline = 1'}))")
            inline = await page.js("window.__inline === undefined ? 0 : 1")
            blocked = await eventually(lambda: [p for p in page.problems if "Content Security Policy" in p],
                                       timeout=10, what="the CSP violation report")
        executed = ran + inline
        print(f"{min(len(HOSTILE), elements + ran)} of {len(HOSTILE)} hostile strings became elements or ran "
              f"({elements} elements, {ran} ran); "
              f"inline script blocked by CSP: {inline == 0} ({len(blocked)} violation reported)")
        assert elements == 0 and executed == 0
    finally:
        await a.stop()
