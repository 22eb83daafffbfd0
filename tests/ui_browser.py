"""Headless Chromium driven over the DevTools protocol (a WebSocket, with aiohttp's client), for
the web console's browser tests (tests/test_ui_browser.py, tests/security/test_ui_escaping.py).

Without a ``chromium`` binary :func:`browser_or_skip` skips with one line; under CI (``CI`` set;
``.ci/run`` installs chromium) it fails instead, so the console never silently stops being tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from quicmesh.testing.wait import eventually

__all__ = ["BROWSER", "Page", "browser_or_skip", "chromium"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((p for p in map(shutil.which, BROWSERS) if p), None)
MAX_EVENTS = 200
"""Console messages and exceptions kept from the page (the first ones; enough to report)."""


def browser_or_skip() -> str:
    """The browser binary; skips the test without one (fails under CI)."""
    if BROWSER is None:
        reason = "no chromium binary (apt-get install chromium) for the web console browser test"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    return BROWSER


class Page:
    """One Chromium tab over the DevTools protocol: commands by id, events kept (bounded)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}  # bounded: one per command in flight
        self.problems: list[str] = []  # bounded: MAX_EVENTS
        """Exceptions thrown by the page's script and console errors (CSP violations included)."""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            doc = json.loads(msg.data)
            fut = self._waiting.pop(doc.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(doc)
            elif len(self.problems) < MAX_EVENTS:
                method, params = doc.get("method"), doc.get("params", {})
                if method == "Runtime.exceptionThrown":
                    self.problems.append(json.dumps(params.get("exceptionDetails", {}))[:500])
                elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                    entry = params["entry"]
                    self.problems.append(f"{entry.get('text', '')} {entry.get('url', '')}"[:500])
                elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                    self.problems.append(json.dumps(params.get("args", []))[:500])

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a DevTools command; its result (``AssertionError`` when it failed)."""
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        await self._ws.send_str(json.dumps({"id": self._next, "method": method, "params": params or {}}))
        async with asyncio.timeout(10):
            doc = await fut
        if "error" in doc:
            raise AssertionError(f"{method}: {doc['error']}")
        result: dict[str, Any] = doc.get("result", {})
        return result

    async def js(self, expression: str) -> Any:
        """The value of ``expression`` in the page (JSON-serialisable values)."""
        out = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return out.get("result", {}).get("value")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


@contextlib.asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab, driven over the DevTools protocol."""
    binary = browser_or_skip()
    profile = tmp / "profile"
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        text = await eventually(lambda: port_file.exists() and port_file.read_text(), timeout=30,
                                until=lambda t: isinstance(t, str) and t.count("\n") >= 1,
                                what="chromium's DevToolsActivePort")
        port = int(str(text).split("\n", 1)[0])
        async with aiohttp.ClientSession() as http:
            async def page_target() -> str | None:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = await r.json()
                return next((str(t["webSocketDebuggerUrl"]) for t in targets if t.get("type") == "page"), None)

            url = await eventually(page_target, timeout=15, what="chromium's page target")
            async with http.ws_connect(str(url), max_msg_size=0) as ws:
                page = Page(ws)
                try:
                    for domain in ("Page", "Runtime", "Log"):
                        await page.send(f"{domain}.enable")
                    yield page
                finally:
                    await page.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
