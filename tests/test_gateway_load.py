"""The gateway load runs (the ones the Erlang mesh wrote but never ran), over loopback QUIC.

* 1,500 client attempts against ``max_clients=1000`` (a real ``quicmesh node`` process): exactly
  1,000 held and 500 refused with ``AdmissionRefused("max_clients")``, twice; after everyone
  left, every per-client structure is back to zero and RSS is back near the post-warm-up level.
* 150 clients against ``max_clients=100``: exactly 50 refused.
* 10 subscribed clients disconnect: their subscriptions, streams and the node's topic interest
  are gone (the mesh peer no longer sees the gateway subscribed).
* 100 clients with calls in flight are SIGKILLed (a child process): once the gateway notices
  (missed pings, idle timeout) their pending calls end at once and its call state is 0.
* a client that stops reading is closed as a slow consumer; the others' p99 latency holds.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from quicmesh.config import GatewayConfig, NodeConfig, RpcConfig, TransportConfig
from quicmesh.errors import AdmissionRefused, QuicmeshError
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic import QuicTransport
from quicmesh.testing.process import NodeProcess
from quicmesh.testing.wait import eventually

pytestmark = pytest.mark.timeout(180)

CLIENT_CFG = TransportConfig(handshake_timeout=20.0, idle_timeout=30.0, keepalive_interval=5.0)
FAST = TransportConfig(handshake_timeout=10.0, idle_timeout=2.0, keepalive_interval=0.4)
WAVE = 100
ONE_HOST = {"QUICMESH_TRANSPORT__MAX_HANDSHAKES_PER_SOURCE": "1000"}
"""Every client dials from 127.0.0.1: lift the per-source handshake cap for these waves."""
"""Client attempts in flight at once: below ``max_incoming_handshakes`` (256), so every refusal
comes from ``max_clients``."""


async def attempt_clients(address: str, n: int, realm: str) -> tuple[list[Client], list[BaseException]]:
    """``n`` connection attempts, ``WAVE`` at a time; returns (held clients, errors)."""
    held: list[Client] = []
    errors: list[BaseException] = []
    for start in range(0, n, WAVE):
        results = await asyncio.gather(
            *(Client.connect(address, realm=realm, transport=CLIENT_CFG, reconnect=False)
              for _ in range(min(WAVE, n - start))),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, Client):
                held.append(r)
            else:
                errors.append(r)
    return held, errors


async def close_all(clients: list[Client]) -> None:
    for start in range(0, len(clients), 200):
        await asyncio.gather(*(c.close() for c in clients[start:start + 200]))


async def gw_health(gw: NodeProcess) -> dict[str, Any]:
    ev = await gw.request("health", "health")
    h: dict[str, Any] = ev["health"]
    return h


async def gw_rss(gw: NodeProcess) -> int:
    """The gateway process's RSS after a GC and ``malloc_trim`` (freed arenas returned)."""
    ev = await gw.request("memory", "memory", gc=True, trim=True)
    return int(ev["rss_bytes"])


PER_CLIENT = ("clients", "subscriptions", "advertisements", "provided_names", "pending_calls", "invocations",
              "pending_publishes", "shared_subscriptions")


