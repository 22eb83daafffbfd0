"""#14 (round trips): an open connection's acknowledgements ride on its replies.

QUIC acknowledges every second packet at once, so in a request/reply exchange each end sent ~1.5
datagrams per round trip and woke the other end up for a bare ACK every second time. With
``transport.ack_delay`` a lone datagram's ACK waits for something to carry it: at least that
long, and qh3's own 1 ms (it writes an owed ACK into no packet before then), so back to back the
next message carries it: one datagram each way per round trip. Nothing is left unacknowledged
when no reply comes: the ACK leaves alone when the delay is up. Bulk runs of datagrams keep being
acknowledged at once (the 64 B / 1 KiB throughput of ``bench/before_after.py`` did not move).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from nodekit import node_pair, only_connection

from quicmesh.config import load_config
from quicmesh.errors import ConfigError
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic_connection import QuicConnection
from quicmesh.runtime.subscription import Subscription
from quicmesh.testing.wait import eventually


async def _pair(ack_delay: float) -> tuple[Node, Node]:
    return await node_pair("acks", {"ack_delay": ack_delay})


def _proto(node: Node) -> Any:
    return only_connection(node)._proto


def _count_datagrams(node: Node) -> Callable[[], int]:
    """Count the datagrams the node's one connection sends from now on."""
    quic = _proto(node)._quic
    inner = quic.datagrams_to_send
    sent = [0]

    def counting(now: float) -> list[tuple[bytes, Any]]:
        out: list[tuple[bytes, Any]] = inner(now=now)
        sent[0] += len(out)
        return out

    vars(quic)["datagrams_to_send"] = counting
    return lambda: sent[0]


FAST = 0.008
"""A round trip is counted when it ended less than this after the one before the last ended: every
ACK pending in it was for a packet received since then, less than the 10 ms delay before, so one
that left alone did not wait for the delay to run out (nor did a loss probe, which waits longer).
A loaded machine (the suite's three workers on two cores) pauses this process for longer now and
then; the ACK whose delay ran out meanwhile leaves alone, as it should, and is not what this test
is about (counted over every round trip, one run under load sent 1.43 per round trip)."""

MIN_FAST = 400
"""Fast round trips needed; more are run until there are this many (at most ``MAX_ROUND_TRIPS``)."""

CHUNK = 50
"""The fast round trips are judged in chunks of this many, by the median chunk: the node's own
traffic (its swarms' and registry's exchanges, now and then a burst of a few datagrams) lands in
a chunk or two and is not what this test is about either."""

MAX_ROUND_TRIPS = 3_000


@contextlib.asynccontextmanager
async def _echoing(a: Node, b: Node, there: str, back: str) -> AsyncIterator[Subscription]:
    """``b`` republishes what reaches ``there`` to ``back``; yields ``a``'s subscription to
    ``back``, once both subscriptions are seen."""
    ping, pong = await b.subscribe(there), await a.subscribe(back)

    async def echo() -> None:
        async for msg in ping:
            await b.publish(back, msg.payload)

    task = asyncio.ensure_future(echo())
    try:
        await a.wait_for_subscriber(there, 10)
        await b.wait_for_subscriber(back, 10)
        yield pong
    finally:
        task.cancel()
        await ping.close()
        await pong.close()


