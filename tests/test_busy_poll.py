"""Busy polling (#14, ``busy_poll_us``, ``quicmesh node --busy-poll-us``): after each transmit the
node's event loop polls instead of sleeping for a window, on asyncio's loop and on uvloop; the
window closes by itself when nothing is transmitted for its length, so an idle node sleeps; off
by default. What it buys between two processes is measured by ``make bench-peers`` (the
``quicmesh-busy`` column), not here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from nodekit import node_command, node_pair

from quicmesh.cli.node import loop_factory
from quicmesh.config import NodeConfig
from quicmesh.errors import ConfigError
from quicmesh.observability.metrics import render
from quicmesh.runtime.busy_poll import MAX_BUSY_POLL_US, BusyPoll
from quicmesh.testing.wait import eventually

LOOPS = ("asyncio", "uvloop")


def _run(loop_name: str, main: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, None]]) -> None:
    factory = loop_factory(loop_name)
    loop = factory() if factory is not None else asyncio.new_event_loop()
    try:
        loop.run_until_complete(main(loop))
    finally:
        loop.close()


class _Clock:
    """The poller's clock, advanced by the test: windows open and close where the test says, however
    late a loaded machine runs the loop's passes."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _passes(bp: BusyPoll, n: int) -> None:
    """Yield to the loop until ``bp`` has made ``n`` more passes (bounded: 10,000 yields)."""
    target = bp.passes + n
    for _ in range(10_000):
        if bp.passes >= target:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{bp.passes} passes, wanted {target}")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_kick_keeps_the_loop_polling_for_its_window_then_it_sleeps(loop_name: str) -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> None:
        clock = _Clock()
        bp = BusyPoll(loop, 0.01, clock=clock)
        bp.kick()
        assert bp.spinning and bp.windows == 1
        fired = asyncio.Event()
        seen: list[bool] = []

        def timer() -> None:
            seen.append(bp.spinning)
            fired.set()

        loop.call_later(0.003, timer)
        await asyncio.wait_for(fired.wait(), 10)
        assert seen == [True], "timers run between the passes of an open window"
        await _passes(bp, 20)
        t0 = clock.now
        clock.now = t0 + 0.004
        assert bp.seconds == pytest.approx(0.004), "an open window's time counts as it goes"
        clock.now = t0 + 0.0099
        await _passes(bp, 5)
        assert bp.spinning, "9.9 ms after the kick: still open"
        clock.now = t0 + 0.01
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not bp.spinning, "the window closes at the first pass 10 ms after the kick"
        assert bp.seconds == pytest.approx(0.01) and bp.windows == 1
        passes = bp.passes
        await asyncio.sleep(0.02)  # idle: nothing polls
        assert bp.passes == passes and bp.windows == 1

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_kicks_during_a_window_extend_it_and_close_stops_it(loop_name: str) -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> None:
        clock = _Clock()
        bp = BusyPoll(loop, 0.01, clock=clock)
        t0 = clock.now
        bp.kick()
        await _passes(bp, 3)
        clock.now = t1 = t0 + 0.007
        bp.kick()  # inside the window: open until 10 ms after it
        await _passes(bp, 3)
        clock.now = t1 + 0.0095  # 16.5 ms after the first kick, 9.5 ms after the second
        await _passes(bp, 3)
        assert bp.spinning and bp.windows == 1, "the second kick extended the open window"
        clock.now = t1 + 0.01
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not bp.spinning and bp.windows == 1
        assert bp.seconds == pytest.approx(0.017)
        bp.kick()
        assert bp.spinning and bp.windows == 2, "a kick after the window closed opens another"
        await _passes(bp, 2)
        bp.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not bp.spinning, "closed: the open window ends at its next pass"
        bp.kick()
        assert not bp.spinning and bp.windows == 2, "closed: kicks open nothing"

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_on_the_real_clock_a_window_lasts_at_least_its_length_and_ends_by_itself(loop_name: str) -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> None:
        bp = BusyPoll(loop, 0.002)
        t0 = time.monotonic()
        bp.kick()
        for _ in range(500):  # bounded: 500 x 10 ms
            if not bp.spinning:
                break
            await asyncio.sleep(0.01)
        assert not bp.spinning, "the window closed without another kick"
        assert 0.002 <= bp.seconds <= time.monotonic() - t0, bp.seconds
        assert bp.passes >= 1
        passes = bp.passes
        await asyncio.sleep(0.02)
        assert bp.passes == passes and bp.windows == 1, "asleep until the next kick"

    _run(loop_name, main)


def test_window_bounds() -> None:
    loop = asyncio.new_event_loop()
    try:
        for bad in (0.0, -0.001, MAX_BUSY_POLL_US / 1e6 + 1e-6):
            with pytest.raises(ValueError, match="window"):
                BusyPoll(loop, bad)
        assert BusyPoll(loop, MAX_BUSY_POLL_US / 1e6).window == 0.01
    finally:
        loop.close()


