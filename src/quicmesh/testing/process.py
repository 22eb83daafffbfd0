"""A ``quicmesh node --control`` child process driven through its JSON-lines control channel
(:mod:`quicmesh.testing.control`): the harness of the demo, the real-process tests and the
benchmarks.

    node = await NodeProcess.spawn("A", realm="demo")
    await node.request("subscribe", "subscribed", pattern="sensors.>", id=1)
    ev = await node.expect("message")
    await node.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["NodeProcess"]


class NodeProcess:
    """A ``quicmesh node --control`` child process and its event stream."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.address = ""
        self.node_id = ""
        self.http: str | None = None
        """The node's ``/metrics`` and ``/health`` address (``--http``), when it serves them."""
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100_000)
        self.dropped_events = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def spawn(
        cls,
        name: str,
        *,
        realm: str = "demo",
        bootstrap: Sequence[str] = (),
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        listen: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
    ) -> NodeProcess:
        """Start a node process and wait until it reports its listening address. ``prefix`` runs
        it through another command that execs it in place (``ip netns exec NS`` in the lab)."""
        args = [*prefix, sys.executable, "-m", "quicmesh", "node", "--control", "--listen", listen, "--realm", realm]
        for b in bootstrap:
            args += ["--bootstrap", b]
        args += list(extra)
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            limit=1 << 20,
        )
        node = cls(name, proc)
        ev = await node.expect("listening", timeout=timeout)
        node.address = ev["address"]
        node.node_id = ev["node_id"]
        node.http = ev.get("http")
        return node

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            try:
                self.events.put_nowait(ev)
            except asyncio.QueueFull:
                self.dropped_events += 1

    async def send(self, cmd: str, **fields: Any) -> None:
        """Write one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(
        self, event: str, *, timeout: float = 10.0, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The next event named ``event`` (an ``error`` event raises ``RuntimeError``)."""
        async with asyncio.timeout(timeout):
            while True:
                get = asyncio.ensure_future(self.events.get())
                done, _ = await asyncio.wait({get, self._reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    stderr = await self._stderr_tail()
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) waiting for {event}: {stderr}")
                ev = get.result()
                if ev.get("event") == event and (where is None or where(ev)):
                    return ev
                if ev.get("event") == "error" and event != "error":
                    raise RuntimeError(f"{self.name}: {ev.get('type')}: {ev.get('message')}")

    async def request(self, cmd: str, event: str, *, wait: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send a command (``fields`` become its JSON fields) and wait up to ``wait`` seconds for
        its answering event."""
        await self.send(cmd, **fields)
        return await self.expect(event, timeout=wait)

    async def wait_peers(self, count: int, *, timeout: float = 20.0) -> list[str]:
        """Wait until the node has at least ``count`` direct peers."""
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.request("health", "health")
            if len(ev["peers"]) >= count:
                return list(ev["peers"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} has {len(ev['peers'])} peers, wanted {count}")
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 10.0) -> int:
        """Ask the node to stop; kill it if it does not exit in time. Returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send("stop")
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        return self.proc.returncode if self.proc.returncode is not None else -1

    def kill(self) -> None:
        """SIGKILL the process (crash tests)."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def _stderr_tail(self) -> str:
        if self.proc.stderr is None:
            return ""
        with contextlib.suppress(Exception):
            data = await asyncio.wait_for(self.proc.stderr.read(), 2)
            return data.decode(errors="replace")[-2000:]
        return ""
