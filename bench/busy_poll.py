"""Latency and CPU of two ``quicmesh node`` processes with and without busy polling (#14, config
``busy_poll_us``).

    python bench/busy_poll.py [--windows 0,250,1000] [--rounds 2] [--count 3000] [--dma-latency]
                              [--json bench/results/busy_poll.json]

Each round starts two node processes per window (``QUICMESH_BUSY_POLL_US``; 0 is off, the
default), the windows taking turns, and measures between them, one operation in flight. A window
written ``W@uvloop`` runs its node processes on uvloop (``QUICMESH_EVENT_LOOP``; the others on
asyncio's loop), so ``--windows 0,1000,0@uvloop,1000@uvloop`` sets the loops side by side:

* ``rpc``: ``--count`` echo calls back to back (the harness's ``calls``, concurrency 1);
* ``rtt``: ``--count`` pub/sub round trips back to back (``pingpong``: publish on one topic,
  the other node echoes on another);
* ``rtt paced``: ``--count`` / 5 round trips at 200 a second (5 ms apart: longer than any window
  here, so each one starts from a sleeping loop; what a sparse request sees);
* ``client rpc``: ``--count`` echo calls from a light client (``quicmesh.Client``, in this
  process, with the same ``busy_poll_us``, on asyncio's loop whatever its gateway's) to a
  procedure of its gateway node.

For each: latency p50 / p99, the CPU both processes spent per operation (their
``/proc/<pid>/stat`` times across the phase), so the latency a window buys is set beside what it
costs, and how often each went to sleep per operation (A, B: its voluntary context switches; for
``client rpc`` the node and this process), and how many busy-poll windows A opened per
operation (a window that closes with nothing come ends in a sleep: while the other end answers
within the window, A opens few and sleeps as few). ``--dma-latency`` (root) adds a ``0+dma`` row:
window 0 while this process holds ``/dev/cpu_dma_latency`` at 0, the operating system's own
alternative (the idle CPU polls instead of halting, for every process on the machine). Medians
over the rounds; JSON with every run. Loopback only; every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairlib import process_pair

from quicmesh.runtime.client import Client
from quicmesh.testing.process import NodeProcess

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _sleeps(pid: int) -> int:
    """Times process ``pid``'s main thread went to sleep (its voluntary context switches)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def _dma_latency_zero() -> Iterator[None]:
    """Hold ``/dev/cpu_dma_latency`` at 0 µs (PM QoS: no CPU idle state with an exit latency)."""
    fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    try:
        os.write(fd, struct.pack("i", 0))
        yield
    finally:
        os.close(fd)  # the request ends with the file


def _spec(label: str) -> tuple[int, str, bool]:
    """``W``, ``W+dma`` or ``W@uvloop`` -> (busy_poll_us, event loop, hold cpu_dma_latency)."""
    window, _, loop = label.partition("@")
    dma = window.endswith("+dma")
    us, loop = int(window.removesuffix("+dma")), loop or "asyncio"
    if us < 0 or loop not in ("asyncio", "uvloop"):
        raise ValueError(label)
    return us, loop, dma


async def _windows(node: NodeProcess) -> float:
    """Busy-poll windows node ``node`` has opened (each one ends in a sleep when nothing comes)."""
    ev = await node.request("gauges", "gauges", wait=30)
    return float(ev["gauges"]["busy_poll_windows_total"])


