"""Plain lab nodes (#12, "started with the command line a user would type"), driven and observed
only from outside the node process, over HTTP.

- :class:`PlainNode`: one ``quicmesh node --listen ADDR:PORT --realm lab --key FILE --data-dir DIR
  --http 127.0.0.1:9100 --http-api 127.0.0.1:9100 [--advertise NAME=KIND] [--bootstrap ...]``
  process in a lab host's namespace (never ``--control``): start, SIGKILL, SIGSTOP / SIGCONT,
  restart with the same key, store, address and flags. Its stderr goes to a file in the lab's
  directory (:meth:`PlainNode.log_tail` for failure messages).
- :class:`Agent`: one HTTP client process per host, ``ip netns exec NS python tests/plainkit.py
  http://127.0.0.1:9100``, made of the standard library and aiohttp only (it imports nothing of
  quicmesh: it is a user's program, like curl). It reads one JSON command per line on stdin and
  prints one JSON line per answer or streamed event (``id`` names the command):

  ======  ==================================================================================
  req     ``{method, path, body, timeout}``: one request; ``{status, body, seconds}``
          (``status`` null and ``error`` set when no answer came, e.g. the node is down)
  sub     ``{pattern}``: ``GET /v1/subscribe/{pattern}`` (Server-Sent Events); a
          ``subscribed`` event, then one ``message`` event per delivery (``topic``,
          ``sender``, ``seq``, ``payload``), a ``closed`` event when the stream ends
  pub     ``{topic, prefix, count, rate}``: ``count`` ``POST /v1/publish/{topic}`` one after
          another (payload ``PREFIX#i``) at most ``rate`` per second; one ``published``
          answer with ``ok``, ``failed`` and ``seconds``
  write   ``{map, prefix, rate, seconds, timeout}``: ``PUT /v1/kv/{map}/PREFIX-k`` (value
          the key) for k = 1, 2, ..., one at a time: an ``ack`` (200) or ``unknown`` (anything
          else, or no answer) event per key, ``done`` when stopped or after ``seconds``
  read    ``{map, keys}``: ``GET /v1/kv/{map}/{key}`` of each key; one ``values`` answer,
          key -> value (null: 404 KeyNotFound), and the keys that got no answer in ``failed``
  watch   ``{peer, seconds}``: ``GET /health`` every 50 ms: a ``ready`` event (``held``:
          ``peer`` among its connections; ``lhm``: the local health multiplier), then
          ``dropped`` once ``peer`` is gone (``at``: when that answer came, ``sent``: when it
          was asked, both CLOCK_MONOTONIC, the same in every process of the machine;
          ``failures``; ``lhm``: the highest multiplier read since the start), or ``timeout``
  stop    ``{target}``: end the ``write``, ``sub`` or ``watch`` command ``target``
  ======  ==================================================================================

- :class:`PlainLab`: a lab of plain nodes on two LANs joined by a router (like
  ``labkit.mesh``), the event loop the module's tests share, and the overlay check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from quicmesh.testing.lab import Host, Lab

__all__ = ["HTTP", "PORT", "Agent", "PlainLab", "PlainNode", "Stream"]

PORT = 7000
HTTP = "127.0.0.1:9100"
"""``--http`` and ``--http-api`` of every plain node: one server on the host's loopback."""
_SCRIPT = str(Path(__file__).resolve())

T = TypeVar("T")
Doc = dict[str, Any]


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# -- the agent: an HTTP client in a host's namespace (runs as a script) -------------------------------


def _emit(doc: Doc) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _request(http: Any, method: str, path: str, body: bytes | None, timeout: float) -> Doc:
    import aiohttp

    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with http.request(method, path, data=body) as resp:
                data: bytes = await resp.read()
                status: int = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return {"status": None, "error": type(exc).__name__, "seconds": time.monotonic() - t0}
    return {"status": status, "body": data.decode("utf-8", "replace"), "seconds": time.monotonic() - t0}


