"""Admission under load: 1,500 connection attempts against max_connections=1,000, and a
handshake flood against max_incoming_handshakes. Real QUIC handshakes on loopback, one process.

Measured on the 2-core dev machine: ~65 admitted handshakes/s with both ends in this process
(each handshake costs the dialer and the listener), refusals at the first packet cost less.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import TransportConfig
from quicmesh.core.messages import ALL_MESSAGES, Challenge
from quicmesh.core.wire import Codec, Message
from quicmesh.errors import AdmissionRefused, HandshakeTimeout
from quicmesh.identity import KeyPair
from quicmesh.observability.process import mallinfo
from quicmesh.runtime.quic import QuicConnection, QuicTransport
from quicmesh.runtime.transport import Connection

CODEC = Codec(ALL_MESSAGES)
# long keepalive: 1,000 idle connections need not ping during a 30 s test
CLIENT_CFG = TransportConfig(handshake_timeout=20.0, idle_timeout=120.0, keepalive_interval=60.0)
# every dialer is on 127.0.0.1: no per-source cap for the flood rounds
SERVER_CFG = dataclasses.replace(CLIENT_CFG, max_connections=1000, max_incoming_handshakes=256,
                                 max_handshakes_per_source=1000)


class Counter:
    """TransportEvents counting connections; ``until`` waits for a condition on them."""

    def __init__(self) -> None:
        self.connected = 0
        self.lost = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def on_connection(self, conn: Connection) -> None:
        self.connected += 1

    def on_message(self, conn: Connection, message: Message) -> None:
        pass

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        self.lost += 1
        for n, fut in list(self._waiters):
            if self.lost >= n and not fut.done():
                fut.set_result(None)
                self._waiters.remove((n, fut))

    async def until_lost(self, n: int, timeout: float) -> None:
        if self.lost >= n:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        await asyncio.wait_for(fut, timeout)


async def _client(registry: ContainerRegistry) -> QuicTransport:
    t = QuicTransport(KeyPair.generate(), "flood", CLIENT_CFG, CODEC, registry=registry)
    await t.start(Counter())
    return t


async def _flood_round(
    srv: QuicTransport, ev: Counter, addr: str, registry: ContainerRegistry, deadline: float
) -> tuple[int, int]:
    """1,500 attempts in batches; a slot freed mid-flood goes to a well-behaved peer. Returns
    (held, refused). Every client is stopped before returning."""
    attempts, batch = 1500, 100
    clients: list[QuicTransport] = []
    results: list[Connection | BaseException] = []
    lost_before = ev.lost
    good_done = False
    try:
        for start in range(0, attempts, batch):
            assert time.monotonic() < deadline, "flood round exceeded its time budget"
            wave = [await _client(registry) for _ in range(batch)]
            clients += wave
            got = await asyncio.gather(*(c.dial(addr, expected=srv.node_id) for c in wave), return_exceptions=True)
            results += got
            if start >= 1200 and not good_done:
                # mid-flood (full, refusals under way): one peer leaves, a well-behaved one takes the slot
                assert srv.stats().connections == 1000
                leaver = next(c for c, r in zip(clients, results, strict=True) if isinstance(r, QuicConnection))
                await leaver.stop()
                await ev.until_lost(lost_before + 1, 10)
                good = await _client(registry)
                clients.append(good)
                conn = await good.dial(addr, expected=srv.node_id)
                assert not conn.closed
                good_done = True
        refused = [r for r in results if isinstance(r, AdmissionRefused)]
        others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, AdmissionRefused)]
        assert not others, others[:3]
        assert all(r.reason == "max_connections" for r in refused)
        held = srv.stats().connections
        return held, len(refused)
    finally:
        for c in clients:
            await c.stop()


def _memory() -> tuple[int, int]:
    """(bytes held on the heap, RSS) after a GC and a ``malloc_trim``. The interpreter runs with
    ``PYTHONMALLOC=malloc``, so Python's objects are on glibc's heap beside the QUIC library's,
    and ``mallinfo2`` counts exactly what is held (in use in the main heap, plus blocks mapped
    on their own). RSS is reported only: after the trim it still moved by -1.9 then +4.1 MiB
    between two rounds that hold the same (allocator fragmentation; CI, 2026-12-07)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    info = mallinfo()
    assert info is not None, "glibc's mallinfo2 is needed to measure the heap"
    return info["uordblks"] + info["hblkhd"], int(psutil.Process().memory_info().rss)


@contextlib.contextmanager
def _quiet_qh3() -> Iterator[None]:
    """qh3 logs a WARNING per peer close ("Native peer close"); a captured record is kept in
    memory, which would show up as RSS growth of the process itself."""
    lg = logging.getLogger("quic")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


