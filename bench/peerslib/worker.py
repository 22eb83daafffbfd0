"""The worker process: one system's server or client side, driven over a pipe by bench/peers.py.

Commands (a dict with ``cmd``; the answer is a dict, ``{"error": ...}`` on failure). Every loop
is bounded by a message or cycle count and by time:

* ``open {address}``: start the system's side (server: listen; client: connect to ``address``).
* ``count_start {topic}`` / ``count_status`` / ``count_wait {expected, idle, limit}``: count
  data messages (first byte ``D``) on a topic; probes (``P``) only mark the subscription live.
* ``prepare {topic}``: what a user calls before publishing (quicmesh: ``wait_for_subscriber``).
* ``probe {topic}``: publish one probe. ``blast {topic, size, seconds, max_count}``: publish as
  fast as the system lets a publisher (its own back-pressure), for ``seconds``.
* ``echo {ping, pong}`` and ``pingpong {ping, pong, seconds, max_count}``: round trips.
* ``serve {name}`` and ``rpc {name, seconds, concurrency, max_count}``: echo procedure, calls.
* ``light {address, topic, seconds, max_cycles}``: light-client cycles against the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .adapters import ADAPTERS, Adapter

WARMUP_LIMIT = 20.0
"""Seconds a warm-up (first round trip, first successful call) may take."""


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


class _Count:
    def __init__(self) -> None:
        self.count = 0
        self.t_last = 0.0
        self.probe = False
        self.handle: Any = None

    def on_msg(self, payload: bytes) -> None:
        if payload[:1] == b"D":
            self.count += 1
            self.t_last = time.perf_counter()
        else:
            self.probe = True


class Worker:
    def __init__(self, system: str, role: str, conn: Any) -> None:
        self.adapter: Adapter = ADAPTERS[system]()
        self.role = role
        self.conn = conn
        self.counts: dict[str, _Count] = {}  # bounded: one per pub/sub run

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            cmd: dict[str, Any] = await loop.run_in_executor(None, self.conn.recv)
            name = cmd.pop("cmd")
            if name == "stop":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.adapter.close(), 10)
                self.conn.send({"ok": True})
                return
            try:
                res = await getattr(self, f"do_{name}")(**cmd)
            except Exception as exc:
                res = {"error": f"{type(exc).__name__}: {exc}"}
            self.conn.send(res)

    async def do_open(self, address: str | None = None) -> dict[str, Any]:
        return {"address": await self.adapter.open(self.role, address), "pid": os.getpid(),
                "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                "busy_poll": getattr(getattr(self.adapter, "node", None), "busy_poll", None) is not None}

    async def do_count_start(self, topic: str) -> dict[str, Any]:
        c = self.counts[topic] = _Count()
        c.handle = await self.adapter.subscribe(topic, c.on_msg)
        return {}

    async def do_count_status(self, topic: str) -> dict[str, Any]:
        c = self.counts[topic]
        return {"probe": c.probe, "count": c.count}

    async def do_count_wait(self, topic: str, expected: int, idle: float, limit: float) -> dict[str, Any]:
        c = self.counts.pop(topic)
        end = time.monotonic() + limit
        last, last_change = c.count, time.monotonic()
        while c.count < expected and time.monotonic() < end:
            await asyncio.sleep(0.005)
            if c.count != last:
                last, last_change = c.count, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
        dropped = await self.adapter.unsubscribe(c.handle)
        return {"count": c.count, "t_last": c.t_last, "subscriber_dropped": dropped}

    async def do_prepare(self, topic: str) -> dict[str, Any]:
        await self.adapter.prepare_publish(topic, WARMUP_LIMIT)
        return {}

    async def do_probe(self, topic: str) -> dict[str, Any]:
        await self.adapter.publish(topic, b"P")
        await self.adapter.pause()
        return {}

    async def do_blast(self, topic: str, size: int, seconds: float, max_count: int) -> dict[str, Any]:
        payload = b"D" + bytes(size - 1)
        publish, pause = self.adapter.publish, self.adapter.pause
        sent = 0
        t_start = time.perf_counter()
        deadline = t_start + seconds
        while sent < max_count and time.perf_counter() < deadline:
            for _ in range(256):
                await publish(topic, payload)
            sent += 256
            await pause()
        return {"sent": sent, "t_start": t_start, "t_end": time.perf_counter()}

    async def do_echo(self, ping: str, pong: str) -> dict[str, Any]:
        await self.adapter.echo(ping, pong)
        return {}

    async def do_serve(self, name: str) -> dict[str, Any]:
        await self.adapter.serve(name)
        return {}

    async def do_pingpong(self, ping: str, pong: str, seconds: float, max_count: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        waiting: dict[bytes, asyncio.Future[None]] = {}  # bounded: one ping in flight

        def wake(key: bytes) -> None:
            fut = waiting.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

        if self.adapter.threaded_callbacks:
            def on_pong(payload: bytes) -> None:
                loop.call_soon_threadsafe(wake, payload)
        else:
            on_pong = wake
        handle = await self.adapter.subscribe(pong, on_pong)
        seq = 0

        async def one(timeout: float) -> float | None:
            nonlocal seq
            seq += 1
            key = b"D%d" % seq
            fut = waiting[key] = loop.create_future()
            t0 = time.perf_counter()
            await self.adapter.publish(ping, key)
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                waiting.pop(key, None)
                return None
            return time.perf_counter() - t0

        try:
            end = time.monotonic() + WARMUP_LIMIT
            while await one(0.25) is None:  # the swarm / interest is set up
                if time.monotonic() > end:
                    return {"error": "no pong within the warm-up"}
            for _ in range(20):
                await one(2.0)
            lat: list[float] = []
            lost = 0
            deadline = time.perf_counter() + seconds
            while len(lat) + lost < max_count and time.perf_counter() < deadline:
                r = await one(2.0)
                if r is None:
                    lost += 1
                else:
                    lat.append(r)
        finally:
            await self.adapter.unsubscribe(handle)
        return {"count": len(lat), "lost": lost, "p50_us": _pct(lat, 0.5) * 1e6, "p99_us": _pct(lat, 0.99) * 1e6}

    async def do_rpc(self, name: str, seconds: float, concurrency: int, max_count: int) -> dict[str, Any]:
        payload = b"D" + bytes(63)
        end = time.monotonic() + WARMUP_LIMIT
        while True:  # a provider is known, a call went through
            try:
                await self.adapter.request(name, payload, 2.0)
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.05)
        lat: list[float] = []
        errors: dict[str, int] = {}
        issued = 0
        request, blocking = self.adapter.request, self.adapter.request_blocking
        t0 = time.perf_counter()
        deadline = t0 + seconds

        async def caller() -> None:
            nonlocal issued
            while issued < max_count and time.perf_counter() < deadline:
                issued += 1
                ts = time.perf_counter()
                try:
                    await request(name, payload, 10.0)
                    lat.append(time.perf_counter() - ts)
                except Exception as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        def thread_caller() -> None:  # the same loop, for a synchronous API
            nonlocal issued
            assert blocking is not None
            while issued < max_count and time.perf_counter() < deadline:
                issued += 1
                ts = time.perf_counter()
                try:
                    blocking(name, payload, 10.0)
                    lat.append(time.perf_counter() - ts)
                except Exception as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        if blocking is None:
            await asyncio.gather(*(caller() for _ in range(concurrency)))
        else:
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(concurrency) as pool:
                await asyncio.gather(*(loop.run_in_executor(pool, thread_caller) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        return {"calls_per_s": len(lat) / elapsed, "ok": len(lat), "errors": errors,
                "p50_ms": _pct(lat, 0.5) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3}

    async def do_light(self, address: str, topic: str, seconds: float, max_cycles: int) -> dict[str, Any]:
        ends: list[float] = []
        errors: dict[str, int] = {}
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while len(ends) + sum(errors.values()) < max_cycles and time.perf_counter() < deadline:
            try:
                await asyncio.wait_for(self.adapter.light_cycle(address, topic, 5.0), 15)
                ends.append(time.perf_counter())
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        elapsed = time.perf_counter() - t0
        took = [b - a for a, b in zip([t0, *ends], ends, strict=False)]  # each cycle's duration
        return {"cycles_per_s": len(ends) / elapsed, "cycles": len(ends), "errors": errors, "t_start": t0,
                "ends": ends, "cycle_ms_p50": _pct(took, 0.5) * 1e3 if took else None,
                "cycle_ms_p99": _pct(took, 0.99) * 1e3 if took else None,
                "cycle_ms_max": max(took) * 1e3 if took else None}


def worker_main(system: str, role: str, loop_kind: str, conn: Any) -> None:
    """Process entry (multiprocessing, spawn)."""
    factory = None
    if loop_kind == "uvloop":  # a loop factory, not an event-loop policy (deprecated from Python 3.14)
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(Worker(system, role, conn).run())