async def _sub(http: Any, cid: int, cmd: Doc) -> None:
    """One subscription stream, until it ends or the job is cancelled (``stop``)."""
    import aiohttp

    path = f"/v1/subscribe/{_q(cmd['pattern'])}"
    why = "ended"
    try:
        async with http.get(path, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
            if resp.status != 200:
                why = f"status {resp.status}"
                return
            event, data = "", ""
            async for raw in resp.content:  # bounded: ends with the stream or on stop
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                elif not line and event:
                    doc = json.loads(data) if data else {}
                    doc.pop("payload_b64", None)
                    _emit({"id": cid, **doc, "event": event})
                    event, data = "", ""
    except asyncio.CancelledError:
        why = "stopped"
        raise
    except (aiohttp.ClientError, OSError) as exc:
        why = type(exc).__name__
    finally:
        _emit({"id": cid, "event": "closed", "why": why})


async def _watch(http: Any, cid: int, cmd: Doc) -> None:
    """Reads ``/health`` every 50 ms (one kept-alive connection) for ``seconds`` at most: a
    ``ready`` event at the first answer, then a ``dropped`` event once ``peer`` is first seen
    gone (see the module docstring)."""
    peer, end = cmd["peer"], time.monotonic() + float(cmd["seconds"])
    ready = False
    lhm = 0
    suspected_at: float | None = None
    while time.monotonic() < end:  # bounded: seconds
        sent = time.monotonic()
        r = await _request(http, "GET", "/health", None, 2.0)
        if r["status"] == 200:
            doc = json.loads(r["body"])
            fd = doc["failure_detection"]
            peers = {p["peer"] for p in doc["relay"]["peers"]}
            lhm = max(lhm, int(fd["health"]))
            if ready and suspected_at is None and int(fd["suspected"]) > 0:
                suspected_at = time.monotonic()
            if not ready:
                _emit({"id": cid, "event": "ready", "held": peer in peers, "lhm": lhm})
                ready = True
            if peer not in peers:
                _emit({"id": cid, "event": "dropped", "at": time.monotonic(), "sent": sent,
                       "failures": fd["failures"], "lhm": lhm, "suspected_at": suspected_at})
                return
        await asyncio.sleep(0.05)  # the polling period
    _emit({"id": cid, "event": "timeout"})


async def _pub(http: Any, cid: int, cmd: Doc) -> None:
    path = f"/v1/publish/{_q(cmd['topic'])}"
    count, rate = int(cmd["count"]), float(cmd.get("rate", 0) or 0)
    ok = failed = 0
    errors: list[str] = []
    t0 = time.monotonic()
    for i in range(count):  # bounded: count requests
        r = await _request(http, "POST", path, f"{cmd['prefix']}#{i}".encode(), 10.0)
        if r["status"] == 200:
            ok += 1
        else:
            failed += 1
            if len(errors) < 5:
                errors.append(f"{r['status']} {r.get('error') or r.get('body', '')[:200]}")
        if rate > 0:
            delay = t0 + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing a load loop, not a wait for a condition
    _emit({"id": cid, "event": "published", "ok": ok, "failed": failed, "errors": errors,
           "seconds": time.monotonic() - t0})


async def _write(http: Any, cid: int, cmd: Doc, stop: asyncio.Event) -> None:
    m, prefix, rate = _q(cmd["map"]), cmd["prefix"], float(cmd["rate"])
    end = time.monotonic() + float(cmd["seconds"])
    for k in itertools.count(1):  # bounded: until stopped or ``seconds`` passed
        if stop.is_set() or time.monotonic() > end:
            break
        key = f"{prefix}-{k}"
        t0 = time.monotonic()
        r = await _request(http, "PUT", f"/v1/kv/{m}/{_q(key)}", key.encode(), float(cmd["timeout"]))
        acked = r["status"] == 200
        _emit({"id": cid, "event": "ack" if acked else "unknown", "key": key, "status": r["status"],
               "error": r.get("error") or ("" if acked else r.get("body", "")[:200])})
        pause = 1 / rate - (time.monotonic() - t0) if acked else 0.2  # the node may be down: a short back-off
        if pause > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):  # pacing, cut short by stop
                    await stop.wait()
    _emit({"id": cid, "event": "done"})


async def _read(http: Any, cid: int, cmd: Doc) -> None:
    m = _q(cmd["map"])
    values: dict[str, str | None] = {}
    failed: list[str] = []
    gate = asyncio.Semaphore(8)

    async def one(key: str) -> None:
        async with gate:
            for _ in range(3):  # bounded: three tries of an idempotent read
                r = await _request(http, "GET", f"/v1/kv/{m}/{_q(key)}", None, 5.0)
                if r["status"] == 200:
                    values[key] = r["body"]
                    return
                if r["status"] == 404 and "KeyNotFound" in r["body"]:
                    values[key] = None
                    return
            failed.append(key)

    await asyncio.gather(*(one(k) for k in cmd["keys"]))
    _emit({"id": cid, "event": "values", "values": values, "failed": failed})