async def _flood_rounds() -> None:
    """Three flood rounds against one listener, its tables checked empty after each; rounds 1-2
    warm the allocator up, round 3 must not grow RSS. Prints one line of figures."""
    registry = ContainerRegistry()
    ev = Counter()
    srv = QuicTransport(KeyPair.generate(), "flood", SERVER_CFG, CODEC, registry=registry)
    addr = await srv.start(ev)
    try:
        mem = [_memory()]
        times = []
        refused_before = 0
        for _ in range(3):
            t0 = time.monotonic()
            held, refused = await _flood_round(srv, ev, addr, registry, t0 + 40)
            assert held == 1000 and refused == 500
            st = srv.stats()
            assert st.refused_total.get("max_connections", 0) - refused_before == 500
            assert st.refused_total.get("max_incoming_handshakes") is None
            refused_before = st.refused_total["max_connections"]
            # every client stopped: the server's tables are empty, qh3's routing state included
            await ev.until_lost(ev.connected, 30)
            await srv.wait_idle(30)
            state = srv.quic_state()
            assert state == dict.fromkeys(state, 0), state
            assert srv.stats().handshakes_in_progress == 0
            times.append(time.monotonic() - t0)
            mem.append(_memory())
    finally:
        await srv.stop()
    growth = mem[3][0] - mem[2][0]
    print(
        "flood rounds: "
        + ", ".join(f"{t:.1f} s" for t in times)
        + "; heap held MiB: "
        + " -> ".join(f"{m[0] / 2**20:.1f}" for m in mem)
        + f"; last round {growth / 1500:+.0f} B per attempt; RSS MiB: "
        + " -> ".join(f"{m[1] / 2**20:.1f}" for m in mem)
    )
    # 1,000 held connections cost ~40 MiB; leaking them (or a fraction) would show far above this
    assert growth < 3 * 2**20, f"the heap held {growth / 2**20:.1f} MiB more after the last round"


@pytest.mark.timeout(200)
def test_flood_1500_attempts_against_1000_cap() -> None:
    """The flood runs in a fresh interpreter (this file run as a script), so the memory it
    judges is the flood's alone. In a pytest-xdist worker it was whatever the worker had run
    before too: under Python 3.12, in a worker at 309 MiB after other test files, round 3 grew
    RSS by 4.9 MiB (33.1 and 7.2 in rounds 1-2), against 0.0-0.2 MiB in three runs of the flood
    alone. Even alone, RSS moved by -1.9 then +4.1 MiB under CI's load, so the heap held is
    judged (see ``_memory``): 33.6 -> 33.9 -> 34.0 MiB in rounds 1-3 on a quiet machine, RSS
    +2.0 MiB in round 3 of the same run."""
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, "PYTHONMALLOC": "malloc"})
    print("\n" + done.stdout.strip())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "flood rounds: " in done.stdout


class StallingConnection(QuicConnection):
    """A dialer that completes TLS and Hello, then never answers the challenge (slowloris; it
    names no binding, so its proof is not in its Hello and the listener challenges it)."""

    challenged: asyncio.Queue[None]

    def _binding(self) -> bytes:
        return b""

    def _on_handshake_message(self, m: Message) -> None:
        if isinstance(m, Challenge):  # never answered
            type(self).challenged.put_nowait(None)
            return
        super()._on_handshake_message(m)


class Stalling(QuicTransport):
    connection_class = StallingConnection


@pytest.mark.timeout(60)
async def test_handshake_flood_refused_then_good_dialer_gets_through(registry: ContainerRegistry) -> None:
    cap = 8
    cfg = dataclasses.replace(CLIENT_CFG, max_incoming_handshakes=cap, handshake_timeout=1.0)
    ev = Counter()
    srv = QuicTransport(KeyPair.generate(), "flood", cfg, CODEC, registry=registry)
    addr = await srv.start(ev)
    StallingConnection.challenged = asyncio.Queue()
    stallers = [Stalling(KeyPair.generate(), "flood", CLIENT_CFG, CODEC, registry=registry) for _ in range(3 * cap)]
    good = await _client(registry)
    try:
        for s in stallers:
            await s.start(Counter())
        # wave 1 fills every handshake slot and holds it
        wave1 = [asyncio.ensure_future(s.dial(addr, expected=srv.node_id)) for s in stallers[:cap]]
        for _ in range(cap):
            await asyncio.wait_for(StallingConnection.challenged.get(), 10)
        assert srv.stats().handshakes_in_progress == cap
        # beyond the cap: refused explicitly, at the first packet
        with pytest.raises(AdmissionRefused) as info:
            await good.dial(addr, expected=srv.node_id)
        assert info.value.reason == "max_incoming_handshakes"
        extra = await asyncio.gather(
            *(s.dial(addr, expected=srv.node_id) for s in stallers[cap : 2 * cap]), return_exceptions=True
        )
        assert all(isinstance(e, AdmissionRefused) and e.reason == "max_incoming_handshakes" for e in extra)
        # the handshake timeout frees the slots; the good dialer gets in while a new wave floods
        for r in await asyncio.gather(*wave1, return_exceptions=True):
            assert isinstance(r, HandshakeTimeout)
        assert srv.stats().handshakes_in_progress == 0
        conn = await good.dial(addr, expected=srv.node_id)
        wave3 = [asyncio.ensure_future(s.dial(addr, expected=srv.node_id)) for s in stallers[2 * cap :]]
        assert not conn.closed and srv.stats().connections == 1
        for r in await asyncio.gather(*wave3, return_exceptions=True):
            assert isinstance(r, (HandshakeTimeout, AdmissionRefused))
        st = srv.stats()
        assert st.refused_total["max_incoming_handshakes"] == cap + 1
        assert st.refused_total["handshake_timeout"] >= cap
        assert st.handshakes_in_progress == 0 and st.connections == 1
    finally:
        for s in stallers:
            await s.stop()
        await good.stop()
        await srv.stop()


if __name__ == "__main__":  # test_flood_1500_attempts_against_1000_cap's fresh interpreter
    with _quiet_qh3():
        asyncio.run(_flood_rounds())
