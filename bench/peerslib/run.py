"""Sessions: one system's processes (a long-lived server side and a client side), the cases run
the same way against each, and the raw qh3 ceiling through bench/quic_raw.py's own processes.

Every process here is started by this module and stopped by its pid (``stop()``), every wait is
bounded (pipe answers, warm-ups, drains), and every load loop runs in the workers, bounded by a
count and by time.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from pathlib import Path
from typing import Any

from .report import BUSY_POLL_US
from .worker import worker_main

MAX_MESSAGES = 20_000_000
MAX_CALLS = 10_000_000
MAX_CYCLES = 100_000
MIN_CHURN_CYCLES = 20
"""Fewer light-client cycles than this give no slope (a few cycles' RSS is noise)."""
ANSWER_SLACK = 60.0
"""Seconds past a case's window the orchestrator waits for a worker's answer before giving up."""


class CaseError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nats_server_path() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None)


class _Proc:
    """A worker process and its pipe."""

    def __init__(self, system: str, role: str, loop_kind: str, env: dict[str, str]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # spawn copies the environment at start
        try:
            self.proc = ctx.Process(target=worker_main, args=(system, role, loop_kind, child), daemon=True)
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()

    def call(self, cmd: str, timeout: float, **args: Any) -> dict[str, Any]:
        self.conn.send({"cmd": cmd, **args})
        if not self.conn.poll(timeout):
            raise CaseError(f"{cmd}: no answer within {timeout:.0f} s")
        res: dict[str, Any] = self.conn.recv()
        if "error" in res:
            raise CaseError(f"{cmd}: {res['error']}")
        return res

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.is_alive():
                self.conn.send({"cmd": "stop"})
                self.conn.poll(10)
        self.proc.join(5)
        if self.proc.is_alive() and self.proc.pid is not None:
            os.kill(self.proc.pid, 9)  # ours, by pid
            self.proc.join(5)


class Session:
    """One column of the table: a system (and event loop) with its two processes."""

    def __init__(self, key: str, system: str, loop_kind: str, window: float) -> None:
        self.key, self.system, self.loop_kind, self.window = key, system, loop_kind, window
        self.server: _Proc | None = None
        self.client: _Proc | None = None
        self.broker: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.long_lived_pid = 0
        self.loop_seen = ""
        self.runs: dict[str, list[dict[str, Any]]] = {}  # bounded: one list per case
        self.rss: list[dict[str, Any]] = []  # bounded: one entry per light-client run
        self.timings: dict[str, float] = {}  # bounded: seconds per case (all runs), incl. set-up

    def start(self) -> None:
        t0 = time.monotonic()
        env = {"PYTHONMALLOC": "malloc"} if self.system == "quicmesh" else {}  # as `quicmesh node` runs
        if self.key == "quicmesh-busy":  # the node's own setting, as a user's environment sets it
            env["QUICMESH_BUSY_POLL_US"] = str(BUSY_POLL_US)
        server_addr: str | None = None
        if self.system == "nats":
            exe = nats_server_path()
            if exe is None:
                raise CaseError("nats-server is not installed")
            port = _free_port()
            self.broker = subprocess.Popen([exe, "-a", "127.0.0.1", "-p", str(port)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            server_addr = f"nats://127.0.0.1:{port}"
            end = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                    break
                if time.monotonic() > end or self.broker.poll() is not None:
                    raise CaseError("nats-server did not start")
                time.sleep(0.05)
        self.server = _Proc(self.system, "server", self.loop_kind, env)
        opened = self.server.call("open", 60, address=server_addr)
        self.address = opened["address"]
        self.loop_seen = str(opened["loop"])  # the event loop the server process really runs
        if opened.get("busy_poll"):  # and whether it busy-polls (quicmesh-busy)
            self.loop_seen += "+busy_poll"
        self.long_lived_pid = self.broker.pid if self.broker is not None else int(opened["pid"])
        self.client = _Proc(self.system, "client", self.loop_kind, env)
        self.client.call("open", 60, address=self.address)
        self.server.call("echo", 30, ping="rt.ping", pong="rt.pong")
        self.client.call("prepare", 30, topic="rt.ping")
        self.server.call("serve", 30, name="rpc.echo")
        self.timings["start"] = time.monotonic() - t0

    def stop(self) -> None:
        for p in (self.client, self.server):
            if p is not None:
                p.stop()
        if self.broker is not None:
            self.broker.terminate()  # ours, by pid (Popen)
            try:
                self.broker.wait(10)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait(5)

    def _add(self, case: str, res: dict[str, Any]) -> None:
        self.runs.setdefault(case, []).append(res)

    def run_all(self, r: int) -> None:
        """One run of every case (run ``r``); a failing case is recorded, the next ones go on."""
        for case, fn in (("pubsub_64B", lambda: self.pubsub(64, r)), ("pubsub_1024B", lambda: self.pubsub(1024, r)),
                         ("rtt", self.rtt), ("rpc_sequential", lambda: self.rpc(1)),
                         ("rpc_64_in_flight", lambda: self.rpc(64)), ("light_client", lambda: self.light(r))):
            t0 = time.monotonic()
            try:
                self._add(case, fn())
                self.timings[case] = self.timings.get(case, 0.0) + time.monotonic() - t0
            except Exception as exc:
                self._add(case, {"error": f"{type(exc).__name__}: {exc}"})
                print(f"  {self.key} {case}: {exc}", file=sys.stderr)

    def pubsub(self, size: int, r: int) -> dict[str, Any]:
        assert self.server and self.client
        topic = f"ps{size}.r{r}"  # a fresh topic (swarm) per run
        self.server.call("count_start", 30, topic=topic)
        self.client.call("prepare", 30, topic=topic)
        end = time.monotonic() + 20
        while not self.server.call("count_status", 10, topic=topic)["probe"]:
            if time.monotonic() > end:
                raise CaseError("subscription not reached within 20 s")
            self.client.call("probe", 10, topic=topic)
            time.sleep(0.05)
        b = self.client.call("blast", self.window + ANSWER_SLACK, topic=topic, size=size, seconds=self.window,
                             max_count=MAX_MESSAGES)
        w = self.server.call("count_wait", 30 + self.window + ANSWER_SLACK, topic=topic, expected=b["sent"],
                             idle=3.0, limit=30.0 + self.window)
        elapsed = max(w["t_last"] - b["t_start"], 1e-9)
        return {"msgs_per_s": w["count"] / elapsed, "sent": b["sent"], "received": w["count"],
                "lost": b["sent"] - w["count"], "subscriber_dropped": w["subscriber_dropped"],
                "publish_s": b["t_end"] - b["t_start"]}

    def rtt(self) -> dict[str, Any]:
        assert self.client
        return self.client.call("pingpong", self.window + ANSWER_SLACK, ping="rt.ping", pong="rt.pong",
                                seconds=self.window, max_count=MAX_CALLS)

    def rpc(self, concurrency: int) -> dict[str, Any]:
        assert self.client
        return self.client.call("rpc", self.window + ANSWER_SLACK, name="rpc.echo", seconds=self.window,
                                concurrency=concurrency, max_count=MAX_CALLS)

    def light(self, r: int) -> dict[str, Any]:
        """Light-client cycles, sampling the long-lived side's RSS meanwhile (the churn slope)."""
        import psutil

        assert self.client
        proc = psutil.Process(self.long_lived_pid)
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set() and len(samples) < 100_000:
                with contextlib.suppress(psutil.Error):
                    samples.append((time.perf_counter(), proc.memory_info().rss))
                done.wait(0.1)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            res = self.client.call("light", self.window + ANSWER_SLACK, address=self.address, topic="lc.t",
                                   seconds=self.window, max_cycles=MAX_CYCLES)
        finally:
            done.set()
            t.join(5)
        ends = res.pop("ends")
        self.rss.append({"run": r, "ends": ends, "samples": samples})
        return res

    def churn(self) -> dict[str, Any]:
        """RSS bytes per light-client cycle of the long-lived side: the least-squares slope of RSS
        over cycles done *within* each light-client run but the first (a warm-up), pooled over
        the runs (each run keeps its own intercept). Between two runs the same process ran the
        other scenarios (floods of millions of messages), so one line through all runs' samples
        would count that growth as the cycles' (it did: 404,571 B/cycle for quicmesh on
        2026-12-03, while 3,000 cycles against an idle node grew its RSS by 1.6 MiB in all)."""
        runs = self.rss[1:] if len(self.rss) > 1 else self.rss
        sxy = sxx = 0.0
        cycles = samples = 0
        rss_start: int | None = None
        rss_end: int | None = None
        for run in runs:
            ends = run["ends"]
            pts = [(float(bisect_right(ends, ts)), float(rss)) for ts, rss in run["samples"]]
            cycles += len(ends)
            if len(pts) < 2:
                continue
            mx = statistics.fmean(x for x, _ in pts)
            my = statistics.fmean(y for _, y in pts)
            sxy += sum((x - mx) * (y - my) for x, y in pts)
            sxx += sum((x - mx) ** 2 for x, _ in pts)
            samples += len(pts)
            rss_start = run["samples"][0][1] if rss_start is None else rss_start
            rss_end = run["samples"][-1][1]
        if cycles < MIN_CHURN_CYCLES or sxx == 0:
            return {"error": "too few cycles for a slope", "cycles": cycles}
        return {"bytes_per_cycle": sxy / sxx, "cycles": cycles, "rss_start": rss_start, "rss_end": rss_end,
                "samples": samples, "runs": len(runs), "fit": "within runs",
                "pid_of": "nats-server" if self.system == "nats" else "server process"}


def raw_qh3_run(window: float) -> dict[str, Any]:
    """One run of bench/quic_raw.py's qh3 server and client (its own processes, its own code)."""
    bench_dir = str(Path(__file__).resolve().parent.parent)
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    import quic_raw

    with tempfile.TemporaryDirectory() as d:
        cert, key = quic_raw._write_cert(d)
        res: dict[str, Any] = quic_raw._run(("qh3",), window, 1, cert, key)["qh3"]["runs"][0]
    return res