async def _job(http: Any, cmd: Doc, stop: asyncio.Event) -> None:
    cid, op = int(cmd["id"]), cmd["op"]
    try:
        if op == "req":
            body = cmd.get("body")
            r = await _request(http, cmd["method"], cmd["path"], None if body is None else body.encode(),
                               float(cmd.get("timeout", 5)))
            _emit({"id": cid, **r})
        elif op == "sub":
            await _sub(http, cid, cmd)
        elif op == "watch":
            await _watch(http, cid, cmd)
        elif op == "pub":
            await _pub(http, cid, cmd)
        elif op == "write":
            await _write(http, cid, cmd, stop)
        elif op == "read":
            await _read(http, cid, cmd)
        else:
            _emit({"id": cid, "event": "error", "error": f"unknown op {op!r}"})
    except Exception as exc:  # reported to the test, which fails on it
        _emit({"id": cid, "event": "error", "error": repr(exc)})


def _forget(jobs: dict[int, Any], cid: int, _task: object) -> None:
    jobs.pop(cid, None)


async def _agent(base: str) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    jobs: dict[int, tuple[str, asyncio.Task[None], asyncio.Event]] = {}  # bounded: commands running now
    async with aiohttp.ClientSession(base) as http:
        _emit({"id": 0, "event": "started"})
        while line := await reader.readline():  # bounded: ends when the test closes stdin
            cmd = json.loads(line)
            cid = int(cmd["id"])
            if cmd["op"] == "stop":
                job = jobs.get(int(cmd["target"]))
                if job is not None:
                    job[2].set()  # a writer ends after its current write
                    if job[0] in ("sub", "watch"):
                        job[1].cancel()
                continue
            stop = asyncio.Event()
            task = asyncio.ensure_future(_job(http, cmd, stop))
            jobs[cid] = (cmd["op"], task, stop)
            task.add_done_callback(functools.partial(_forget, jobs, cid))
        running = [task for _op, task, _stop in jobs.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


# -- the test's side -------------------------------------------------------------------------------


class Stream:
    """The events of one streamed agent command (``sub``, ``write``, ``watch``)."""

    def __init__(self, agent: Agent, cid: int) -> None:
        self.agent = agent
        self.id = cid
        self.events: asyncio.Queue[Doc] = asyncio.Queue()  # bounded: one test's deliveries

    async def next(self, timeout: float) -> Doc | None:
        """The next event (one queued already even when ``timeout`` is 0), or None after
        ``timeout`` seconds without one."""
        if not self.events.empty():
            return self.events.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            return None

    def drain(self) -> list[Doc]:
        """The events queued now."""
        out: list[Doc] = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out

    def stop(self) -> None:
        """End the command (a ``closed`` / ``done`` event follows)."""
        self.agent.send({"op": "stop", "target": self.id})


class Agent:
    """The test's end of one host's HTTP client process (see the module docstring)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Doc]] = {}  # bounded: requests in flight
        self._streams: dict[int, Stream] = {}  # bounded: the streams of one test module
        self._started: asyncio.Future[Doc] = asyncio.get_running_loop().create_future()
        self._replies[0] = self._started
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, host: Host, log: IO[bytes], timeout: float = 60.0) -> Agent:
        """Start the client in ``host``'s namespace and wait (bounded) until it is ready: a
        Python process importing aiohttp takes a while on a loaded machine."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", host.ns, sys.executable, _SCRIPT, f"http://{HTTP}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, limit=1 << 24,
        )  # ours, ended by pid in close()
        agent = cls(host.name, proc)
        try:
            await asyncio.wait_for(asyncio.shield(agent._started), timeout)
        except BaseException:
            await agent.close()
            raise
        return agent

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            async for line in self.proc.stdout:  # bounded: ends with the process
                doc: Doc = json.loads(line)
                cid = int(doc["id"])
                fut = self._replies.pop(cid, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(doc)
                elif cid in self._streams:
                    self._streams[cid].events.put_nowait(doc)
        finally:
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(f"the HTTP client in {self.name} ended"))
            self._replies.clear()

    def send(self, cmd: Doc) -> int:
        cid = int(cmd.get("id") or next(self._ids))
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({**cmd, "id": cid}) + "\n").encode())
        return cid

    async def ask(self, op: str, wait: float, **kw: Any) -> Doc:
        """One command answered by one line, awaited at most ``wait`` seconds."""
        cid = next(self._ids)
        fut: asyncio.Future[Doc] = asyncio.get_running_loop().create_future()
        self._replies[cid] = fut
        self.send({"op": op, "id": cid, **kw})
        try:
            return await asyncio.wait_for(fut, wait)
        finally:
            self._replies.pop(cid, None)

    def open(self, op: str, **kw: Any) -> Stream:
        """A streamed command (``sub``, ``write``, ``watch``)."""
        cid = next(self._ids)
        stream = self._streams[cid] = Stream(self, cid)
        self.send({"op": op, "id": cid, **kw})
        return stream

    async def request(self, method: str, path: str, body: str | None = None, timeout: float = 5.0) -> Doc:
        return await self.ask("req", timeout + 5, method=method, path=path, body=body, timeout=timeout)

    async def health(self) -> Doc | None:
        """The node's ``/health``, None when it does not answer (within 3 s)."""
        try:
            r = await self.request("GET", "/health", timeout=3.0)
        except TimeoutError:  # the client itself is starved of CPU: the same as no answer
            return None
        if r["status"] != 200:
            return None
        doc: Doc = json.loads(r["body"])
        return doc

    async def publish(self, topic: str, payload: str) -> int | None:
        status: int | None = (await self.request("POST", f"/v1/publish/{_q(topic)}", payload))["status"]
        return status

    async def call(self, name: str, payload: str, timeout: float) -> tuple[str, float]:
        """``POST /v1/call/{name}?timeout=T``: (``reply`` or the error name, seconds). The client
        waits 3x the deadline at most: a call still open then is a ``hang``."""
        r = await self.request("POST", f"/v1/call/{_q(name)}?timeout={timeout:g}", payload, timeout=3 * timeout)
        if r["status"] == 200:
            return "reply", float(r["seconds"])
        if r["status"] is None:
            return ("hang" if r["error"] == "TimeoutError" else str(r["error"])), float(r["seconds"])
        try:
            return str(json.loads(r["body"])["error"]), float(r["seconds"])
        except (ValueError, KeyError):
            return f"HTTP {r['status']}", float(r["seconds"])

    async def close(self) -> None:
        """Close its stdin (it ends), then kill it by pid if it lingers."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 5)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


class PlainNode:
    """A ``quicmesh node`` as a user types it, in one lab host, with the HTTP client beside it."""

    def __init__(self, lab: Lab, host: Host, name: str, extra: Sequence[str] = ()) -> None:
        self.lab = lab
        self.host = host
        self.name = name
        self.extra = tuple(extra)
        self.key = lab.dir / f"{name}.key"
        self.data = lab.dir / name
        self.log_path = lab.dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.agent: Agent | None = None
        self.node_id = ""
        self.starts = 0

    @property
    def address(self) -> str:
        return f"{self.host.address}:{PORT}"

    @property
    def client(self) -> Agent:
        assert self.agent is not None
        return self.agent

    def argv(self, bootstrap: Sequence[str]) -> list[str]:
        """The command line (after ``ip netns exec NS``): what a user types on that host."""
        args = [sys.executable, "-m", "quicmesh", "node", "--listen", self.address, "--realm", "lab",
                "--key", str(self.key), "--data-dir", str(self.data), "--http", HTTP, "--http-api", HTTP,
                *self.extra]
        for b in bootstrap:
            args += ["--bootstrap", b]
        return args

    async def start(self, bootstrap: Sequence[str] = (), timeout: float = 60.0) -> None:
        """Start the node and wait (bounded) until its ``/health`` answers (a node takes ~1.2 s
        of CPU to start; seven start at once in :meth:`PlainLab.mesh`, on a shared machine)."""
        with self.log_path.open("ab") as log:
            if self.agent is None:
                self.agent = await Agent.start(self.host, log)
            self.proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.host.ns, *self.argv(bootstrap),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )  # ours, by pid (``ip netns exec`` execs the node in place)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:  # bounded: timeout
            doc = await self.client.health()
            if doc is not None:
                self.node_id = str(doc["node_id"])
                return
            assert self.proc.returncode is None, f"{self.name} exited {self.proc.returncode}: {self.log_tail()}"
            assert time.monotonic() < deadline, f"{self.name}: no /health within {timeout:g} s: {self.log_tail()}"
            await asyncio.sleep(0.2)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no close reaches anyone."""
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP (a hung host)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        self._signal(signal.SIGCONT)

    async def wait_dead(self) -> None:
        if self.proc is not None:
            await asyncio.wait_for(self.proc.wait(), 10)

    async def restart(self, bootstrap: Sequence[str]) -> None:
        """Kill, then start again with the same key, store, address and flags."""
        self.kill()
        await self.wait_dead()
        await self.start(bootstrap)

    async def peers(self) -> set[str] | None:
        """The node ids it holds a connection to (``/health``), None when it does not answer."""
        doc = await self.client.health()
        return None if doc is None else {p["peer"] for p in doc["relay"]["peers"]}

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def close(self) -> None:
        self.kill()
        with contextlib.suppress(TimeoutError):
            await self.wait_dead()
        if self.agent is not None:
            await self.agent.close()