async def test_1500_attempts_against_1000_clients_twice_and_rss_returns() -> None:
    gw = await NodeProcess.spawn("gw", realm="load", extra=["--max-clients", "1000"], env=ONE_HOST)
    try:
        cold = await gw_rss(gw)
        after: list[int] = []
        peaks: list[int] = []
        for round_no in range(2):  # round 0 warms the allocator up; round 1 is measured against it
            held, errors = await attempt_clients(gw.address, 1500, "load")
            assert len(held) == 1000, [repr(e) for e in errors[:3]]
            assert len(errors) == 500
            assert all(isinstance(e, AdmissionRefused) and e.reason == "max_clients" for e in errors), \
                {repr(e) for e in errors}
            h = (await gw_health(gw))["gateway"]
            assert h["clients"] == 1000 and h["refused_total"] == 500 * (round_no + 1)
            peaks.append(await gw_rss(gw))
            await close_all(held)
            h = (await eventually(lambda: gw_health(gw), until=lambda doc: not doc["gateway"]["clients"],
                                  timeout=20, interval=0.05))["gateway"]
            assert {k: h[k] for k in PER_CLIENT} == dict.fromkeys(PER_CLIENT, 0)
            # the clients' QUIC connections finished closing (qh3 keeps a closed one ~3 PTO)
            full = await eventually(lambda: gw_health(gw), timeout=20, interval=0.05,
                                    until=lambda doc: not doc["connections"]["quic"]["quic_connections"])
            assert full["pubsub"]["subscriptions"] == 0 and full["connections"]["open"] == 0
            after.append(await gw_rss(gw))
        mib = 2**20
        print(f"gateway RSS: cold {cold / mib:.1f} MiB; round 0 with 1000 clients {peaks[0] / mib:.1f}, after "
              f"{after[0] / mib:.1f}; round 1 with 1000 clients {peaks[1] / mib:.1f}, after {after[1] / mib:.1f}")
        # After warm-up a whole round of 1,500 attempts leaves no trend (measured once every QUIC
        # connection finished closing): far below the ~40 KiB x 1000 the clients held.
        assert after[1] - after[0] < 8 * mib, (after, peaks)
        assert after[1] - after[0] < (peaks[1] - cold) / 3, (cold, after, peaks)
    finally:
        await gw.stop()


async def test_150_clients_against_100() -> None:
    gw = await NodeProcess.spawn("gw", realm="load", extra=["--max-clients", "100"], env=ONE_HOST)
    try:
        held, errors = await attempt_clients(gw.address, 150, "load")
        assert (len(held), len(errors)) == (100, 50)
        assert all(isinstance(e, AdmissionRefused) and e.reason == "max_clients" for e in errors)
        assert (await gw_health(gw))["gateway"]["refused_total"] == 50
        await close_all(held)
    finally:
        await gw.stop()


async def _mesh(transport: TransportConfig) -> AsyncIterator[tuple[Node, Node]]:
    gw = await Node.start(NodeConfig(realm="load", transport=transport, gateway=GatewayConfig(
        max_pending_bytes=256 * 1024, write_stall_timeout=2.0)))
    peer = await Node.start(NodeConfig(realm="load", transport=transport, bootstrap=(gw.address,),
                                       rpc=RpcConfig(max_concurrent_handlers=512)))
    await gw.wait_until(lambda: len(gw.peers()) == 1, 10)
    yield gw, peer
    await peer.stop()
    await gw.stop()


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[Node, Node]]:
    """An in-process gateway node and a mesh peer connected to it (idle timeouts of 2 s)."""
    async for pair in _mesh(FAST):
        yield pair


PATIENT = TransportConfig(handshake_timeout=10.0, idle_timeout=60.0, keepalive_interval=0.4)
"""For the slow-consumer test: no connection there may end by an idle timeout. A client that
stops reading its socket also stops hearing the gateway, so with FAST's 2 s its own connection
idled out at ~2 s and the gateway's ~2 s after that: the gateway's pending-bytes close (~2.8 s
after the client stopped reading, here) won only while the burst kept its pace (CI on e56141b:
no slow-consumer close in 15 s). With 60 s only the gateway's slow-consumer rules can end it."""


@pytest.fixture
async def patient_mesh() -> AsyncIterator[tuple[Node, Node]]:
    """As ``mesh``, with idle timeouts of 60 s."""
    async for pair in _mesh(PATIENT):
        yield pair


