"""A JSON-lines control channel for ``quicmesh node --control``: scripts, the demo and the
real-process tests drive a node process through its stdin and read events from its stdout.

Each input line is one JSON object with a ``"cmd"``; each output line is one JSON object with an
``"event"``. Payloads are UTF-8 text in ``"payload"`` (or base64 in ``"payload_b64"``).

Commands:

==============  ===========================================================================
``subscribe``   ``{"cmd": "subscribe", "pattern": P, "id": N, "quiet": bool}``: emit a
                ``message`` event per delivery (or only count them when quiet)
``unsubscribe`` ``{"cmd": "unsubscribe", "id": N}``
``publish``     ``{"cmd": "publish", "topic": T, "payload": S, "count": N, "rate": R}``: publish
                N messages (payload suffixed with ``#i`` when N > 1) at most R per second
``advertise``   ``{"cmd": "advertise", "name": S, "kind": "echo"|"upper"|"add"|"sleep"}``
``call``        ``{"cmd": "call", "name": S, "payload": S, "timeout": F, "id": N}``
``calls``       ``{"cmd": "calls", "name": S, "count": N, "concurrency": C, "timeout": F}``:
                many calls; one ``calls_done`` event with counts per outcome
``connect``     ``{"cmd": "connect", "address": A}``
``wait_provider`` / ``wait_subscriber``  ``{"name": S}`` / ``{"topic": T}``: a ``ready``
                event once a connected peer provides it / subscribes to it
``counts``      per-subscription message counts (``counts`` event)
``await_count`` ``{"id": N, "count": C, "timeout": F}``: a ``count_reached`` event once
                subscription N received C messages, with the wall-clock times of its first
                and last message (benchmarks)
``echo``        ``{"pattern": P, "to": T}``: republish every message matching P to topic T
``pingpong``    ``{"topic": T, "reply": R, "count": N, "rate": F}``: publish N pings to T at F
                per second, wait for each echo on R; a ``pingpong_done`` event with the
                round-trip percentiles
``health``      the node's health snapshot (``health`` event)
``stop``        stop the node and exit 0
==============  ===========================================================================
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..bounded import LruMap, Overflow
from ..errors import QuicmeshError, RemoteError
from .node import Message, Node, Subscription

__all__ = ["ControlChannel", "builtin_handler"]

_MAX_LINE = 1 << 20


def builtin_handler(kind: str) -> Callable[[bytes], Awaitable[bytes]]:
    """The demo procedures: ``echo``, ``upper``, ``add`` ("2+3" → "5"), ``sleep`` (seconds)."""

    async def echo(payload: bytes) -> bytes:
        return payload

    async def upper(payload: bytes) -> bytes:
        return payload.upper()

    async def add(payload: bytes) -> bytes:
        try:
            return str(sum(int(x) for x in payload.split(b"+"))).encode()
        except ValueError:
            raise RemoteError("bad_input", "expected numbers joined by '+'") from None

    async def sleep(payload: bytes) -> bytes:
        await asyncio.sleep(float(payload or b"1"))
        return b"slept"

    table = {"echo": echo, "upper": upper, "add": add, "sleep": sleep}
    if kind not in table:
        raise ValueError(f"unknown handler kind {kind!r}; expected one of {sorted(table)}")
    return table[kind]


def _payload(cmd: dict[str, Any]) -> bytes:
    if "payload_b64" in cmd:
        return base64.b64decode(cmd["payload_b64"])
    return str(cmd.get("payload", "")).encode()


def _text(data: bytes) -> dict[str, str]:
    try:
        return {"payload": data.decode()}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(data).decode()}


class ControlChannel:
    """Reads commands from a stream, runs them against ``node``, writes events to ``out``."""

    def __init__(self, node: Node, out: Callable[[str], None] | None = None) -> None:
        self.node = node
        self._out = out or self._stdout
        self._subs: LruMap[int, Subscription] = LruMap("control.subscriptions", 1000, Overflow.REJECT,
                                                       registry=node.registry)
        self._counts: LruMap[int, int] = LruMap("control.counts", 1000, Overflow.REJECT, registry=node.registry)
        self._times: LruMap[int, tuple[float, float]] = LruMap("control.times", 1000, Overflow.REJECT,
                                                               registry=node.registry)
        self._count_waiters: LruMap[int, tuple[int, asyncio.Event]] = LruMap(
            "control.count_waiters", 1000, Overflow.REJECT, registry=node.registry
        )
        self._tasks: set[asyncio.Task[Any]] = set()  # bounded: one reader per subscription plus running commands
        self.stopping = asyncio.Event()

    @staticmethod
    def _stdout(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line."""
        self._out(json.dumps({"event": event, **fields}, separators=(",", ":")))

    async def run(self, reader: asyncio.StreamReader) -> None:
        """Process commands until ``stop`` or end of input."""
        while not self.stopping.is_set():
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                self.emit("error", type="BadCommand", message="line too long")
                continue
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError("a command is a JSON object")
            except ValueError as exc:
                self.emit("error", type="BadCommand", message=str(exc))
                continue
            self._spawn(self._handle(cmd))
        self.stopping.set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("cmd")
        try:
            await self._dispatch(str(name), cmd)
        except QuicmeshError as exc:
            self.emit("error", cmd=name, id=cmd.get("id"), type=type(exc).__name__, message=str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            self.emit("error", cmd=name, id=cmd.get("id"), type="BadCommand", message=f"{type(exc).__name__}: {exc}")

    async def _dispatch(self, name: str, cmd: dict[str, Any]) -> None:
        node = self.node
        if name == "subscribe":
            sid = int(cmd.get("id", len(self._subs) + 1))
            sub = await node.subscribe(cmd["pattern"])
            self._subs.set(sid, sub)
            self._counts.set(sid, 0)
            self._spawn(self._pump(sid, sub, bool(cmd.get("quiet", False))))
            self.emit("subscribed", id=sid, pattern=cmd["pattern"])
        elif name == "unsubscribe":
            sid = int(cmd["id"])
            gone = self._subs.pop(sid)
            if gone is not None:
                await gone.close()
            self.emit("unsubscribed", id=sid)
        elif name == "publish":
            await self._publish(cmd)
        elif name == "advertise":
            await node.advertise(cmd["name"], builtin_handler(cmd.get("kind", "echo")))
            self.emit("advertised", name=cmd["name"])
        elif name == "unadvertise":
            await node.unadvertise(cmd["name"])
            self.emit("unadvertised", name=cmd["name"])
        elif name == "call":
            started = time.perf_counter()
            reply = await node.call(cmd["name"], _payload(cmd), timeout=cmd.get("timeout"))
            self.emit("reply", id=cmd.get("id"), ms=round((time.perf_counter() - started) * 1000, 3), **_text(reply))
        elif name == "calls":
            await self._calls(cmd)
        elif name == "connect":
            peer = await node.connect(cmd["address"])
            self.emit("connected", peer=str(peer))
        elif name in ("wait_provider", "wait_subscriber"):
            await self._wait_ready(name, cmd)
        elif name == "await_count":
            sid = int(cmd["id"])
            want = int(cmd["count"])
            event = asyncio.Event()
            self._count_waiters.set(sid, (want, event))
            if (self._counts.peek(sid) or 0) >= want:
                event.set()
            try:
                await asyncio.wait_for(event.wait(), float(cmd.get("timeout", 30)))
            except TimeoutError:
                pass
            finally:
                self._count_waiters.pop(sid)
            first, last = self._times.peek(sid) or (0.0, 0.0)
            self.emit("count_reached", id=sid, count=self._counts.peek(sid) or 0, t_first=first, t_last=last)
        elif name == "echo":
            sub = await node.subscribe(cmd["pattern"])
            self._spawn(self._echo(sub, cmd["to"]))
            self.emit("echoing", pattern=cmd["pattern"], to=cmd["to"])
        elif name == "pingpong":
            await self._pingpong(cmd)
        elif name == "counts":
            self.emit("counts", counts={str(k): v for k, v in self._counts.items()})
        elif name == "health":
            self.emit("health", health=node.health(), peers=[str(p) for p in node.peers()])
        elif name == "stop":
            self.stopping.set()
        else:
            self.emit("error", cmd=name, type="BadCommand", message=f"unknown command {name!r}")

    async def _wait_ready(self, name: str, cmd: dict[str, Any]) -> None:
        """Wait until a connected peer provides ``name`` / subscribes to ``topic``."""
        timeout = float(cmd.get("timeout", 10))
        if name == "wait_provider":
            what = cmd["name"]
            await self.node.wait_for_provider(what, timeout)
        else:
            what = cmd["topic"]
            await self.node.wait_for_subscriber(what, timeout)
        self.emit("ready", what=what)

    async def _pump(self, sid: int, sub: Subscription, quiet: bool) -> None:
        msg: Message
        async for msg in sub:
            count = (self._counts.peek(sid) or 0) + 1
            self._counts.set(sid, count)
            now = time.time()
            first = self._times.peek(sid)
            self._times.set(sid, (first[0] if first else now, now))
            waiter = self._count_waiters.peek(sid)
            if waiter is not None and count >= waiter[0]:
                waiter[1].set()
            if not quiet:
                self.emit("message", id=sid, topic=msg.topic, sender=str(msg.sender), seq=msg.seq, **_text(msg.payload))

    async def _echo(self, sub: Subscription, to: str) -> None:
        async for msg in sub:
            await self.node.publish(to, msg.payload)

    async def _pingpong(self, cmd: dict[str, Any]) -> None:
        count = int(cmd.get("count", 100))
        rate = float(cmd.get("rate", 100))
        sub = await self.node.subscribe(cmd["reply"])
        rtts: list[float] = []
        lost = 0
        try:
            for i in range(count):
                t0 = time.perf_counter()
                await self.node.publish(cmd["topic"], b"%d" % i)
                try:
                    async with asyncio.timeout(2.0):
                        while True:
                            m = await sub.get()
                            if m.payload == b"%d" % i:
                                break
                    rtts.append(time.perf_counter() - t0)
                except TimeoutError:
                    lost += 1
                await asyncio.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - t0)))
        finally:
            await sub.close()
        rtts.sort()

        def pct(p: float) -> float | None:
            return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1e6, 1) if rtts else None

        self.emit("pingpong_done", count=count, lost=lost, p50_us=pct(0.5), p99_us=pct(0.99))

    async def _publish(self, cmd: dict[str, Any]) -> None:
        count = int(cmd.get("count", 1))
        rate = float(cmd.get("rate", 0) or 0)
        base = _payload(cmd)
        topic = cmd["topic"]
        loop = asyncio.get_running_loop()
        start = loop.time()
        wall_start = time.time()
        for i in range(count):
            payload = base if count == 1 else base + b"#%d" % i
            await self.node.publish(topic, payload)
            if rate > 0:
                due = start + (i + 1) / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 256 == 255:
                await asyncio.sleep(0)
        self.emit("published", topic=topic, count=count, seconds=round(loop.time() - start, 4), t_start=wall_start,
                  dropped_sends=self.node.dropped_sends)

    async def _calls(self, cmd: dict[str, Any]) -> None:
        count = int(cmd.get("count", 1))
        concurrency = max(1, int(cmd.get("concurrency", 1)))
        timeout = cmd.get("timeout")
        payload = _payload(cmd)
        outcomes: dict[str, int] = {}
        latencies: list[float] = []
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                try:
                    await self.node.call(cmd["name"], payload, timeout=timeout)
                    key = "ok"
                    latencies.append(time.perf_counter() - t0)
                except QuicmeshError as exc:
                    key = type(exc).__name__
                outcomes[key] = outcomes.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
        elapsed = time.perf_counter() - t0
        latencies.sort()

        def pct(p: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3) if latencies else None

        self.emit("calls_done", name=cmd["name"], outcomes=outcomes, seconds=round(elapsed, 4),
                  p50_ms=pct(0.5), p99_ms=pct(0.99), pending=self.node.pending_calls)