def test_the_setting_is_checked_and_off_by_default() -> None:
    assert NodeConfig().busy_poll_us == 0
    assert NodeConfig(busy_poll_us=MAX_BUSY_POLL_US).busy_poll_us == MAX_BUSY_POLL_US
    for bad in (-1, MAX_BUSY_POLL_US + 1, True):
        with pytest.raises(ConfigError, match="busy_poll_us"):
            NodeConfig(busy_poll_us=bad)


async def test_a_node_does_not_poll_by_default() -> None:
    a, b = await node_pair("busy", {})
    try:
        assert a.busy_poll is None and b.busy_poll is None
        assert b.gauges()["busy_poll_windows_total"] == 0.0
    finally:
        await b.stop()
        await a.stop()


async def test_busy_polling_nodes_stay_awake_for_replies_and_stop_when_idle() -> None:
    window_us = 5_000
    from quicmesh.config import load_config
    from quicmesh.runtime.node import Node

    ov: dict[str, Any] = {"realm": "busy2", "discovery": {"local": False}, "busy_poll_us": window_us}
    a = await Node.start(load_config(env={}, overrides=ov))
    b = await Node.start(load_config(env={}, overrides={**ov, "bootstrap": [a.address]}))
    try:
        await eventually(lambda: bool(a.peers() and b.peers()), timeout=20, what="the two nodes connected")

        async def echo(p: bytes) -> bytes:
            return p

        await a.advertise("echo", echo)
        await b.wait_for_provider("echo", 10)
        bp, bpa = b.busy_poll, a.busy_poll
        assert bp is not None and bpa is not None
        before = bp.passes
        for _ in range(20):
            assert await b.call("echo", b"x") == b"x"
        assert bp.passes > before, "the caller polled while its calls were answered"
        await eventually(lambda: not bp.spinning and not bpa.spinning, timeout=5, what="both windows closed once idle")
        # idle: a window opens only after a transmit (keep-alives, probes), each at most 5 ms long
        windows, seconds = bp.windows, bp.seconds
        await asyncio.sleep(0.5)
        opened = bp.windows - windows
        assert bp.seconds - seconds <= (opened + 1) * (window_us / 1e6 + 0.05), (opened, bp.seconds - seconds)
        assert opened <= 10, f"{opened} windows in 0.5 s idle"
        g = b.gauges()
        assert g["busy_poll_windows_total"] == float(bp.windows) and g["busy_poll_seconds_total"] > 0
        text = render(b).decode()  # what /metrics serves
        assert f'quicmesh_node_events_total{{name="busy_poll_windows_total"}} {float(bp.windows)}' in text
        assert 'quicmesh_node_events_total{name="busy_poll_seconds_total"}' in text
    finally:
        await b.stop()
        await a.stop()
    assert not bp.spinning and b.transport.through.busy is None  # type: ignore[attr-defined]
    bp.kick()
    assert not bp.spinning, "a stopped node's poller opens no window"


async def test_the_in_memory_transport_has_no_busy_polling() -> None:
    from quicmesh.runtime.memory import MemoryNetwork
    from quicmesh.runtime.node import Node

    node = await Node.start(NodeConfig(realm="mem", busy_poll_us=1_000, discovery={"local": False}),  # type: ignore[arg-type]
                            network=MemoryNetwork())
    try:
        assert node.busy_poll is None
    finally:
        await node.stop()


def test_the_node_command_takes_the_flag() -> None:
    out = node_command("--busy-poll-us", "300")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["busy_poll_us"] == 300
    out = node_command()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["busy_poll_us"] == 0
    out = node_command("--busy-poll-us", "20000")
    assert out.returncode == 1 and "busy_poll_us" in out.stderr


async def test_a_light_client_polls_after_its_transmits_when_asked() -> None:
    from quicmesh.runtime.client import Client
    from quicmesh.runtime.node import Node

    node = await Node.start(NodeConfig(realm="busyc", discovery={"local": False}))  # type: ignore[arg-type]
    try:
        async def echo(p: bytes) -> bytes:
            return p

        await node.advertise("echo", echo)
        for bad in (-1, MAX_BUSY_POLL_US + 1, True):
            with pytest.raises(ConfigError, match="busy_poll_us"):
                await Client.connect(node.address, realm="busyc", reconnect=False, busy_poll_us=bad)
        plain = await Client.connect(node.address, realm="busyc", reconnect=False)
        assert plain.busy_poll is None, "off by default"
        await plain.close()
        client = await Client.connect(node.address, realm="busyc", reconnect=False, busy_poll_us=5_000)
        bp = client.busy_poll
        assert bp is not None
        try:
            before = bp.passes
            for _ in range(20):
                assert await client.call("echo", b"x") == b"x"
            assert bp.passes > before and bp.windows >= 1
            await eventually(lambda: not bp.spinning, timeout=5, what="the client's window closed once idle")
        finally:
            await client.close()
        bp.kick()
        assert not bp.spinning, "a closed client's poller opens no window"
    finally:
        await node.stop()