async def test_10_subscribed_clients_disconnect(mesh: tuple[Node, Node]) -> None:
    gw, peer = mesh
    base_swarms = gw.health()["gossip"]["topics"]  # the node's own swarms (the service registry's)
    clients = [await Client.connect(gw.address, realm="load", transport=FAST) for _ in range(10)]
    subs = []  # keep the handles: a garbage-collected subscription is released
    for i, c in enumerate(clients):
        subs += [await c.subscribe(f"room{i}.chat"), await c.subscribe("lobby.>")]
    h = gw.health()
    assert h["gateway"]["clients"] == 10 and h["gateway"]["subscriptions"] == 20
    # the ten clients' "lobby.>" share one node subscription (one queue, one forwarding task)
    assert h["pubsub"]["subscriptions"] == 11 and h["pubsub"]["patterns"] == 11
    assert h["gateway"]["shared_subscriptions"] == 11
    assert h["gossip"]["topics"] == base_swarms + 11 and all(gw.topic_state(f"room{i}.chat") > 0 for i in range(10))
    # the messages flow: a mesh peer publishes into one client's room
    await peer.wait_for_subscriber("room3.chat", 10)
    await peer.publish("room3.chat", b"hi")
    assert (await asyncio.wait_for(subs[6].get(), 5)).payload == b"hi"
    transport = gw.transport
    assert isinstance(transport, QuicTransport)
    assert transport.quic_state()["clients"] == 10
    await asyncio.gather(*(c.close() for c in clients))
    await eventually(lambda: gw.gateway.clients == 0, timeout=20)
    await eventually(lambda: gw.health()["pubsub"]["subscriptions"] == 0 and gw.health()["pubsub"]["patterns"] == 0,
                     timeout=20)
    # every swarm joined for the clients: left
    await eventually(lambda: gw.health()["gossip"]["topics"] == base_swarms, timeout=20)
    assert all(gw.topic_state(f"room{i}.chat") == 0 for i in range(10)) and gw.topic_state("lobby.x") == 0
    h = gw.health()["gateway"]
    assert {k: h[k] for k in PER_CLIENT} == dict.fromkeys(PER_CLIENT, 0)
    assert h["tasks"] == 0
    qs = transport.quic_state()
    assert qs["clients"] == 0 and qs["connections"] == 1
    sizes = {c.name: c.size for c in gw.registry.snapshot()}
    assert sizes["gateway.provided_names"] == 0 and sizes["transport.clients"] == 0 and sizes["node.subscriptions"] == 0
    assert "node.subscription_queue" not in sizes  # every forwarded subscription's queue was released
    await eventually(lambda: transport.quic_state()["quic_connections"] == 1, timeout=20)
    assert all(sub.closed for sub in subs)


