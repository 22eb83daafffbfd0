"""Churners: separate processes each running session loops (one session is one churn cycle:
a fresh identity joins, subscribes, publishes, calls, cancels a call and leaves), driven in rounds
over JSON lines by :class:`Churner`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quicmesh.testing.process import NodeProcess

from .settings import REALM, SCRIPT

__all__ = ["ChurnStats", "Churner", "run_churner", "session"]


@dataclass
class ChurnStats:
    """What one churner round did: cycles per hub, failed sessions by ``type@stage``, cancels."""

    cycles: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    cancelled_mid_call: int = 0
    echo_mismatch: int = 0


async def session(
    hub: int, address: str, hub_id: str, rng: random.Random, stats: ChurnStats, *, crash: bool = False,
    stage: list[str] | None = None,
) -> None:
    """One churn cycle against hub ``hub`` (see the package docstring); ``crash`` dies mid-call."""
    from quicmesh.config import load_config
    from quicmesh.identity import KeyPair, NodeId
    from quicmesh.runtime.node import Node

    where = stage if stage is not None else [""]
    cfg = load_config(None, overrides={"realm": REALM, "bootstrap": (address,)})
    node = await Node.start(cfg, keypair=KeyPair.generate())  # joins the mesh through this hub
    hub_node = NodeId.parse(hub_id)
    try:
        async with asyncio.timeout(15):
            where[0] = "join"
            await node.wait_until(lambda: hub_node in node.peers(), 10)
            where[0] = "subscribe"
            news = await node.subscribe("soak.news")
            mine = await node.subscribe(f"soak.p.{node.id.short()}.{rng.randrange(1 << 30):x}.>")
            up = f"soak.up.{rng.randrange(16)}"
            where[0] = "wait_swarm"
            await node.wait_for_subscriber(up, 5)
            where[0] = "wait_provider"  # as a client would before its first call (lookups repeat)
            await node.wait_for_provider("soak.echo", 5)
            where[0] = "publish_call"
            for i in range(3):
                await node.publish(up, b"up-%d" % i)
            payload = b"echo-%d" % rng.randrange(1 << 30)
            if await node.call("soak.echo", payload, timeout=6) != payload:
                stats.echo_mismatch += 1
            call = asyncio.ensure_future(node.call("soak.sleep", b"1", timeout=3))
            await asyncio.sleep(rng.uniform(0.005, 0.03))  # load generator: cancel at a random point
            if crash:
                sys.stdout.flush()
                os._exit(3)  # die with the call in flight and the connection open
            if not call.done():
                stats.cancelled_mid_call += 1
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            where[0] = "close"
            await mine.close()
            await news.close()
    finally:
        await node.stop()
    stats.cycles[hub] = stats.cycles.get(hub, 0) + 1


async def run_churner(args: argparse.Namespace) -> int:
    """The churner process: runs rounds of sessions on command (JSON lines on stdin/stdout)."""
    hubs = list(zip(args.hubs.split(","), args.ids.split(","), strict=True))
    rng = random.Random(args.seed)
    counter = rng.randrange(len(hubs))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    give_up = loop.time() + args.max_seconds

    def emit(event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    emit("ready", pid=os.getpid())
    while loop.time() < give_up:
        try:
            line = await asyncio.wait_for(reader.readline(), max(0.1, give_up - loop.time()))
        except TimeoutError:
            break
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "stop":
            break
        if cmd["cmd"] == "crash":
            hub = counter % len(hubs)
            await session(hub, *hubs[hub], rng, ChurnStats(), crash=True)
            return 4  # not reached unless the session failed before the crash point
        if cmd["cmd"] != "round":
            continue
        stats = ChurnStats()
        end = loop.time() + float(cmd["seconds"])
        max_sessions = int(cmd.get("max_sessions", 10_000))

        async def worker(end: float, max_sessions: int, stats: ChurnStats) -> None:
            nonlocal counter
            for _ in range(max_sessions):
                if loop.time() >= end:
                    return
                hub = counter % len(hubs)
                counter += 1
                stage = ["start"]
                try:
                    await session(hub, *hubs[hub], rng, stats, stage=stage)
                except Exception as exc:
                    key = f"{type(exc).__name__}@{stage[0]}"
                    stats.errors[key] = stats.errors.get(key, 0) + 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker(end, max_sessions, stats) for _ in range(args.concurrency)))
        emit("round_done", cycles={str(k): v for k, v in stats.cycles.items()}, errors=stats.errors,
             cancelled_mid_call=stats.cancelled_mid_call, echo_mismatch=stats.echo_mismatch)
    return 0


class Churner:
    """A churner child process driven over JSON lines."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.rounds = 0

    @classmethod
    async def spawn(cls, name: str, hubs: Sequence[NodeProcess], *, concurrency: int, seed: int,
                    max_seconds: float, env: Mapping[str, str], script: str = SCRIPT) -> Churner:
        args = [sys.executable, script, "churner",
                "--hubs", ",".join(h.address for h in hubs), "--ids", ",".join(h.node_id for h in hubs),
                "--concurrency", str(concurrency), "--seed", str(seed), "--max-seconds", str(max_seconds)]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        churner = cls(name, proc)
        await churner.expect("ready", 30)
        return churner

    async def send(self, cmd: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"churner {self.name} exited ({self.proc.returncode}) waiting for {event}")
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if ev.get("event") == event:
                        return dict(ev)

    async def finish(self, *, crash: bool) -> int:
        """Stop (or crash) the process; returns its exit code."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.send("crash" if crash else "stop")
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -1
