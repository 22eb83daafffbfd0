"""#14 (pipelining): an iteration's first ``transport.flush_bytes`` of frames go to QUIC at once.

A connection's frames used to be written once per loop iteration, at its end. 64 calls issued
in one iteration then left as one write; the provider worked through all 64 while the caller
waited, then the caller through 64 replies while the provider waited: two processes on two
cores, one busy at a time. Now the first 4 KiB queued in an iteration are written at once, so
the first calls are on their way while the rest are framed (and leave together at the end of
the iteration), and both ends work at once (RPC with 64 in flight ~1.7x the calls
a second between two node processes, README). The write happens inside ``send()``, so a write that fails there
must not close the connection under the sender: it closes at the next iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nodekit import node_pair, only_connection

from quicmesh.config import load_config
from quicmesh.core.messages import Ping
from quicmesh.errors import ConfigError
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic_connection import QuicConnection
from quicmesh.testing.wait import eventually


async def _pair(flush_bytes: int) -> tuple[Node, Node]:
    return await node_pair("flush", {"flush_bytes": flush_bytes})


def _conn(node: Node) -> QuicConnection:
    conn = only_connection(node)
    assert isinstance(conn, QuicConnection)
    return conn


@pytest.mark.parametrize("flush_bytes", [4096, 0])
async def test_frames_reach_quic_within_the_iteration_once_flush_bytes_are_queued(flush_bytes: int) -> None:
    a, b = await _pair(flush_bytes)
    try:
        conn = _conn(a)
        await eventually(lambda: conn.pending_bytes == 0, timeout=10, what="nothing queued")
        before = conn._written_total  # bytes handed to QUIC
        frames = 0
        while frames < 5000 and conn._written_total - before + conn._queued < 10_000:  # no await: one iteration
            assert conn.send(Ping(seq=1_000_000 + frames))
            frames += 1
        written, queued = conn._written_total - before, conn._queued
        if flush_bytes:
            # the iteration's first 4 KiB went to QUIC at once; the rest waits for its end, to
            # leave together in as few datagrams as before
            assert flush_bytes <= written < flush_bytes + 64, (written, queued)
            assert queued >= 10_000 - written, (written, queued)
        else:
            assert written == 0, written  # all of it waits for the end of the iteration
            assert queued >= 10_000, queued
        await eventually(lambda: conn._queued == 0, timeout=10, what="the rest written")
        assert conn._written_total - before >= 10_000
        assert not conn.closed
    finally:
        await b.stop()
        await a.stop()


async def test_calls_framed_across_many_early_writes_all_come_back_right() -> None:
    """A tiny ``flush_bytes`` (256: each iteration's first ~2 requests or replies are written
    early, the rest at its end) keeps the stream's framing and every reply matched to its call:
    300 calls, 64 at a time, each answered with its own payload."""
    a, b = await _pair(256)
    try:
        async def echo(payload: bytes) -> bytes:
            return payload[::-1]

        await b.advertise("flush.echo", echo)
        await a.wait_for_provider("flush.echo", timeout=10)
        payloads = [b"%05d-" % i + b"x" * (i % 97) for i in range(300)]
        sem = asyncio.Semaphore(64)

        async def one(p: bytes) -> bytes:
            async with sem:
                return await a.call("flush.echo", p, timeout=10)

        replies = await asyncio.gather(*(one(p) for p in payloads))
        assert replies == [p[::-1] for p in payloads]
        assert not _conn(a).closed and not _conn(b).closed
    finally:
        await b.stop()
        await a.stop()


async def test_a_write_failing_inside_send_closes_the_connection_at_the_next_iteration() -> None:
    a, b = await _pair(256)
    try:
        conn = _conn(a)
        peer = conn.peer_id
        quic = conn._proto.quic

        def broken(stream_id: int, data: bytes, end_stream: bool = False) -> None:
            raise RuntimeError("stream gone")

        vars(quic)["send_stream_data"] = broken
        sent = [conn.send(Ping(seq=2_000_000 + i)) for i in range(40)]  # 40 pings: past 256 bytes
        # the early write failed inside send(): nothing was closed or reported under the sender
        assert sent[0] is True
        assert not conn.closed
        assert peer in a.peers()
        assert sent.count(False) >= 1  # once it failed, later frames are refused, not queued
        await eventually(lambda: conn.closed, timeout=5, what="the connection closed at the next iteration")
        assert conn.close_code == "error"
    finally:
        await b.stop()
        await a.stop()


@pytest.mark.parametrize(("value", "ok"), [(0, True), (1, True), (4096, True), (-1, False)])
def test_flush_bytes_bounds(value: int, ok: bool) -> None:
    ov: dict[str, Any] = {"transport": {"flush_bytes": value}}
    if ok:
        assert load_config(env={}, overrides=ov).transport.flush_bytes == value
    else:
        with pytest.raises(ConfigError, match=r"transport\.flush_bytes"):
            load_config(env={}, overrides=ov)
