"""Handshake caps per source and QUIC Retry (#11).

Before: one global cap of 256 incoming handshakes, no per-source limit, no address validation:
one host (or a spoofed-source flood) could hold every handshake slot. Now at most
``max_handshakes_per_source`` handshakes per source IP, and from ``retry_threshold`` handshakes
in progress on, a new dialer must come back with a Retry token (which a spoofed source never
receives) before any connection state exists.

The flooder here sends real QUIC Initials (made by qh3's client) from a plain UDP socket and
never answers: what a spoofed source looks like to the listener.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator

import pytest
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection as QhConnection
from transportkit import Quiet

from quicmesh.config import TransportConfig
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.wire import Codec
from quicmesh.identity import KeyPair
from quicmesh.runtime._quic_adapter import RetryTokens
from quicmesh.runtime.admission import AdmissionTable
from quicmesh.runtime.quic import QuicTransport
from quicmesh.runtime.transport import Connection
from quicmesh.testing.wait import eventually

CODEC = Codec(ALL_MESSAGES)
BASE = TransportConfig(handshake_timeout=20.0)


def _initials(address: str, n: int) -> list[bytes]:
    """The first datagram of ``n`` fresh QUIC connections to ``address``."""
    host, port = address.rsplit(":", 1)
    out = []
    for _ in range(n):
        q = QhConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=[BASE.alpn]))
        q.connect((host, int(port)), now=time.monotonic())
        data, _ = q.datagrams_to_send(now=time.monotonic())[0]
        assert len(data) >= 1200
        out.append(data)
    return out


class _Flood:
    """A UDP socket sending Initials and ignoring whatever comes back (Retries included)."""

    def __init__(self, source: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.setblocking(False)

    def send(self, address: str, n: int) -> None:
        host, port = address.rsplit(":", 1)
        for d in _initials(address, n):
            self.sock.sendto(d, (host, int(port)))

    def close(self) -> None:
        self.sock.close()


async def _listener(**kw: object) -> tuple[QuicTransport, str]:
    cfg = dataclasses.replace(BASE, **kw)  # type: ignore[arg-type]
    t = QuicTransport(KeyPair.generate(), "caps", cfg, CODEC)
    return t, await t.start(Quiet())


@pytest.fixture
async def stack() -> AsyncIterator[list[QuicTransport | _Flood]]:
    held: list[QuicTransport | _Flood] = []
    yield held
    for x in held:
        if isinstance(x, QuicTransport):
            await x.stop()
        else:
            x.close()


async def _dial_from(source: str, address: str, stack: list[QuicTransport | _Flood]) -> Connection:
    t = QuicTransport(KeyPair.generate(), "caps", BASE, CODEC, listen=f"{source}:0")
    stack.append(t)
    await t.start(Quiet())
    return await asyncio.wait_for(t.dial(address), 10.0)


async def test_one_source_holds_at_most_its_share_of_handshake_slots(stack: list[QuicTransport | _Flood]) -> None:
    server, addr = await _listener(max_handshakes_per_source=4, retry_threshold=10_000)
    stack.append(server)
    flood = _Flood()
    stack.append(flood)
    flood.send(addr, 100)

    def refused() -> int:
        return server.stats().refused_total.get("max_handshakes_per_source", 0)

    await eventually(lambda: refused() >= 96, timeout=10.0)
    held = server.quic_state()["incoming_handshakes"]
    # another source still gets in while this one is at its cap
    conn = await _dial_from("127.0.0.2", addr, stack)
    print(f"\n100 silent handshakes from one source: {held} held (cap 4), {refused()} refused at the first "
          f"packet; a dialer from another source connected: {conn.peer_id == server.node_id}")
    assert held == 4
    assert conn.peer_id == server.node_id


async def test_with_retry_a_spoofed_flood_holds_no_slot_and_a_real_dialer_gets_through(
    stack: list[QuicTransport | _Flood],
) -> None:
    # without Retry, the flood holds slots (up to the per-source cap)
    plain, plain_addr = await _listener(max_handshakes_per_source=16, retry_threshold=10_000)
    stack.append(plain)
    # with Retry always on (threshold 0)
    server, addr = await _listener(max_handshakes_per_source=16, retry_threshold=0)
    stack.append(server)
    flood = _Flood()
    stack.append(flood)
    flood.send(plain_addr, 200)
    flood.send(addr, 200)
    await eventually(lambda: server.retry_stats()["retries_sent"] >= 200, timeout=10.0)
    await eventually(lambda: plain.quic_state()["incoming_handshakes"] == 16, timeout=10.0)
    held_plain = plain.quic_state()["incoming_handshakes"]
    held = server.quic_state()["incoming_handshakes"]
    conn = await _dial_from("127.0.0.1", addr, stack)
    q = {**server.quic_state(), **server.retry_stats()}
    print(f"\n200 spoofed Initials: without Retry {held_plain} slots held; with Retry {held} held, "
          f"{q['retries_sent']} Retries sent, {q['quic_connections']} QUIC connection(s) exist; "
          f"a real dialer connected through a Retry ({q['retries_validated']} token(s) validated)")
    assert held == 0
    assert conn.peer_id == server.node_id
    assert q["retries_validated"] >= 1 and q["retries_sent"] >= 201


async def test_retry_turns_on_when_handshakes_pile_up(stack: list[QuicTransport | _Flood]) -> None:
    server, addr = await _listener(max_handshakes_per_source=1_000, retry_threshold=8)
    stack.append(server)
    flood = _Flood()
    stack.append(flood)
    flood.send(addr, 8)
    await eventually(lambda: server.quic_state()["incoming_handshakes"] == 8, timeout=10.0)
    assert server.retry_stats()["retries_sent"] == 0  # below the threshold: no Retry
    flood.send(addr, 100)
    await eventually(lambda: server.retry_stats()["retries_sent"] >= 100, timeout=10.0)
    held = server.quic_state()["incoming_handshakes"]
    conn = await _dial_from("127.0.0.1", addr, stack)
    q = {**server.quic_state(), **server.retry_stats()}
    print(f"\nretry_threshold=8: 108 silent Initials -> {held} slots held, {q['retries_sent']} Retries; "
          f"a real dialer connected ({q['retries_validated']} token validated)")
    assert held == 8
    assert conn.peer_id == server.node_id and q["retries_validated"] == 1


def test_retry_tokens_are_bound_to_the_address_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = RetryTokens(ttl=10.0)
    tok = tokens.create_token(("127.0.0.1", 5000), b"odcid123", b"rscid456")
    assert tokens.validate_token(("127.0.0.1", 5000), tok) == (b"odcid123", b"rscid456")
    forged = 0
    for addr, t in [(("127.0.0.2", 5000), tok), (("127.0.0.1", 5001), tok),
                    (("127.0.0.1", 5000), tok[:-1] + bytes([tok[-1] ^ 1])), (("127.0.0.1", 5000), b"x" * 40),
                    (("127.0.0.1", 5000), RetryTokens().create_token(("127.0.0.1", 5000), b"a", b"b"))]:
        with pytest.raises(ValueError):
            tokens.validate_token(addr, t)
        forged += 1
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 11.0)
    with pytest.raises(ValueError, match="expired"):
        tokens.validate_token(("127.0.0.1", 5000), tok)
    print(f"\n{forged} of {forged} tokens for another address, port or key, or altered, refused; expired refused")


class _Member:
    outbound = False
    closed = False
    peer_instance = b""
    target = None
    path = "direct"
    stale = False
    in_tls = False


def test_admission_counts_handshakes_per_source_and_releases_them() -> None:
    table: AdmissionTable[_Member] = AdmissionTable(
        KeyPair.generate().node_id, dataclasses.replace(BASE, max_handshakes_per_source=2, retry_threshold=3),
        on_evict=lambda _p, _c: None,
    )
    a = [_Member() for _ in range(3)]
    for m in a[:2]:
        assert table.refusal_at_first_packet("10.0.0.1") is None
        table.begin_incoming(m, "10.0.0.1")
    assert table.refusal_at_first_packet("10.0.0.1") == "max_handshakes_per_source"
    assert table.refusal_at_first_packet("10.0.0.2") is None and not table.retry_wanted()
    table.begin_incoming(a[2], "10.0.0.2")
    assert table.retry_wanted()  # 3 in progress: the threshold
    table.release(a[0], None)
    assert table.refusal_at_first_packet("10.0.0.1") is None and not table.retry_wanted()
    table.release(a[1], None)
    table.release(a[2], None)
    assert len(table.by_source) == 0 and len(table.incoming) == 0