async def _round_trips(a: Node, b: Node) -> tuple[float, float, int]:
    """Back-to-back round trips a -> b -> a over pub/sub until ``MIN_FAST`` of them were fast
    (``FAST``): the datagrams each end sent per fast round trip (the median of ``CHUNK``-sized
    chunks), and how many ran in all."""
    async with _echoing(a, b, "acks.ping", "acks.pong") as pong:
        for i in range(50):  # warm-up: the swarms' trees are built, the connection is quiet
            await a.publish("acks.ping", b"w%d" % i)
            await asyncio.wait_for(pong.get(), 10)
        sent_a, sent_b = _count_datagrams(a), _count_datagrams(b)
        fast_a: list[int] = []
        fast_b: list[int] = []
        i = 0
        ended = [0.0, time.perf_counter()]  # when the last two round trips ended
        while len(fast_a) < MIN_FAST and i < MAX_ROUND_TRIPS:
            a0, b0 = sent_a(), sent_b()
            await a.publish("acks.ping", b"%d" % i)
            msg = await asyncio.wait_for(pong.get(), 10)
            now = time.perf_counter()
            assert msg.payload == b"%d" % i
            i += 1
            if now - ended[0] < FAST:
                fast_a.append(sent_a() - a0)
                fast_b.append(sent_b() - b0)
            ended = [ended[1], now]
        assert len(fast_a) >= MIN_FAST, f"only {len(fast_a)} of {i} round trips were fast"

        def per_round_trip(sent: list[int]) -> float:
            return statistics.median(sum(sent[j:j + CHUNK]) / CHUNK for j in range(0, MIN_FAST, CHUNK))

        return per_round_trip(fast_a), per_round_trip(fast_b), i


@pytest.mark.parametrize(("ack_delay", "low", "high"), [(0.01, 0.95, 1.25), (0.0, 1.4, 1.7)])
async def test_acknowledgements_ride_on_replies(ack_delay: float, low: float, high: float) -> None:
    """Datagrams per round trip at each end: ~1.0 with the delay (the ACK rides on the reply),
    ~1.5 at once (QUIC's ACK of every second packet on top of each message). Counted over the
    round trips no pause of the machine reached (``FAST``, ``CHUNK``). Measured here: 1.00-1.03
    and 1.48-1.52, idle; 1.02-1.18 and 1.46-1.54 beside three busy loops on the two cores (a
    pause's cascade, a loss probe or an ACK of two datagrams read together, reaches some)."""
    a, b = await _pair(ack_delay)
    try:
        assert _proto(a).ack_delay == ack_delay and _proto(b).ack_delay == ack_delay
        per_a, per_b, ran = await _round_trips(a, b)
        print(f"ack_delay {ack_delay}: datagrams per fast round trip {per_a:.2f} (a) and {per_b:.2f} (b); "
              f"{MIN_FAST} fast of {ran}")
        assert low <= per_a <= high and low <= per_b <= high, (per_a, per_b)
    finally:
        await b.stop()
        await a.stop()


async def test_a_message_with_no_reply_is_still_acknowledged() -> None:
    """One message, no answer: the receiver's ACK leaves alone once the delay is up, and the
    sender has nothing unacknowledged left (so no loss timer, no retransmission)."""
    a, b = await _pair(0.005)
    try:
        sub = await b.subscribe("acks.one")
        await a.wait_for_subscriber("acks.one", 10)
        quic_a = _proto(a)._quic
        await eventually(lambda: not quic_a._core.outstanding_application_packets, timeout=10,
                         what="a quiet connection")
        sent_b = _count_datagrams(b)
        await a.publish("acks.one", b"x")
        assert (await asyncio.wait_for(sub.get(), 10)).payload == b"x"
        await eventually(lambda: not quic_a._core.outstanding_application_packets, timeout=10,
                         what="the message acknowledged")
        assert sent_b() >= 1  # the ACK went out by itself
        await sub.close()
    finally:
        await b.stop()
        await a.stop()