_KILLED_CLIENTS = r"""
import asyncio, sys
from quicmesh.runtime.client import Client
from quicmesh.config import TransportConfig

async def main(address, n):
    cfg = TransportConfig(handshake_timeout=10.0, idle_timeout=30.0, keepalive_interval=0.4)
    clients = [await Client.connect(address, realm="load", transport=cfg) for _ in range(n)]
    calls = [asyncio.ensure_future(c.call("slow", b"60", timeout=60)) for c in clients]
    print("calling", flush=True)
    await asyncio.gather(*calls, return_exceptions=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_100_clients_killed_with_calls_in_flight(mesh: tuple[Node, Node]) -> None:
    gw, peer = mesh

    async def slow(payload: bytes) -> bytes:
        await asyncio.sleep(float(payload))
        return b"late"

    await peer.advertise("slow", slow)
    await gw.wait_for_provider("slow", 10)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_CLIENTS, gw.address, "100", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"calling"
        await eventually(lambda: gw.gateway.health()["pending_calls"] == 100 and gw.rpc.pending == 100, timeout=30)
        assert gw.gateway.clients == 100
        proc.send_signal(signal.SIGKILL)  # no close frame: the gateway must notice missed pings
        killed_at = time.monotonic()
        await proc.wait()
        await eventually(lambda: gw.gateway.clients == 0, timeout=15)
        detected = time.monotonic() - killed_at
        # released in the same callback as the session: nothing waits for the calls' 60 s timeout
        await eventually(lambda: gw.gateway.health()["pending_calls"] == 0 and gw.rpc.pending == 0, timeout=1.0)
        h = gw.health()
        assert h["rpc"]["pending"] == 0 and h["gateway"]["invocations"] == 0
        print(f"100 killed clients released {detected:.2f}s after SIGKILL (idle timeout {FAST.idle_timeout}s)")
        assert detected < FAST.idle_timeout + 5
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def lens(xs: list[list[float]]) -> list[int]:
    return [len(x) for x in xs]


def _p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98] if len(xs) >= 100 else max(xs)


async def test_slow_consumer_is_closed_and_others_keep_latency(patient_mesh: tuple[Node, Node]) -> None:
    gw, peer = patient_mesh
    normal = [await Client.connect(gw.address, realm="load", transport=PATIENT) for _ in range(5)]
    slow = await Client.connect(gw.address, realm="load", transport=PATIENT, reconnect=False)
    lat: list[list[float]] = [[] for _ in normal]
    subs = [await c.subscribe("feed") for c in normal]
    slow_sub = await slow.subscribe("feed")

    async def read(i: int) -> None:
        async for m in subs[i]:
            lat[i].append(time.perf_counter() - struct.unpack_from(">d", m.payload)[0])

    readers = [asyncio.ensure_future(read(i)) for i in range(len(normal))]
    slow_reader = asyncio.ensure_future(slow_sub.get())
    await peer.wait_for_subscriber("feed", 10)
    pad = b"x" * 1024

    async def burst(seconds: float, until_pred: Callable[[], bool] | None = None,
                    rate: int = 300) -> tuple[float, int]:
        """Publish timestamped 1 KiB messages at ``rate``/s for ``seconds`` (or until ``until_pred``
        holds, then one more second); returns the seconds it took and how many it published (on a
        loaded machine fewer than ``seconds * rate``: every one of them must arrive)."""
        loop = asyncio.get_running_loop()
        start = next_at = loop.time()
        end = start + seconds
        n = 0
        while loop.time() < end:
            await peer.publish("feed", struct.pack(">d", time.perf_counter()) + pad)
            n += 1
            if until_pred is not None and until_pred():
                end, until_pred = min(end, loop.time() + 1.0), None
            # paced, with no catch-up after the process was descheduled: making up a 1.5 s stall
            # at once put ~450 KiB in every reader's queue, and the 256 KiB budget closed all six
            # (61 closes with the normal clients reconnecting; CI on 2 cores saw 51)
            next_at = max(next_at + 1 / rate, loop.time() - 0.02)
            ahead = next_at - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
        return loop.time() - start, n

    try:
        _, sent = await burst(2.0)
        await eventually(lambda: all(len(x) >= sent for x in lat), timeout=10,
                         detail=lambda: f"{sent} sent, got {lens(lat)}")
        before = [_p99(x) for x in lat]
        p50_before = statistics.median(v for x in lat for v in x)
        for x in lat:
            x.clear()
        # the slow client stops reading its socket: no ACKs, so its bytes pile up at the gateway
        ep = slow._transport._endpoint
        assert ep is not None and ep.transport is not None
        reader: Any = ep.transport  # asyncio's datagram transport and qh3's batching one both pause reading
        reader.pause_reading()
        paused_at = time.monotonic()
        took, sent = await burst(15.0, lambda: gw.gateway.stats.slow_consumer_total == 1)
        closed_after = time.monotonic() - paused_at - 1.0
        h = gw.gateway.health()
        assert h["slow_consumer_total"] == 1 and h["clients"] == 5 and h["subscriptions"] == 5, (h, took, sent)
        assert took < 14.0  # closed well before the burst's bound
        # nobody else lost anything
        await eventually(lambda: all(len(x) >= sent for x in lat), timeout=10,
                         detail=lambda: f"{sent} sent, got {lens(lat)}")
        during = [_p99(x) for x in lat]
        p50_during = statistics.median(v for x in lat for v in x)
        print(f"slow consumer closed ~{closed_after:.1f}s after it stopped reading "
              f"(pending-bytes closes {h['slow_consumer_pending_total']}, stall closes "
              f"{h['slow_consumer_stalled_total']}); the 5 others before: p50 {p50_before * 1000:.2f} ms "
              f"p99 {max(before) * 1000:.2f} ms; with the slow consumer: p50 {p50_during * 1000:.2f} ms "
              f"p99 {max(during) * 1000:.2f} ms")
        # A gateway that waited on the stalled client would add seconds (write_stall_timeout is
        # 2 s here) to everyone's latency: p50 and p99 in the hundreds of ms at least. Scheduling
        # noise on a 2-core machine shared with other test runs moves a 2 s window's p50 between
        # ~10 and ~45 ms (measured under `make test`), so each bound allows 3x or that noise.
        assert p50_during < max(3 * p50_before, p50_before + 0.1), (p50_before, p50_during)
        assert max(during) < max(3 * max(before), max(before) + 0.25), (before, during)
    finally:
        for r in readers:
            r.cancel()
        slow_reader.cancel()
        for c in [*normal, slow]:
            try:
                await c.close()
            except QuicmeshError:
                pass