async def _phases(window: int, count: int, loop: str = "asyncio", *, env: dict[str, str] | None = None,
                  client: bool = True) -> dict[str, dict[str, float]]:
    """The phases between two node processes (``env`` added to theirs); ``client``: the light
    client's calls too. Each: latency, CPU of both per operation, sleeps of each (A, B) per
    operation."""
    env = {"QUICMESH_BUSY_POLL_US": str(window), "QUICMESH_EVENT_LOOP": loop, **(env or {})}
    async with process_pair("busy", env) as (a, b):
        await a.request("advertise", "advertised", name="echo", kind="echo")
        await b.request("wait_provider", "ready", name="echo")
        pids = (a.proc.pid, b.proc.pid)
        out: dict[str, dict[str, float]] = {}
        phases: list[tuple[str, str, dict[str, Any], int]] = [
            ("rpc", "calls", {"name": "echo", "count": count, "concurrency": 1, "timeout": 5}, count),
            ("rtt", "pingpong", {"topic": "rt.ping", "reply": "rt.pong", "count": count, "rate": 1e9}, count),
            ("rtt paced", "pingpong", {"topic": "rt.ping", "reply": "rt.pong", "count": count // 5,
                                       "rate": 200}, count // 5),
        ]
        await b.request("calls", "calls_done", name="echo", count=200, concurrency=1, wait=60)  # warm
        for name, cmd, fields, n in phases:
            windows0 = await _windows(a)
            cpu0, sleeps0 = [_cpu(p) for p in pids], [_sleeps(p) for p in pids]
            t0 = time.perf_counter()
            ev = await b.request(cmd, "calls_done" if cmd == "calls" else "pingpong_done", wait=300, **fields)
            wall = time.perf_counter() - t0
            cpu = sum(_cpu(p) - c for p, c in zip(pids, cpu0, strict=True))
            sleeps = [(_sleeps(p) - z) / n for p, z in zip(pids, sleeps0, strict=True)]
            windows_a = (await _windows(a) - windows0) / n
            if cmd == "calls":
                p50, p99 = float(ev["p50_ms"]) * 1000, float(ev["p99_ms"]) * 1000
            else:
                p50, p99 = float(ev["p50_us"]), float(ev["p99_us"])
            out[name] = {"p50_us": p50, "p99_us": p99, "ops_per_s": n / wall,
                         "cpu_us_per_op": cpu / n * 1e6, "cpu_cores": cpu / wall,
                         "sleeps_a": sleeps[0], "sleeps_b": sleeps[1], "windows_a": windows_a}
        if client:
            out["client rpc"] = await _client_calls(a, window, count)
        return out


async def _client_calls(node: NodeProcess, window: int, count: int) -> dict[str, float]:
    """``count`` sequential calls from a light client in this process (``busy_poll_us`` =
    ``window`` too) to ``echo`` on its gateway node; CPU of this process and the node's."""
    pid = node.proc.pid
    client = await Client.connect(node.address, realm="busy", reconnect=False, busy_poll_us=window)
    try:
        for _ in range(200):  # warm
            await client.call("echo", b"x")
        lat: list[float] = []
        me = os.getpid()
        windows0 = await _windows(node)
        cpu0, own0, t0 = _cpu(pid), time.process_time(), time.perf_counter()
        sleeps0 = (_sleeps(pid), _sleeps(me))
        for _ in range(count):
            t = time.perf_counter()
            await client.call("echo", b"x")
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        cpu = _cpu(pid) - cpu0 + time.process_time() - own0
        sleeps = ((_sleeps(pid) - sleeps0[0]) / count, (_sleeps(me) - sleeps0[1]) / count)
        windows_a = (await _windows(node) - windows0) / count
    finally:
        await client.close()
    lat.sort()
    return {"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6, "ops_per_s": count / wall,
            "cpu_us_per_op": cpu / count * 1e6, "cpu_cores": cpu / wall,
            "sleeps_a": sleeps[0], "sleeps_b": sleeps[1], "windows_a": windows_a}

async def run(windows: list[str], rounds: int, count: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, dict[str, float]]]] = {w: [] for w in windows}
    for r in range(rounds):
        for w in windows:
            print(f"round {r + 1}/{rounds}: busy_poll_us={w}", flush=True)
            window, loop, dma = _spec(w)
            with _dma_latency_zero() if dma else contextlib.nullcontext():
                runs[w].append(await _phases(window, count, loop))
    med = {w: {ph: {k: statistics.median(x[ph][k] for x in rs) for k in rs[0][ph]} for ph in rs[0]}
           for w, rs in runs.items()}
    return {"runs": runs, "medians": med}


def table(med: dict[str, dict[str, dict[str, float]]]) -> str:
    head = (f"{'busy_poll_us':>12} | {'phase':10} | {'p50 µs':>7} | {'p99 µs':>7} | {'ops/s':>7} | "
            f"{'CPU µs/op (both)':>16} | {'cores busy':>10} | {'sleeps/op (A, B)':>16} | {'windows/op (A)':>14}")
    lines = [head, "-" * len(head)]
    for w, phases in med.items():
        for ph, v in phases.items():
            lines.append(f"{w:>12} | {ph:10} | {v['p50_us']:7,.0f} | {v['p99_us']:7,.0f} | {v['ops_per_s']:7,.0f} | "
                         f"{v['cpu_us_per_op']:16,.0f} | {v['cpu_cores']:10.2f} | "
                         f"{v['sleeps_a']:7.2f}, {v['sleeps_b']:6.2f} | {v['windows_a']:14.2f}")
    base = med.get("0")
    if base:
        lines.append("")
        for w, phases in med.items():
            if w == "0":
                continue
            parts = [f"{ph} p50 {v['p50_us'] / base[ph]['p50_us']:.2f}x, "
                     f"CPU/op {v['cpu_us_per_op'] / base[ph]['cpu_us_per_op']:.2f}x" for ph, v in phases.items()]
            lines.append(f"busy_poll_us={w} against 0: " + "; ".join(parts))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", default="0,250,1000",
                   help="comma-separated busy_poll_us values (0: off); W@uvloop: the nodes on uvloop")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--count", type=int, default=3000, help="operations per back-to-back phase (paced: a fifth)")
    p.add_argument("--dma-latency", action="store_true", help="also window 0 with /dev/cpu_dma_latency at 0 (root)")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "busy_poll.json"))
    args = p.parse_args()
    windows = [w.strip() for w in args.windows.split(",") if w.strip()]
    for w in windows:
        try:
            _spec(w)
        except ValueError:
            p.error(f"--windows: {w!r} is not W, W+dma or W@uvloop")
    if args.dma_latency:
        if not os.access("/dev/cpu_dma_latency", os.W_OK):
            p.error("--dma-latency needs write access to /dev/cpu_dma_latency (root)")
        windows.append("0+dma")
    res = asyncio.run(run(windows, args.rounds, args.count))
    print(table(res["medians"]))
    write_json(args, res)


def write_json(args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Write ``res``, with when and how it was made, to ``args.json`` (``wakeups.py`` too)."""
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": " ".join(sys.argv),
           "args": vars(args), **res}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