async def test_a_sparse_round_trip_wakes_no_end_for_an_empty_send() -> None:
    """Round trips 5 ms apart (a sparse request: each ACK leaves alone): every send step sends
    something. qh3 writes an owed ACK into no packet before its own 1 ms delay is up; the ACK
    wait of its own that each lone datagram armed before (at 0.5 ms) fired first and sent nothing,
    ~1 per round trip at each end (a wake-up of an idle loop each, between two processes;
    measured: 0.93 and 1.13; 0.95 and 1.25 beside two busy loops on the two cores). Now, both ends
    together: 0.07-0.57 idle, 0.13-0.77 beside the two loops (at the echoing end qh3's own ACK
    timer, due, now and then runs and has nothing to send); the bound is half the figure before."""
    a, b = await _pair(0.0005)
    try:
        async with _echoing(a, b, "acks.sparse", "acks.back") as pong:
            empty = {"a": 0, "b": 0}
            for name, node in (("a", a), ("b", b)):
                quic = _proto(node)._quic
                inner = quic.datagrams_to_send

                def counting(now: float, inner: Any = inner, name: str = name) -> list[tuple[bytes, Any]]:
                    out: list[tuple[bytes, Any]] = inner(now=now)
                    empty[name] += not out
                    return out

                vars(quic)["datagrams_to_send"] = counting
            rounds = 60
            for i in range(rounds):
                await a.publish("acks.sparse", b"%d" % i)
                assert (await asyncio.wait_for(pong.get(), 10)).payload == b"%d" % i
                await asyncio.sleep(0.005)
            per = {k: v / rounds for k, v in empty.items()}
            print(f"empty send steps per sparse round trip: {per}")
            assert per["a"] + per["b"] <= 1.0, per
    finally:
        await b.stop()
        await a.stop()


async def test_a_lone_datagram_of_an_open_connection_takes_the_batch_entry() -> None:
    """#14: once a connection is open, a lone 1-RTT datagram goes through qh3's batch entry
    (``receive_many_datagrams``), without ``receive_datagram``'s per-datagram checks for a version
    negotiation, a Retry and a handshake's connection ids; and is processed all the same (every
    call answered). qh3 falls back to ``receive_datagram`` itself before its handshake is done,
    which would be counted here."""
    a, b = await _pair(0.0005)
    try:
        counts: dict[tuple[str, str], int] = {}
        for name, node in (("a", a), ("b", b)):
            quic = _proto(node)._quic
            for entry in ("receive_datagram", "receive_many_datagrams"):
                counts[(name, entry)] = 0

                def counting(*args: Any, _inner: Any = getattr(quic, entry), _key: tuple[str, str] = (name, entry),
                             **kwargs: Any) -> Any:
                    counts[_key] += 1
                    return _inner(*args, **kwargs)

                vars(quic)[entry] = counting

        async def echo(payload: bytes) -> bytes:
            return payload

        await a.advertise("echo", echo)
        await b.wait_for_provider("echo", 10)
        for i in range(50):
            assert await b.call("echo", b"%d" % i) == b"%d" % i
        print(counts)
        assert counts[("a", "receive_many_datagrams")] >= 50 and counts[("b", "receive_many_datagrams")] >= 50
        assert counts[("a", "receive_datagram")] == 0 and counts[("b", "receive_datagram")] == 0
    finally:
        await b.stop()
        await a.stop()


async def test_handshakes_are_answered_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The delay applies only to open connections: until a connection opens (TLS and the
    quicmesh handshake done), every flight is answered when its packets arrive; a dialer must not
    wait ack_delay per flight."""
    seen: list[tuple[float, float]] = []
    original = QuicConnection.open

    def open_(self: QuicConnection) -> None:
        before = self._proto.ack_delay
        original(self)
        seen.append((before, self._proto.ack_delay))

    monkeypatch.setattr(QuicConnection, "open", open_)
    a, b = await _pair(0.01)
    try:
        assert len(seen) == 2 and all(s == (0.0, 0.01) for s in seen), seen
    finally:
        await b.stop()
        await a.stop()


@pytest.mark.parametrize("value", [-0.001, 0.011, 1.0])
def test_ack_delay_is_checked(value: float) -> None:
    with pytest.raises(ConfigError, match=r"transport\.ack_delay"):
        load_config(env={}, overrides={"transport": {"ack_delay": value}})


def test_ack_delay_zero_means_at_once() -> None:
    assert load_config(env={}, overrides={"transport": {"ack_delay": 0}}).transport.ack_delay == 0
    assert load_config(env={}).transport.ack_delay == 0.0005
