"""A JSON-lines control channel for ``quicmesh node --control``: scripts, the demo, the
benchmarks and the real-process tests drive a node process through its stdin and read events
from its stdout (:class:`~quicmesh.testing.process.NodeProcess` is the other end). The command
line (:mod:`quicmesh.cli.node`) only wires the flag to :class:`ControlChannel`; every command
lives here, with :func:`builtin_handler`, the demo procedures that the channel's ``advertise``
and ``quicmesh node --advertise NAME=KIND`` offer.

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
``gauges``      the node's metric values (``gauges`` event: name -> value, as ``/metrics`` has them)
``await_count`` ``{"id": N, "count": C, "timeout": F}``: a ``count_reached`` event once
                subscription N received C messages, with the wall-clock times of its first
                and last message (benchmarks)
``echo``        ``{"pattern": P, "to": T}``: republish every message matching P to topic T
``pingpong``    ``{"topic": T, "reply": R, "count": N, "rate": F}``: publish N pings to T at F
                per second, wait for each echo on R; a ``pingpong_done`` event with the
                round-trip percentiles
``health``      the node's health snapshot (``health`` event)
``memory``      ``{"gc": bool, "trace": "start"|"stop", "frames": N, "baseline": bool,
                "top": N}``: a ``memory`` event with the process RSS, open fds, asyncio tasks,
                live objects, container sizes, glibc heap figures (``malloc``) and, while
                tracemalloc traces, the traced bytes and the ``top`` allocation sites that
                grew most since the ``baseline`` snapshot (soak runs); ``gc`` (default
                true) collects garbage first, ``trim`` returns free heap pages first
``log_open``    ``{"log": L}``: open a handle on log L (the node replicates L from then on)
``append``      ``{"log": L, "payload": S, "count": N, "rate": R}``: append N entries to this
                node's log L (payload suffixed with ``#i`` when N > 1) at most R per second;
                an ``appended`` event with the first and last seq once all are durable
``log_heads``   ``{"log": L}``: ``log_heads`` event, latest seq per author id stored here
``log_read``    ``{"log": L, "author": ID, "from": S, "limit": N}``: ``log_entries`` event
``kv_open``     ``{"map": M}``: open the replicated map M (``kv_opened``)
``kv_set`` / ``kv_delete``  ``{"map": M, "key": K, "payload": S}`` / ``{"map": M, "key": K}``
``kv_get``      ``{"map": M, "key": K, "until": S, "timeout": F}``: ``kv_value`` event; with
                ``until``, once the value equals S (or at the timeout, with the value then)
``kv_items``    ``{"map": M}``: ``kv_items`` event
``stop``        stop the node and exit 0
==============  ===========================================================================
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from ..bounded import LruMap, Overflow
from ..errors import QuicmeshError, RemoteError
from ..identity import NodeId
from ..observability.process import mallinfo, malloc_trim, open_fds, process_rss
from ..runtime.holepunch import PUNCH_COMMANDS, punch_command
from ..runtime.logs import Log, ReplicatedMap
from ..runtime.node import Message, Node, Subscription

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


_TRACE_FILTERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)
"""Allocation sites left out of ``memory`` snapshots: tracemalloc itself and the import machinery."""


def _trace_stat(stat: tracemalloc.Statistic | tracemalloc.StatisticDiff) -> dict[str, Any]:
    frame = stat.traceback[0]
    out: dict[str, Any] = {"where": f"{frame.filename}:{frame.lineno}", "size": stat.size, "count": stat.count}
    if isinstance(stat, tracemalloc.StatisticDiff):
        out["size_diff"] = stat.size_diff
        out["count_diff"] = stat.count_diff
    return out


_LOG_COMMANDS = frozenset(
    {"log_open", "append", "log_heads", "log_read", "kv_open", "kv_set", "kv_delete", "kv_get", "kv_items"}
)


def _payload(cmd: dict[str, Any]) -> bytes:
    if "payload_b64" in cmd:
        return base64.b64decode(cmd["payload_b64"])
    return str(cmd.get("payload", "")).encode()


def _text(data: bytes) -> dict[str, str]:
    try:
        return {"payload": data.decode()}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(data).decode()}


class _Tally:
    """Messages one control subscription received, and when the first and the last came."""

    __slots__ = ("count", "first", "last", "waiter")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.waiter: tuple[int, asyncio.Event] | None = None
        """An ``await_count`` in progress: the count it waits for and the event to set then."""


class ControlChannel:
    """Reads commands from a stream, runs them against ``node``, writes events to ``out``."""

    def __init__(self, node: Node, out: Callable[[str], None] | None = None) -> None:
        self.node = node
        self._out = out or self._stdout
        self._subs: LruMap[int, Subscription] = LruMap("control.subscriptions", 1000, Overflow.REJECT,
                                                       registry=node.registry)
        self._tallies: LruMap[int, _Tally] = LruMap("control.tallies", 1000, Overflow.REJECT,
                                                   registry=node.registry)
        self._tasks: set[asyncio.Task[Any]] = set()  # bounded: one reader per subscription plus running commands
        self._trace_baseline: tracemalloc.Snapshot | None = None
        self._logs: LruMap[str, Log] = LruMap("control.logs", 1000, Overflow.REJECT, registry=node.registry)
        self._maps: LruMap[str, ReplicatedMap] = LruMap("control.maps", 1000, Overflow.REJECT, registry=node.registry)
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
            self._tallies.set(sid, _Tally())
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
            tally = self._tally(sid)
            tally.waiter = (want, event)
            if tally.count >= want:
                event.set()
            try:
                await asyncio.wait_for(event.wait(), float(cmd.get("timeout", 30)))
            except TimeoutError:
                pass
            finally:
                tally.waiter = None
            watched = self._subs.peek(sid)
            self.emit("count_reached", id=sid, count=tally.count, t_first=tally.first, t_last=tally.last,
                      sub_dropped=watched.dropped if watched is not None else None, inbox_dropped=node.inbox_dropped,
                      delivery_dropped=node.outbox_dropped)
        elif name == "echo":
            sub = await node.subscribe(cmd["pattern"])
            self._spawn(self._echo(sub, cmd["to"]))
            self.emit("echoing", pattern=cmd["pattern"], to=cmd["to"])
        elif name == "pingpong":
            await self._pingpong(cmd)
        elif name == "counts":
            self.emit("counts", counts={str(k): v.count for k, v in self._tallies.items()})
        elif name == "health":
            self.emit("health", health=node.health(), peers=[str(p) for p in node.peers()])
        elif name == "gauges":
            self.emit("gauges", gauges=node.gauges())
        elif name in PUNCH_COMMANDS:  # #13 (punch)
            self.emit(name, id=cmd.get("id"), **await punch_command(node.holepunch, name, cmd))
        elif name == "memory":
            self._memory(cmd)
        elif name in _LOG_COMMANDS:
            await self._log_command(name, cmd)
        elif name == "stop":
            self.stopping.set()
        else:
            self.emit("error", cmd=name, type="BadCommand", message=f"unknown command {name!r}")

    def _log(self, name: str) -> Log:
        handle = self._logs.peek(name)
        if handle is None:
            handle = self.node.log(name)
            self._logs.set(name, handle)
        return handle

    async def _map(self, name: str) -> ReplicatedMap:
        handle = self._maps.peek(name)
        if handle is None:
            handle = await self.node.kv(name)
            self._maps.set(name, handle)
        return handle

    async def _log_command(self, name: str, cmd: dict[str, Any]) -> None:
        """The replicated-log commands (see the module table)."""
        if name == "log_open":
            self._log(cmd["log"])
            self.emit("log_opened", log=cmd["log"])
        elif name == "append":
            log = self._log(cmd["log"])
            count = int(cmd.get("count", 1))
            rate = float(cmd.get("rate", 0) or 0)
            base = _payload(cmd)
            loop = asyncio.get_running_loop()
            start = loop.time()
            first = last = -1
            for i in range(count):
                entry = await log.append(base if count == 1 else base + b"#%d" % i)
                first = entry.seq if first < 0 else first
                last = entry.seq
                if rate > 0:
                    delay = start + (i + 1) / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
            self.emit("appended", log=log.name, count=count, first_seq=first, last_seq=last,
                      seconds=round(loop.time() - start, 4))
        elif name == "log_heads":
            lg = cmd["log"]
            heads = self.node.logs.heads(lg)
            self.emit("log_heads", log=lg, heads={str(a): s for a, s in heads.items()})
        elif name == "log_read":
            log = self._log(cmd["log"])
            author = NodeId.parse(cmd["author"]) if cmd.get("author") else None
            entries = await log.read(author, int(cmd.get("from", 0)), int(cmd.get("limit", 256)))
            self.emit("log_entries", log=log.name, entries=[{"seq": e.seq, **_text(e.payload)} for e in entries])
        elif name == "kv_open":
            await self._map(cmd["map"])
            self.emit("kv_opened", map=cmd["map"])
        elif name == "kv_set":
            await (await self._map(cmd["map"])).set(cmd["key"], _payload(cmd))
            self.emit("kv_set", map=cmd["map"], key=cmd["key"])
        elif name == "kv_delete":
            await (await self._map(cmd["map"])).delete(cmd["key"])
            self.emit("kv_deleted", map=cmd["map"], key=cmd["key"])
        elif name == "kv_get":
            kv = await self._map(cmd["map"])
            value = await kv.get(cmd["key"])
            if "until" in cmd:
                want = str(cmd["until"]).encode()
                watch = kv.watch()
                try:
                    async with asyncio.timeout(float(cmd.get("timeout", 10))):
                        while (value := await kv.get(cmd["key"])) != want:
                            await watch.get()
                except TimeoutError:
                    pass
                finally:
                    await watch.close()
            self.emit("kv_value", map=cmd["map"], key=cmd["key"], found=value is not None,
                      **(_text(value) if value is not None else {}))
        elif name == "kv_items":
            kv = await self._map(cmd["map"])
            self.emit("kv_items", map=cmd["map"], items={k: _text(v).get("payload", "") for k, v in kv.items()})

    def _memory(self, cmd: dict[str, Any]) -> None:
        """The ``memory`` command: process and heap figures for soak runs (see the module table)."""
        trace = cmd.get("trace")
        if trace == "start" and not tracemalloc.is_tracing():
            tracemalloc.start(max(1, int(cmd.get("frames", 1))))
        elif trace == "stop" and tracemalloc.is_tracing():
            tracemalloc.stop()
            self._trace_baseline = None
        elif trace not in (None, "start", "stop"):
            raise ValueError(f"trace must be 'start' or 'stop', not {trace!r}")
        if cmd.get("gc", True):
            gc.collect()
        rss_untrimmed: int | None = None
        if cmd.get("trim"):
            rss_untrimmed = process_rss()
            malloc_trim()
        tracing = tracemalloc.is_tracing()
        top: list[dict[str, Any]] = []
        traced = peak = overhead = 0
        if tracing:
            traced, peak = tracemalloc.get_traced_memory()
            overhead = tracemalloc.get_tracemalloc_memory()
            want_top = max(0, int(cmd.get("top", 0)))
            if cmd.get("baseline") or want_top:
                snap = tracemalloc.take_snapshot().filter_traces(_TRACE_FILTERS)
                if want_top:
                    stats: list[tracemalloc.StatisticDiff] | list[tracemalloc.Statistic]
                    if self._trace_baseline is not None:
                        stats = snap.compare_to(self._trace_baseline, "lineno")
                    else:
                        stats = snap.statistics("lineno")
                    top = [_trace_stat(s) for s in stats[:want_top]]
                if cmd.get("baseline"):
                    self._trace_baseline = snap
        containers: dict[str, int] = {}
        for c in self.node.registry.snapshot():
            containers[c.name] = containers.get(c.name, 0) + c.size
        ts = self.node.transport.stats()
        self.emit(
            "memory",
            rss_bytes=process_rss(),
            open_fds=open_fds(),
            asyncio_tasks=len(asyncio.all_tasks()),
            gc_objects=len(gc.get_objects()),
            connections=ts.connections,
            handshakes_in_progress=ts.handshakes_in_progress,
            containers=containers,
            tracing=tracing,
            traced_bytes=traced,
            traced_peak_bytes=peak,
            tracemalloc_bytes=overhead,
            has_baseline=self._trace_baseline is not None,
            top_growth=top,
            malloc=mallinfo(),
            rss_before_trim_bytes=rss_untrimmed,
        )

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

    def _tally(self, sid: int) -> _Tally:
        tally = self._tallies.peek(sid)
        if tally is None:
            tally = _Tally()
            self._tallies.set(sid, tally)
        return tally

    async def _pump(self, sid: int, sub: Subscription, quiet: bool) -> None:
        msg: Message
        tally = self._tally(sid)
        async for msg in sub:
            tally.count += 1
            tally.last = time.time()
            if not tally.first:
                tally.first = tally.last
            waiter = tally.waiter
            if waiter is not None and tally.count >= waiter[0]:
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