class PlainLab:
    """Plain nodes in a lab, with the event loop the tests of a module share."""

    def __init__(self, lab: Lab, runner: asyncio.Runner) -> None:
        self.lab = lab
        self.runner = runner
        self.nodes: list[PlainNode] = []  # bounded: the lab's hosts

    def run(self, coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        return self.runner.run(wrap())

    async def mesh(self, n: int, extra: dict[int, Sequence[str]] | None = None) -> list[PlainNode]:
        """``n`` nodes on two LANs (alternating) joined by a router, all bootstrapped through the
        first, each with at least two peers (bounded: 60 s)."""
        self.lab.add_lan("a")
        self.lab.add_lan("b")
        hosts = [self.lab.add_host(f"h{i}", "a" if i % 2 == 0 else "b") for i in range(n)]
        self.lab.add_router("r", ["a", "b"])
        self.nodes = [PlainNode(self.lab, h, f"n{i}", (extra or {}).get(i, ())) for i, h in enumerate(hosts)]
        await self.nodes[0].start()
        await asyncio.gather(*(node.start([self.nodes[0].address]) for node in self.nodes[1:]))
        await self.wait_peers(2, 60)
        return self.nodes

    async def wait_peers(self, want: int, limit: float) -> None:
        deadline = time.monotonic() + limit
        while True:  # bounded: limit
            got = await asyncio.gather(*(node.peers() for node in self.nodes))
            if all(p is not None and len(p) >= want for p in got):
                return
            assert time.monotonic() < deadline, (
                f"not every node has {want} peers within {limit:g} s: {[None if p is None else len(p) for p in got]}")
            await asyncio.sleep(0.5)

    async def one_overlay(self) -> bool:
        """Whether the nodes' connections (from each ``/health``) form one connected graph."""
        ids = {node.node_id for node in self.nodes}
        got = await asyncio.gather(*(node.peers() for node in self.nodes))
        from quicmesh.testing.lab import one_overlay  # here: the agent script imports no quicmesh

        return one_overlay({node.node_id: (p or set()) & ids for node, p in zip(self.nodes, got, strict=True)})

    async def wait_overlay(self, limit: float) -> float:
        """Seconds until :meth:`one_overlay` holds (AssertionError after ``limit``)."""
        t0 = time.monotonic()
        while not await self.one_overlay():  # bounded: limit
            assert time.monotonic() - t0 < limit, f"no single overlay within {limit:g} s"
            await asyncio.sleep(0.25)
        return time.monotonic() - t0

    async def failure_counts(self) -> dict[str, int]:
        """``failure_detection`` ``failures`` + ``suspicions`` + ``refutations`` summed over the nodes."""
        out = {"failures": 0, "suspicions": 0, "refutations": 0}
        for doc in await asyncio.gather(*(node.client.health() for node in self.nodes)):
            assert doc is not None, "a node did not answer /health"
            for k in out:
                out[k] += int(doc["failure_detection"][k])
        return out

    async def close(self) -> None:
        """End every node and client process this lab started, by pid."""
        await asyncio.gather(*(node.close() for node in self.nodes), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(_agent(sys.argv[1]))
